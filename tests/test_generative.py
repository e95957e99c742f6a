"""Duo-Diffusion at the tiny preset: every stage through the CLI, every sampler, mask to image, the baselines,
same seed -> same sample, stages out of order, a run whose data disagree, and torchrun on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_SHAPE, TINY_STAGES
from typer.testing import CliRunner

from foscu.cli import app
from foscu.engine.checkpoint import read_weights
from foscu.generative.latents import read_cache

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _image(folder: Path, case: str) -> np.ndarray:
    return np.asarray(nib.load(folder / "imagesTr" / f"{case}_0000.nii.gz").dataobj)


def test_every_stage_leaves_a_self_describing_model(tiny_run):
    for stage in TINY_STAGES:
        assert (tiny_run / stage / "model.safetensors").is_file(), stage
        assert (tiny_run / stage / "config.yaml").is_file(), stage
        assert json.loads((tiny_run / stage / "metrics.json").read_text())["steps"] == 4
    _, meta = read_cache(tiny_run / "latents" / "image.safetensors")
    ldm_meta = read_weights(tiny_run / "image-ldm" / "model.safetensors")[1]
    assert ldm_meta["scale_factor"] == pytest.approx(meta["scale_factor"])  # stored with the model
    assert 0 < meta["scale_factor"] < 1e3


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_writes_pairs_in_nnunet_layout(tiny_run, tmp_path, sampler):
    out = tmp_path / "samples"
    result = _cli(
        "sample", "--run", tiny_run, "--n", 3, "--out", out, "--sampler", sampler, "--steps", 3, "--seed", 5
    )
    assert result.exit_code == 0, result.output
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == 3 and dataset["labels"]["tumor"] == 4
    record = json.loads((out / "samples.json").read_text())
    assert record["sampler"] == sampler and record["steps"] == 3 and len(record["cases"]) == 3
    image = _image(out, "synth_0000")
    label = np.asarray(nib.load(out / "labelsTr" / "synth_0000.nii.gz").dataobj)
    assert image.shape == label.shape == TINY_SHAPE
    assert 0 <= image.min() and image.max() <= 1 and np.isfinite(image).all()
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4}
    assert np.allclose(
        nib.load(out / "labelsTr" / "synth_0000.nii.gz").affine[:3, :3].diagonal(), (7.5, 7.5, 12)
    )


def test_same_seed_same_sample_whatever_the_batch(tiny_run, tmp_path):
    from foscu.generative.sampling import generate

    a = generate(tiny_run, 3, tmp_path / "a", "ddim", 3, seed=7, batch_size=3, progress=False)
    b = generate(tiny_run, 3, tmp_path / "b", "ddim", 3, seed=7, batch_size=1, progress=False)
    c = generate(tiny_run, 1, tmp_path / "c", "ddim", 3, seed=8, progress=False)
    np.testing.assert_allclose(_image(a, "synth_0002"), _image(b, "synth_0002"), atol=1e-4)
    assert np.abs(_image(a, "synth_0000") - _image(c, "synth_0000")).max() > 1e-3


def test_rflow_on_an_epsilon_model_is_refused(tiny_run, tmp_path):
    result = _cli("sample", "--run", tiny_run, "--n", 1, "--out", tmp_path / "x", "--sampler", "rflow")
    assert result.exit_code == 2 and "rflow cannot sample" in result.output
    assert not (tmp_path / "x").exists()


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


def test_mask_to_image_keeps_the_given_labels(tiny_run, tiny_prepared, tmp_path):
    out = tmp_path / "m2i"
    assert (
        _cli("sample", "--run", tiny_run, "--out", out, "--labels", tiny_prepared, "--steps", 2).exit_code
        == 0
    )
    given = sorted((tiny_prepared / "labelsTr").glob("*.nii.gz"))
    written = sorted((out / "labelsTr").glob("*.nii.gz"))
    assert len(written) == len(given)
    for g, w in zip(given, written, strict=True):
        np.testing.assert_array_equal(np.asarray(nib.load(g).dataobj), np.asarray(nib.load(w).dataobj))

    bad = tmp_path / "bad"
    bad.mkdir()
    label = np.asarray(nib.load(given[0]).dataobj).copy()
    label[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(label, np.eye(4)), bad / "case.nii.gz")
    result = _cli("sample", "--run", tiny_run, "--out", tmp_path / "m2", "--labels", bad)
    assert result.exit_code == 2 and "case.nii.gz" in result.output and "[7]" in result.output


@pytest.mark.parametrize("model", ["image-ldm", "vqvae-ldm"])
def test_table1_baselines_sample_images(tiny_run, tmp_path, model):
    out = tmp_path / model
    result = _cli("sample", "--run", tiny_run, "--n", 2, "--out", out, "--model", model, "--steps", 2)
    assert result.exit_code == 0, result.output
    assert _image(out, "synth_0001").shape == TINY_SHAPE
    assert not (out / "labelsTr").exists()


def test_controlnet_before_image_ldm_names_image_ldm(tiny_run, tiny_prepared, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_run / "image-vae", run / "image-vae")
    result = _cli("train", "controlnet", "--config", "tiny", "--data", tiny_prepared, "--run", run)
    assert result.exit_code == 2
    assert "image-ldm" in result.output and "foscu train image-ldm" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == ["image-vae"]  # nothing written by the refused stage


def test_a_run_made_for_another_roi_is_refused(tiny_run, tiny_phantom, tmp_path):
    from foscu.data.prepare import prepare_dataset

    other = tmp_path / "other"
    prepare_dataset(
        tiny_phantom, other, roi=(32, 32, 8), center="tumor", split=(0.6, 0.2, 0.2), seed=0, progress=False
    )
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = _cli(
        "train", "label-ldm", "--config", "tiny", "--data", other, "--run", run, "--folder", "again"
    )
    assert result.exit_code == 2 and "run.json" in result.output and "roi" in result.output


def test_retraining_a_finished_stage_needs_resume(tiny_run, tiny_prepared, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = _cli("train", "image-vae", "--config", "tiny", "--data", tiny_prepared, "--run", run)
    assert result.exit_code == 2 and "--resume" in result.output
    result = _cli(
        "train",
        "image-vae",
        "--config",
        "tiny",
        "--data",
        tiny_prepared,
        "--run",
        run,
        "--resume",
        "--set",
        "image_vae.train.steps=6",
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run / "image-vae" / "metrics.json").read_text())["steps"] == 6


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
    assert sys.executable


def test_sliding_window_decoding_matches_whole_decoding_in_shape_and_scale(tiny_run):
    import torch

    from foscu.generative.sampling import decode_volume
    from foscu.generative.stages import load_stage
    from foscu.runs import RunFolder

    nets, _, info = load_stage(RunFolder(tiny_run), "image-vae")
    z = torch.randn(
        1, info["latent_channels"], *info["latent_shape"], generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        whole = decode_volume(nets["autoencoder"], z)
        tiled = decode_volume(nets["autoencoder"], z, [s // 2 for s in info["latent_shape"]])
    assert tiled.shape == whole.shape == (1, 1, *TINY_SHAPE)
    corr = float(torch.corrcoef(torch.stack([tiled.flatten(), whole.flatten()]))[0, 1])
    assert corr > 0.7  # the same volume, with blended seams (GroupNorm sees tiles, not the whole)


def test_latent_training_sets_stay_on_the_cpu_whatever_the_device(tiny_run, tiny_prepared, tmp_path):
    # fit pins its DataLoader on CUDA and torch pins only dense CPU tensors, so a recipe must hand fit CPU
    # data whatever the run's device (here "meta" stands in for cuda: nothing is computed on it)
    import torch

    from foscu.config import load_config
    from foscu.data.loaders import LatentSet
    from foscu.data.prepare import read_prepared
    from foscu.generative.stages import STAGES, _controlnet_recipe, _diffusion_recipe
    from foscu.runs import RunFolder

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg, prepared, meta = load_config("tiny"), read_prepared(tiny_prepared), torch.device("meta")
    for recipe in (
        _diffusion_recipe(STAGES["image-ldm"], cfg, prepared, RunFolder(run), meta),
        _controlnet_recipe(STAGES["controlnet"], cfg, prepared, RunFolder(run), meta),
    ):
        data = recipe.train_set
        held = [data.mean, data.sigma, *data.extras.values()]
        assert [t.device.type for t in held] == ["cpu"] * len(held)
        assert {v.device.type for v in data[(0, 5)].values()} == {"cpu"}
    with pytest.raises(ValueError, match="CPU"):
        LatentSet(torch.zeros(2, 1, device="meta"), torch.zeros(2, 1), 1.0)
