import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SEG_TWO_STEPS
from typer.testing import CliRunner

from foscu.cli import app
from foscu.config import load_config
from foscu.data.layout import write_dataset_json
from foscu.data.prepare import read_prepared
from foscu.data.transforms import SeededDataset, train_transforms
from foscu.errors import InputError
from foscu.segmentation.networks import ARCHS, build_segmenter
from foscu.segmentation.train import (
    NET,
    SegmentationLoss,
    mix_training,
    synthetic_digest,
    synthetic_items,
    training_items,
)
from foscu.stages import train_segmenter


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config("tiny", SEG_TWO_STEPS)


@pytest.fixture(scope="module")
def batch(seg_prepared):
    data = read_prepared(seg_prepared)
    dataset = SeededDataset(data.datalist["training"][:2], train_transforms("multiclass"))
    item = dataset[(0, 11)]
    return {k: item[k][None] for k in ("image", "label")}  # one case (1, 1, 32, 32, 16), to stay fast


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_takes_a_training_step_for_both_tasks(arch, batch, tiny_cfg):
    torch.manual_seed(0)
    for task in ("binary", "multiclass"):
        net = build_segmenter(arch, task, tiny_cfg.segmentation, (32, 32, 16), (7.5, 7.5, 12.0)).train()
        task_batch = dict(batch, label=(batch["label"] != 0).float() if task == "binary" else batch["label"])
        opt = torch.optim.SGD(net.parameters(), lr=1e-2)  # the engine uses AdamW; SGD keeps VNet cheap here
        before = [p.detach().clone() for p in net.parameters()]
        loss = SegmentationLoss(task)({NET: net}, task_batch)["loss"]
        loss.backward()
        opt.step()
        assert torch.isfinite(loss) and loss.item() > 0
        assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_deep_supervision_heads_weighted_one_half_normalised():
    label = torch.zeros(1, 1, 4, 4, 4)
    label[..., :2] = 1
    good = torch.where(label > 0, 10.0, -10.0)  # near-perfect logits
    bad = -good  # everything wrong

    class Stacked(torch.nn.Module):
        def forward(self, x):
            return torch.stack([good, bad], dim=1)  # (B, heads=2, C=1, X, Y, Z)

    loss_fn = SegmentationLoss("binary")
    expected = (1.0 * loss_fn.loss(good, label) + 0.5 * loss_fn.loss(bad, label)) / 1.5
    assert loss_fn({NET: Stacked()}, {"image": label, "label": label})["loss"] == pytest.approx(
        expected.item()
    )


def test_mix_training_draws_fraction_per_real_case():
    real = [{"case_id": f"r{i}"} for i in range(4)]
    synthetic = [{"case_id": f"s{i}"} for i in range(10)]
    mixed = mix_training(real, synthetic, 0.5, seed=0)
    assert mixed[:4] == real and len(mixed) == 6 and all(m["case_id"].startswith("s") for m in mixed[4:])
    assert mix_training(real, synthetic, 0.5, seed=0) == mixed
    assert len(mix_training(real, synthetic[:3], 2.0, seed=0)) == 7  # capped at what exists


def test_synthetic_digest_follows_the_files_not_the_folder(seg_prepared, tmp_path):
    prepared = read_prepared(seg_prepared)
    a = make_synthetic(seg_prepared, tmp_path / "a")
    b = make_synthetic(seg_prepared, tmp_path / "b")
    _, drawn_a = training_items(prepared, [a], 0.5, seed=0)
    _, drawn_b = training_items(prepared, [b], 0.5, seed=0)
    assert len(drawn_a) == 2 and synthetic_digest(drawn_a) == synthetic_digest(drawn_b)
    assert synthetic_digest(drawn_a) != synthetic_digest(training_items(prepared, [a], 0.5, seed=1)[1])
    assert synthetic_digest(drawn_a) != synthetic_digest(drawn_a[::-1])
    label = Path(drawn_b[0]["label"])
    label.write_bytes(Path(drawn_b[1]["label"]).read_bytes())  # one label sampled anew
    assert synthetic_digest(drawn_a) != synthetic_digest(drawn_b)
    assert training_items(prepared, [], 0.5, seed=0) == (prepared.datalist["training"], [])


