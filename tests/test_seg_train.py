import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from foscu.cli import app
from foscu.config import load_config
from foscu.data.layout import write_dataset_json
from foscu.data.nifti import read_nifti, write_nifti
from foscu.data.prepare import prepare_dataset, read_prepared
from foscu.data.transforms import SeededDataset, train_transforms
from foscu.errors import InputError
from foscu.labels import LABELS
from foscu.segmentation.networks import ARCHS, build_segmenter
from foscu.segmentation.train import NET, SegmentationLoss, mix_training, train_segmenter

TWO_STEPS = [
    "segmentation.train.steps=2",
    "segmentation.train.val_every=1",
    "segmentation.train.checkpoint_every=2",
]


@pytest.fixture(scope="module")
def prepared(tiny_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "prepared"
    prepare_dataset(tiny_phantom, out, roi=(32, 32, 16), progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config("tiny", TWO_STEPS)


@pytest.fixture(scope="module")
def batch(prepared):
    data = read_prepared(prepared)
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


def test_same_item_seed_same_augmentation(prepared):
    data = read_prepared(prepared)
    dataset = SeededDataset(data.datalist["training"], train_transforms("binary", (16, 16, 16)))
    a, b, c = dataset[(1, 42)], dataset[(1, 42)], dataset[(1, 43)]
    assert a["image"].shape == (1, 16, 16, 16) and set(a["label"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_mix_training_draws_fraction_per_real_case():
    real = [{"case_id": f"r{i}"} for i in range(4)]
    synthetic = [{"case_id": f"s{i}"} for i in range(10)]
    mixed = mix_training(real, synthetic, 0.5, seed=0)
    assert mixed[:4] == real and len(mixed) == 6 and all(m["case_id"].startswith("s") for m in mixed[4:])
    assert mix_training(real, synthetic, 0.5, seed=0) == mixed
    assert len(mix_training(real, synthetic[:3], 2.0, seed=0)) == 7  # capped at what exists


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


def test_cli_train_writes_stage_folder_and_predict_keeps_input_grid(prepared, tiny_cfg, tmp_path):
    args = [
        "seg",
        "train",
        "--arch",
        "unet",
        "--task",
        "multiclass",
        "--config",
        "tiny",
        "--data",
        str(prepared),
        "--run",
        str(tmp_path / "run"),
    ]
    trained = CliRunner().invoke(app, args + [item for o in TWO_STEPS for item in ("--set", o)])
    assert trained.exit_code == 0, trained.output
    folder = tmp_path / "run" / "seg" / "unet-multiclass-real"
    for name in ("config.yaml", "model.safetensors", "train_state.pt", "metrics.json", "metrics.jsonl"):
        assert (folder / name).is_file(), name
    stage = yaml.safe_load((folder / "config.yaml").read_text())
    assert (
        stage["arch"] == "unet" and stage["roi"] == [32, 32, 16] and stage["training_cases"]["synthetic"] == 0
    )
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["best"]["val_dice"] <= 1.0
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2] and all("val_dice_liver" in h for h in history)

    # a larger image on a shifted grid: prediction on that grid, values from the label map
    image = read_nifti(read_prepared(prepared).datalist["test"][0]["image"])
    bigger = np.pad(image.array, ((4, 4), (0, 4), (2, 2)))
    affine = image.affine.copy()
    affine[:3, 3] += [10.0, -5.0, 3.0]
    write_nifti(tmp_path / "images" / "case9_0000.nii.gz", bigger, affine)
    result_cli = CliRunner().invoke(
        app,
        [
            "seg",
            "predict",
            "--run",
            str(tmp_path / "run"),
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "pred"),
        ],
    )
    assert result_cli.exit_code == 0, result_cli.output
    pred = nib.load(str(tmp_path / "pred" / "case9.nii.gz"))
    assert pred.shape == bigger.shape and np.allclose(pred.affine, affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= set(LABELS.values())

    with pytest.raises(InputError, match="pass --resume"):
        train_segmenter("unet", "multiclass", tiny_cfg, prepared, tmp_path / "run", progress=False)


def test_synthetic_joins_training_only_and_foreign_label_map_is_refused(prepared, tiny_cfg, tmp_path):
    syn = make_synthetic(prepared, tmp_path / "syn")
    one_step = load_config("tiny", ["segmentation.train.steps=1"])
    folder, _ = train_segmenter(
        "resunet", "binary", one_step, prepared, tmp_path / "run", [syn], 0.5, progress=False
    )
    assert folder.name == "resunet-binary-real+synthetic" and (folder / "model.safetensors").is_file()
    stage = yaml.safe_load((folder / "config.yaml").read_text())
    assert stage["training_cases"] == {"real": 4, "synthetic": 2}

    other = make_synthetic(prepared, tmp_path / "other", labels={"background": 0, "liver": 1, "tumor": 2})
    with pytest.raises(InputError) as err:
        train_segmenter("unet", "binary", tiny_cfg, prepared, tmp_path / "run2", [other], progress=False)
    assert err.value.path == str(other / "dataset.json") and "label map" in err.value.problem
    assert not (tmp_path / "run2").exists()


def test_cli_seg_train_bad_input_exits_2(prepared, tmp_path):
    args = [
        "seg",
        "train",
        "--task",
        "binary",
        "--config",
        "tiny",
        "--data",
        str(prepared),
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
    prepared, tiny_cfg, tmp_path, arch, task, needle
):
    with pytest.raises(InputError, match=needle):
        train_segmenter(arch, task, tiny_cfg, prepared, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
