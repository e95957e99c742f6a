"""The stage table: a generative stage and a segmentation stage train, refuse and resume the same way; every
trained stage leaves a self-describing model; the CLI's train refuses a stage out of order or on other data."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import yaml
from conftest import TINY_STAGES
from safetensors.torch import load_file
from typer.testing import CliRunner

from foscu.cli import app
from foscu.config import load_config
from foscu.engine import loop
from foscu.engine.checkpoint import read_weights
from foscu.errors import InputError
from foscu.generative.latents import read_cache
from foscu.runs import RunFolder
from foscu.segmentation.train import parse_run_name
from foscu.stages import STAGES, load_stage, spec_for, train_stage

# one stage of each family that needs no other stage: the label VAE and a real-only segmenter
STAGE_NAMES = ["label-vae", "seg/unet-binary-real"]

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _weights(path) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(load_file(str(path)).items()):
        digest.update(key.encode() + tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _interrupt_at(monkeypatch, stop: int) -> None:
    """Make the engine's optimiser step raise KeyboardInterrupt at 0-based step ``stop`` (a Ctrl-C)."""
    real = loop.TrainStep.__call__

    def step(self, batch, index):
        if index == stop:
            raise KeyboardInterrupt
        return real(self, batch, index)

    monkeypatch.setattr(loop.TrainStep, "__call__", step)


def test_every_stage_has_a_row_and_names_resolve_to_it():
    assert list(STAGES) == [
        "label-vae", "image-vae", "vqvae", "label-ldm", "image-ldm", "vqvae-ldm", "controlnet", "seg"
    ]  # fmt: skip
    assert spec_for("seg/unet-multiclass-real+synthetic-seed2") is STAGES["seg"]
    cfg = load_config("tiny")
    assert STAGES["label-ldm"].needs(cfg) == ("label-vae",)
    assert STAGES["controlnet"].needs(cfg) == ("image-vae", "image-ldm")  # label_fullres: no label VAE
    latent = cfg.model_copy(
        update={"controlnet": cfg.controlnet.model_copy(update={"condition": "label_latent"})}
    )
    assert STAGES["controlnet"].needs(latent) == ("label-vae", "image-vae", "image-ldm")
    with pytest.raises(InputError, match="unknown stage 'unet'"):
        spec_for("unet")
    assert parse_run_name("seg/unet-multiclass-real+synthetic-seed2") == ("unet", "multiclass", True, 2)
    for bad in ("seg/unet-3d-real", "seg/unet-binary-fake", "seg/unet-binary-real-7"):
        with pytest.raises(InputError, match="is not seg/"):
            parse_run_name(bad)


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_a_stage_on_another_prepared_roi_is_refused_in_the_run(tiny_phantom, tiny_prepared, tmp_path, name):
    from foscu.data.prepare import prepare_dataset

    smaller = tmp_path / "smaller"
    prepare_dataset(tiny_phantom, smaller, roi=(16, 16, 16), split=(0.5, 0.17, 0.33), seed=0, progress=False)
    run = RunFolder(tmp_path / "run")
    cfg = load_config("tiny")
    first = "seg/unet-binary-real" if name == "label-vae" else "label-vae"
    train_stage(first, cfg, tiny_prepared, run.root, progress=False)
    with pytest.raises(InputError, match="this run was made for roi"):
        train_stage(name, cfg, smaller, run.root, progress=False)
    assert not run.stage(name).exists()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("label-ldm", "needs stage label-vae"),
        ("seg/unet-binary-real+synthetic", "needs a synthetic set"),
    ],
)
def test_out_of_order_stages_are_refused_and_write_nothing(tiny_prepared, tmp_path, name, problem):
    run = tmp_path / "run"
    with pytest.raises(InputError, match=problem):
        train_stage(name, load_config("tiny"), tiny_prepared, run, progress=False)
    assert not run.exists()


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_a_stopped_stage_resumes_only_when_asked_and_ends_as_if_never_stopped(
    tiny_prepared, tmp_path, monkeypatch, name
):
    cfg = load_config("tiny")  # 4 steps, checkpoint every 2
    whole = RunFolder(tmp_path / "whole")
    train_stage(name, cfg, tiny_prepared, whole.root, progress=False)

    stopped = RunFolder(tmp_path / "stopped")
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 3)  # steps 0-2 done, checkpoint at 2
        with pytest.raises(KeyboardInterrupt):
            train_stage(name, cfg, tiny_prepared, stopped.root, progress=False)
    assert stopped.is_stopped(name) and not stopped.is_trained(name)
    # 1. without --resume: refused, the stopped folder untouched
    before = stopped.config(name).read_text()
    with pytest.raises(InputError, match="pass --resume"):
        train_stage(name, cfg, tiny_prepared, stopped.root, progress=False)
    assert stopped.config(name).read_text() == before
    # 2. with other settings: refused
    other = cfg.model_copy(update={spec_for(name).section: _with_lr(getattr(cfg, spec_for(name).section))})
    with pytest.raises(InputError, match="differs from the run being resumed"):
        train_stage(name, other, tiny_prepared, stopped.root, resume=True, progress=False)
    # 3. resumed: the same weights as the run never stopped
    result = train_stage(name, cfg, tiny_prepared, stopped.root, resume=True, progress=False)
    assert result.steps == 4 and stopped.is_trained(name)
    assert _weights(stopped.model(name)) == _weights(whole.model(name))
    # 4. a finished stage trains further with --resume and a longer budget (the one setting that may change)
    longer = cfg.model_copy(
        update={spec_for(name).section: _with_steps(getattr(cfg, spec_for(name).section))}
    )
    assert train_stage(name, longer, tiny_prepared, stopped.root, resume=True, progress=False).steps == 6
    # 5. --resume with no training state has nothing to resume
    (stopped.state(name)).unlink()
    with pytest.raises(InputError, match="nothing to resume"):
        train_stage(name, cfg, tiny_prepared, stopped.root, resume=True, progress=False)


