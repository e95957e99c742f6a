"""Runs across modules through the CLI: a rectified-flow run trained and sampled, torchrun training and
sampling in two processes, and a segmenter trained then predicting on another grid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import SEG_TWO_STEPS
from typer.testing import CliRunner

from foscu.cli import app
from foscu.config import load_config
from foscu.data.nifti import read_nifti, write_nifti
from foscu.data.prepare import read_prepared
from foscu.errors import InputError
from foscu.labels import LABELS
from foscu.stages import train_segmenter

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _image(folder: Path, case: str) -> np.ndarray:
    return np.asarray(nib.load(folder / "imagesTr" / f"{case}_0000.nii.gz").dataobj)


def test_rectified_flow_objective_trains_and_samples(tiny_run, tiny_prepared, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for keep in ("label-vae", "image-vae", "latents", "run.json"):
        source = tiny_run / keep
        (shutil.copytree if source.is_dir() else shutil.copy)(source, run / keep)
    sets = ["--set", "label_ldm.objective=rflow", "--set", "image_ldm.objective=rflow"]
    for stage in ("label-ldm", "image-ldm", "controlnet"):
        result = _cli("train", stage, "--config", "tiny", "--data", tiny_prepared, "--run", run, *sets)
        assert result.exit_code == 0, result.output
    result = _cli(
        "sample", "--run", run, "--n", 2, "--out", tmp_path / "s", "--sampler", "rflow", "--steps", 3
    )
    assert result.exit_code == 0, result.output
    assert np.isfinite(_image(tmp_path / "s", "synth_0001")).all()


@pytest.mark.slow
def test_torchrun_two_processes_train_and_split_samples(tiny_run, tiny_prepared, tmp_path):
    # torchrun's own parser takes --run and --n as abbreviations of its --run-path / --nnodes options:
    # under torchrun the CLI spells them --run-folder and --num-samples
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [torchrun, "--nproc_per_node=2", "--master_port=29533", "-m", "foscu"]
    subprocess.run(
        [
            *base,
            "train",
            "label-ldm",
            "--config",
            "tiny",
            "--data",
            str(tiny_prepared),
            "--run-folder",
            str(run),
            "--folder",
            "label-ldm-ddp",
        ],
        env=env,
        check=True,
        timeout=300,
    )
    lines = (run / "label-ldm-ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]
    out = tmp_path / "samples"
    subprocess.run(
        [*base, "sample", "--run-folder", str(run), "--num-samples", "3", "--out", str(out), "--steps", "2"],
        env=env,
        check=True,
        timeout=300,
    )
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        f"synth_000{i}_0000.nii.gz" for i in range(3)
    ]
    single = tmp_path / "single"
    assert _cli("sample", "--run", run, "--n", 3, "--out", single, "--steps", 2).exit_code == 0
    np.testing.assert_allclose(_image(out, "synth_0001"), _image(single, "synth_0001"), atol=1e-4)
    record = json.loads((out / "samples.json").read_text())
    assert record["world_size"] == 2 and sorted(record["cases"]) == [f"synth_000{i}" for i in range(3)]


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config("tiny", SEG_TWO_STEPS)


def test_cli_train_writes_stage_folder_and_predict_keeps_input_grid(seg_prepared, tiny_cfg, tmp_path):
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
        str(seg_prepared),
        "--run",
        str(tmp_path / "run"),
    ]
    trained = CliRunner().invoke(app, args + [item for o in SEG_TWO_STEPS for item in ("--set", o)])
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
    image = read_nifti(read_prepared(seg_prepared).datalist["test"][0]["image"])
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
        train_segmenter("unet", "multiclass", tiny_cfg, seg_prepared, tmp_path / "run", progress=False)
