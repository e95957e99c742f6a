"""LDM and ControlNet validation: fixed draws by hand, several per case, and the shuffled-mask gap that says
whether a ControlNet uses its mask (0 when it does not, positive once it learned an image that follows it)."""

from __future__ import annotations

import pytest
import torch

UNET = {"channels": [8, 8], "num_res_blocks": 1, "attention_levels": [False, False], "norm_num_groups": 4}


class _Zero(torch.nn.Module):
    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z_t)


def _scheduler(objective: str = "epsilon"):
    from foscu.config import SchedulerConfig
    from foscu.generative.schedulers import training_scheduler

    return training_scheduler(SchedulerConfig(num_train_timesteps=50), objective)


def test_validation_loss_is_the_mean_over_fixed_draws_worked_out_by_hand():
    from foscu.generative.validation import validation_loss

    z = torch.zeros((6, 2, 2, 2, 2))
    scheduler = _scheduler()

    def by_hand(seed: int) -> float:  # a zero network's loss is the mean of eps^2; eps drawn in batches of 4
        torch.manual_seed(seed)
        total = 0.0
        for size in (4, 2):
            eps = torch.randn((size, 2, 2, 2, 2))
            torch.randint(0, 50, (size,))  # the batch's timesteps, drawn after its noise
            total += float((eps**2).mean()) * size
        return total / 6

    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    one = validation_loss({"unet": _Zero()}, z, scheduler=scheduler, objective="epsilon")
    assert torch.equal(torch.rand(3), expected_next)  # the caller's generator is left as it was
    three = validation_loss({"unet": _Zero()}, z, scheduler=scheduler, objective="epsilon", draws=3)
    assert one == pytest.approx(by_hand(1234), rel=1e-6)  # draw 0: the one draw of before val_draws
    assert three == pytest.approx(sum(by_hand(1234 + d) for d in range(3)) / 3, rel=1e-6)
    assert three != pytest.approx(one, rel=1e-4)


def test_structure_cells_mark_latent_cells_touching_vessels_or_tumor():
    from foscu.generative.validation import structure_cells

    labels = torch.ones((1, 4, 4, 4), dtype=torch.uint8)  # liver
    labels[0, 0, 0, 0] = 2  # portal vein in cell (0, 0, 0)
    labels[0, 3, 3, 3] = 4  # tumor in cell (1, 1, 1)
    labels[0, 2, 0, 0] = 0  # background in cell (1, 0, 0)
    cells = structure_cells(labels, (2, 2, 2))
    expected = torch.zeros((1, 1, 2, 2, 2))
    expected[0, 0, 0, 0, 0] = expected[0, 0, 1, 1, 1] = 1.0
    torch.testing.assert_close(cells, expected)


def _toy(n: int, generator: torch.Generator):
    """Labels (n, 8, 8, 8) of liver with a tumor slab at a random depth; the image latent (n, 1, 4, 4, 4) is a
    function of the mask: 3 where the cell is tumor, -1 elsewhere."""
    from foscu.generative.controlnet import make_condition

    labels = torch.ones((n, 8, 8, 8), dtype=torch.uint8)
    for i in range(n):
        x = int(torch.randint(0, 6, (1,), generator=generator))
        labels[i, x : x + 3] = 4
    condition = make_condition("label_fractions", labels, None, (4, 4, 4), 5)
    return labels, condition, condition[:, 4:5] * 4 - 1


def _fit(nets, params, batches, steps: int, scheduler) -> None:
    from foscu.generative.diffusion import denoising_loss

    optimizer = torch.optim.Adam(params, lr=3e-3)
    for _ in range(steps):
        loss = denoising_loss(nets, next(batches), scheduler=scheduler, objective="rflow")["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_the_shuffled_mask_gap_is_zero_for_a_controlnet_that_ignores_the_mask_and_positive_once_trained():
    from foscu.config import ControlNetStage, DiffusionStage
    from foscu.generative.controlnet import build_controlnet, init_from_unet
    from foscu.generative.diffusion import build_diffusion
    from foscu.generative.validation import mask_scores, structure_cells

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    labels, condition, z = _toy(16, generator)
    val_labels, val_condition, val_z = _toy(6, generator)
    scheduler = _scheduler("rflow")

    def batches(with_condition: bool):
        while True:
            idx = torch.randint(0, 16, (4,))
            yield {"latent": z[idx], **({"condition": condition[idx]} if with_condition else {})}

    # the image LDM, trained a little without the mask, then frozen
    unet = build_diffusion(DiffusionStage(unet=UNET), 1)["unet"]
    _fit({"unet": unet}, unet.parameters(), batches(False), 30, scheduler)
    unet.eval().requires_grad_(False)
    stage = ControlNetStage(condition="label_fractions", conditioning_embedding_num_channels=[8])
    controlnet = build_controlnet(stage, UNET, 1, 5, 2)
    init_from_unet(controlnet, unet)
    nets = {"unet": unet, "controlnet": controlnet}
    cells = structure_cells(val_labels, (4, 4, 4))
    score = {"scheduler": scheduler, "objective": "rflow", "draws": 4}

    untrained = mask_scores(nets, val_z, val_condition, cells, **score)  # zero convolutions: no residual
    assert untrained["val_mask_gap"] == 0.0 and untrained["val_mask_gap_structures"] == 0.0
    assert untrained["val_loss_shuffled"] == untrained["val_loss"] > 0

    _fit(nets, controlnet.parameters(), batches(True), 50, scheduler)
    trained = mask_scores(nets, val_z, val_condition, cells, **score)
    assert trained["val_loss"] < untrained["val_loss"]
    assert trained["val_mask_gap"] > 0.5 and trained["val_mask_gap_structures"] > 0.5  # measured: 3.2, 3.9
    gap = trained["val_loss_shuffled"] - trained["val_loss"]
    assert trained["val_mask_gap"] == pytest.approx(gap)
    # one case has no other validation mask to swap in: only the true-mask scores, unless one is given
    alone = mask_scores(nets, val_z[:1], val_condition[:1], cells[:1], **score)
    assert set(alone) == {"val_loss", "val_loss_structures"}
    spare = mask_scores(nets, val_z[:1], val_condition[:1], cells[:1], shuffled=val_condition[1:2], **score)
    assert spare["val_loss_shuffled"] > spare["val_loss"] == alone["val_loss"]


def test_the_recipes_validate_with_the_configured_draws_and_the_controlnet_with_the_shuffled_mask(
    tiny_run, tiny_prepared
):
    from foscu.config import load_config
    from foscu.data.prepare import read_prepared
    from foscu.runs import RunFolder
    from foscu.stages import spec_for, stage_context

    prepared, run = read_prepared(tiny_prepared), RunFolder(tiny_run)

    def scores(name: str, overrides: list[str]) -> dict[str, float]:
        cfg = load_config("tiny", overrides)
        recipe = spec_for(name).recipe(stage_context(name, cfg, prepared, run, torch.device("cpu"), cfg.seed))
        assert recipe.validate is not None
        return recipe.validate(recipe.nets)

    one, three = scores("image-ldm", []), scores("image-ldm", ["image_ldm.val_draws=3"])
    assert set(one) == set(three) == {"val_loss"} and one["val_loss"] != three["val_loss"]
    controlnet = scores("controlnet", ["controlnet.val_draws=2"])  # tiny: one validation case
    assert {"val_loss_shuffled", "val_mask_gap", "val_mask_gap_structures"} <= set(controlnet)
