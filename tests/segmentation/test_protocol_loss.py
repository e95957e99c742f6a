import pytest
import torch

from foscu.segmentation.protocol_loss import MaskedCases, MaskedDiceCELoss


def _case(task, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = 5 if task == "multiclass" else 1
    logits = torch.randn(2, c, 6, 5, 4, generator=g)
    high = 5 if task == "multiclass" else 2
    label = torch.randint(0, high, (2, 1, 6, 5, 4), generator=g)
    return logits, label, c


@pytest.mark.parametrize("task", ["multiclass", "binary"])
@pytest.mark.parametrize("batch", [False, True])
def test_every_class_supervised_is_monais_dice_ce(task, batch):
    from monai.losses import DiceCELoss

    logits, label, c = _case(task)
    if task == "binary":
        monai = DiceCELoss(sigmoid=True, batch=batch)
    else:
        monai = DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, batch=batch)
    ours = MaskedDiceCELoss(task, batch)(logits, label, torch.ones(2, c))
    assert float(ours) == pytest.approx(float(monai(logits, label.float())), rel=1e-5)


@pytest.mark.parametrize("batch", [False, True])
def test_a_masked_out_class_gets_no_gradient_from_the_case(batch):
    logits, label, _ = _case("multiclass", 1)
    label[1, 0, :3] = 2  # the synthetic case (index 1) holds portal vein voxels its image does not show
    logits.requires_grad_(True)
    mask = torch.ones(2, 5)
    mask[1, 2] = 0.0  # the synthetic case does not supervise portal vein
    MaskedDiceCELoss("multiclass", batch)(logits, label, mask).backward()
    grad = logits.grad
    assert torch.all(grad[1, 2] == 0)  # the masked channel of the synthetic case: no gradient at all
    assert grad[1, 1].abs().sum() > 0 and grad[0, 2].abs().sum() > 0  # others still learn
    # its portal-labelled voxels are "unknown": no gradient on any channel there
    assert torch.all(grad[1, :, :3] == 0)

    unmasked = logits.detach().clone().requires_grad_(True)
    MaskedDiceCELoss("multiclass", batch)(unmasked, label, torch.ones(2, 5)).backward()
    assert unmasked.grad[1, 2].abs().sum() > 0  # without the mask the same case does push portal vein


def test_a_masked_case_of_the_binary_task_contributes_nothing():
    logits, label, _ = _case("binary", 2)
    logits.requires_grad_(True)
    MaskedDiceCELoss("binary")(logits, label, torch.tensor([[1.0], [0.0]])).backward()
    assert torch.all(logits.grad[1] == 0) and logits.grad[0].abs().sum() > 0


def test_masked_cases_add_each_items_mask():
    class Cases:  # a seeded dataset: asked for (index, item_seed)
        def __len__(self):
            return 2

        def __getitem__(self, key):
            return {"image": torch.full((1,), float(key[0]))}

    cases = Cases()
    data = MaskedCases(cases, [[1, 1], [1, 0]])
    item = data[(1, 123)]
    assert item["class_mask"].tolist() == [1.0, 0.0] and item["image"].item() == 1.0 and len(data) == 2
    with pytest.raises(ValueError):
        MaskedCases(cases, [[1, 1]])