def _with_steps(section):
    return section.model_copy(update={"train": section.train.model_copy(update={"steps": 6})})


def _with_lr(section):
    return section.model_copy(update={"train": section.train.model_copy(update={"lr": 0.5})})


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_any_trained_stage_is_rebuilt_from_its_own_folder(tiny_prepared, tmp_path, name):
    run = RunFolder(tmp_path / "run")
    train_stage(name, load_config("tiny"), tiny_prepared, run.root, progress=False)
    info = yaml.safe_load(run.config(name).read_text())
    assert info["stage"] == name and info["seed"] == 0 and info["roi"] == [32, 32, 16]
    nets, meta, loaded = load_stage(run, name)
    assert loaded == info and not any(net.training for net in nets.values())
    saved = load_file(str(run.model(name)))
    for net_name, net in nets.items():
        for key, value in net.state_dict().items():
            assert (saved[f"{net_name}.{key}"] == value).all(), key
    # a run belongs to one prepared set: a stage on another ROI is refused
    assert yaml.safe_load(run.identity.read_text())["roi"] == [32, 32, 16]


def test_a_stage_trained_with_another_seed_records_it(tiny_prepared, tmp_path):
    run = RunFolder(tmp_path / "run")
    cfg = load_config("tiny")
    train_stage("seg/unet-binary-real-seed7", cfg, tiny_prepared, run.root, progress=False, seed=7)
    assert yaml.safe_load(run.config("seg/unet-binary-real-seed7").read_text())["seed"] == 7
    # the run's config keeps the config's own seed
    assert yaml.safe_load(run.run_config.read_text())["seed"] == cfg.seed


def test_every_stage_leaves_a_self_describing_model(tiny_run):
    for stage in TINY_STAGES:
        assert (tiny_run / stage / "model.safetensors").is_file(), stage
        assert (tiny_run / stage / "config.yaml").is_file(), stage
        assert json.loads((tiny_run / stage / "metrics.json").read_text())["steps"] == 4
    _, meta = read_cache(tiny_run / "latents" / "image.safetensors")
    ldm_meta = read_weights(tiny_run / "image-ldm" / "model.safetensors")[1]
    assert ldm_meta["scale_factor"] == pytest.approx(meta["scale_factor"])  # stored with the model
    assert 0 < meta["scale_factor"] < 1e3


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


@pytest.mark.parametrize(
    "name, score, mode",
    [
        ("label-vae", "val_dice", "max"),
        ("image-vae", "val_l1", "min"),
        ("vqvae", "val_l1", "min"),
        ("label-ldm", "val_loss", "min"),
        ("image-ldm", "val_loss", "min"),
        ("vqvae-ldm", "val_loss", "min"),
        ("controlnet", "val_loss", "min"),
    ],
)
def test_a_generative_stage_monitors_its_validation_score_only_with_keep_best(
    tiny_run, tiny_prepared, name, score, mode
):
    import torch

    from foscu.data.prepare import read_prepared
    from foscu.stages import stage_context

    section = spec_for(name).section
    for keep in (False, True):
        cfg = load_config("tiny", [f"{section}.keep_best={str(keep).lower()}"])
        prepared = read_prepared(tiny_prepared)
        ctx = stage_context(name, cfg, prepared, RunFolder(tiny_run), torch.device("cpu"), 0)
        recipe = spec_for(name).recipe(ctx)
        assert (recipe.monitor, recipe.mode) == ((score, mode) if keep else (None, "min")), (name, keep)


