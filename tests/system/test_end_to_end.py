"""Runs across modules through the CLI: a rectified-flow run trained and sampled, and torchrun training and
sampling in two processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from foscu.cli import app

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