def make_synthetic(prepared, out, labels=None):
    """A synthetic set in nnU-Net layout: the prepared training cases copied under new ids."""
    data = read_prepared(prepared)
    for i, item in enumerate(data.datalist["training"]):
        (out / "imagesTr").mkdir(parents=True, exist_ok=True)
        (out / "labelsTr").mkdir(parents=True, exist_ok=True)
        shutil.copy(item["image"], out / "imagesTr" / f"syn_{i:03d}_0000.nii.gz")
        shutil.copy(item["label"], out / "labelsTr" / f"syn_{i:03d}.nii.gz")
    write_dataset_json(out, "synthetic", len(data.datalist["training"]), labels=labels)
    return out


def test_synthetic_joins_training_only_and_foreign_label_map_is_refused(seg_prepared, tiny_cfg, tmp_path):
    syn = make_synthetic(seg_prepared, tmp_path / "syn")
    one_step = load_config("tiny", ["segmentation.train.steps=1"])
    folder, _ = train_segmenter(
        "resunet", "binary", one_step, seg_prepared, tmp_path / "run", [syn], 0.5, progress=False
    )
    assert folder.name == "resunet-binary-real+synthetic" and (folder / "model.safetensors").is_file()
    stage = yaml.safe_load((folder / "config.yaml").read_text())
    assert stage["training_cases"] == {"real": 4, "synthetic": 2}
    drawn = mix_training(
        read_prepared(seg_prepared).datalist["training"], synthetic_items([syn], (32, 32, 16)), 0.5, 0
    )[4:]
    assert stage["synthetic_cases"] == [item["case_id"] for item in drawn]
    assert stage["synthetic_digest"] == synthetic_digest(drawn)

    other = make_synthetic(seg_prepared, tmp_path / "other", labels={"background": 0, "liver": 1, "tumor": 2})
    with pytest.raises(InputError) as err:
        train_segmenter("unet", "binary", tiny_cfg, seg_prepared, tmp_path / "run2", [other], progress=False)
    assert err.value.path == str(other / "dataset.json") and "label map" in err.value.problem
    assert not (tmp_path / "run2").exists()


def test_cli_seg_train_bad_input_exits_2(seg_prepared, tmp_path):
    args = [
        "seg",
        "train",
        "--task",
        "binary",
        "--config",
        "tiny",
        "--data",
        str(seg_prepared),
        "--run",
        str(tmp_path / "run"),
    ]
    result = CliRunner().invoke(app, [*args, "--arch", "vnet", "--set", "segmentation.patch_size=[16,16,8]"])
    assert result.exit_code == 2 and "vnet" in result.output and "(16, 16, 16)" in result.output
    result = CliRunner().invoke(app, [*args, "--arch", "transformer"])
    assert result.exit_code == 2 and "unknown architecture" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "arch, task, needle", [("unet", "multiclas", "multiclas"), ("Unet", "binary", "Unet")]
)
def test_api_refuses_a_misspelt_task_or_arch_writing_nothing(
    seg_prepared, tiny_cfg, tmp_path, arch, task, needle
):
    with pytest.raises(InputError, match=needle):
        train_segmenter(arch, task, tiny_cfg, seg_prepared, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_train_segmenter_seed_names_the_folder_and_seeds_the_run(tiny_prepared, tmp_path, monkeypatch):
    import torch
    import yaml

    from foscu import stages
    from foscu.segmentation.train import run_name
    from foscu.stages import train_segmenter

    fits = []
    monkeypatch.setattr(
        stages,
        "fit",
        lambda folder, recipe, *a, seed, **k: fits.append(
            (folder.name, seed, [t.clone() for t in recipe.nets["segmenter"].state_dict().values()])
        ),
    )
    cfg = load_config("tiny")
    for seed in (None, 0, 3, 3):
        train_segmenter("unet", "binary", cfg, tiny_prepared, tmp_path / "run", progress=False, seed=seed)
    assert [(name, seed) for name, seed, _ in fits] == [
        ("unet-binary-real", 0),
        ("unet-binary-real", 0),
        ("unet-binary-real-seed3", 3),
        ("unet-binary-real-seed3", 3),
    ]
    assert run_name("unet", "binary", True, 3) == "unet-binary-real+synthetic-seed3"
    weights = [w for _, _, w in fits]
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1], strict=True))  # same seed
    assert all(torch.equal(a, b) for a, b in zip(weights[2], weights[3], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights[0], weights[2], strict=True))  # other seed
    stage = yaml.safe_load((tmp_path / "run" / "seg" / "unet-binary-real-seed3" / "config.yaml").read_text())
    assert stage["seed"] == 3 and "seeds" not in stage["section"]