def test_a_generative_stage_keeps_its_best_validation_weights_and_stops_early(
    tiny_run, tiny_prepared, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "label-ldm")
    budget = [
        "label_ldm.train.steps=30",
        "label_ldm.train.val_every=1",
        "label_ldm.train.checkpoint_every=30",
    ]
    with pytest.raises(InputError, match="keep_best"):  # stopping early without keeping the best: refused
        load_config("tiny", [*budget, "label_ldm.train.patience=2"])
    # an lr far below float32's resolution leaves the weights, so the fixed-noise val_loss, unchanged: the
    # first validation stays the best, and 2 epochs of one step (3 cases in batches of 2) later it stops
    frozen = ["label_ldm.keep_best=true", "label_ldm.train.patience=2", "label_ldm.train.lr=1e-30"]
    result = train_stage(
        "label-ldm", load_config("tiny", [*budget, *frozen]), tiny_prepared, run, progress=False
    )
    log = [json.loads(line) for line in (run / "label-ldm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and len({r["val_loss"] for r in log}) == 1
    assert result.stopped_early and result.steps == 3 and result.best == {"val_loss": log[0]["val_loss"]}
    assert read_weights(run / "label-ldm" / "model.safetensors")[1]["step"] == 1  # the best, not the last
    # a stage that improves keeps the weights of its lowest val_loss
    shutil.rmtree(run / "label-ldm")
    cfg = load_config("tiny", [*budget[1:], "label_ldm.train.steps=6", "label_ldm.keep_best=true"])
    result = train_stage("label-ldm", cfg, tiny_prepared, run, progress=False)
    log = [json.loads(line) for line in (run / "label-ldm" / "metrics.jsonl").read_text().splitlines()]
    best = min(log, key=lambda r: r["val_loss"])
    assert result.best == {"val_loss": best["val_loss"]} and not result.stopped_early
    assert read_weights(run / "label-ldm" / "model.safetensors")[1]["step"] == best["step"]


def test_a_folder_recorded_before_the_schedule_and_keep_best_keys_still_resumes(tmp_path):
    from foscu.stages import check_resume

    run = RunFolder(tmp_path / "run")
    section = load_config("tiny").image_vae.model_dump(mode="json")
    old = {k: v for k, v in section.items() if k not in ("keep_best", "structure_weight")}
    old["train"] = {k: v for k, v in section["train"].items() if k not in ("warmup_steps", "lr_schedule")}
    run.stage("image-vae").mkdir(parents=True)
    run.state("image-vae").write_bytes(b"state")
    run.config("image-vae").write_text(yaml.safe_dump({"stage": "image-vae", "section": old}))
    check_resume(run, "image-vae", section, resume=True)  # the new keys at the values of before: resumes
    for key, value in (("keep_best", True), ("structure_weight", 10.0)):
        with pytest.raises(InputError, match="differs"):
            check_resume(run, "image-vae", {**section, key: value}, resume=True)
    warm = {**section, "train": {**section["train"], "warmup_steps": 2}}
    with pytest.raises(InputError, match="differs"):
        check_resume(run, "image-vae", warm, resume=True)


def test_an_ldm_folder_recorded_before_val_draws_and_tumor_condition_still_resumes(tmp_path):
    from foscu.stages import check_resume

    run = RunFolder(tmp_path / "run")
    section = load_config("tiny").label_ldm.model_dump(mode="json")
    old = {k: v for k, v in section.items() if k not in ("val_draws", "tumor_condition")}
    run.stage("label-ldm").mkdir(parents=True)
    run.state("label-ldm").write_bytes(b"state")
    run.config("label-ldm").write_text(yaml.safe_dump({"stage": "label-ldm", "section": old}))
    check_resume(run, "label-ldm", section, resume=True)  # the new keys at the values of before: resumes
    for key, value in (("val_draws", 4), ("tumor_condition", True)):
        with pytest.raises(InputError, match="differs"):
            check_resume(run, "label-ldm", {**section, key: value}, resume=True)
