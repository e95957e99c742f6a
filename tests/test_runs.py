"""Atomic writes and RunFolder: a failed write leaves nothing behind, and every path of a run has one origin."""

from __future__ import annotations

import json

import pytest

from foscu.errors import InputError
from foscu.runs import RunFolder, atomic_folder, atomic_path, seg_stage, write_json_atomic


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    target = tmp_path / "case" / "image.nii.gz"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            # beside the target, with its suffixes (nibabel picks the format from them)
            assert tmp.parent == target.parent and tmp.name.startswith(".tmp-image.nii.gz-")
            assert tmp.name.endswith(".nii.gz")
            tmp.write_bytes(b"half a volume")
            raise RuntimeError("killed")
    assert list(target.parent.iterdir()) == []


def test_a_finished_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    write_json_atomic(target, {"steps": 4})
    assert json.loads(target.read_text()) == {"steps": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "samples"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_folder(out) as tmp:
            (tmp / "a.txt").write_text("a")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not out.exists()  # nothing under the real name until the block ends
    assert [p.name for p in tmp_path.iterdir()] == ["samples"] and [p.name for p in out.iterdir()] == [
        "a.txt"
    ]
    with pytest.raises(InputError, match="not empty") as err:
        with atomic_folder(out):
            pass
    assert err.value.path == str(out) and (out / "a.txt").is_file()
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert [p.name for p in out.iterdir()] == ["b.txt"]


def test_every_run_path_is_where_the_design_puts_it(tmp_path):
    run = RunFolder(tmp_path)
    stage = tmp_path / "label-vae"
    assert run.stage("label-vae") == stage
    assert (run.config("label-vae"), run.model("label-vae")) == (
        stage / "config.yaml",
        stage / "model.safetensors",
    )
    assert (run.state("label-vae"), run.metrics("label-vae")) == (
        stage / "train_state.pt",
        stage / "metrics.json",
    )
    assert seg_stage("unet-binary-real") == "seg/unet-binary-real"
    assert run.seg("unet-binary-real") == tmp_path / "seg" / "unet-binary-real"
    assert (
        run.model(seg_stage("unet-binary-real"))
        == tmp_path / "seg" / "unet-binary-real" / "model.safetensors"
    )
    assert (run.identity, run.run_config) == (tmp_path / "run.json", tmp_path / "config.yaml")
    assert run.experiment_record == tmp_path / "experiment.json"
    assert run.latents("image") == tmp_path / "latents" / "image.safetensors"
    assert run.samples == tmp_path / "samples"
    assert run.baseline("vqvae-ldm") == tmp_path / "baselines" / "vqvae-ldm"
    assert run.ablation("label_latent") == tmp_path / "ablation" / "label_latent"
    assert run.ladder("vae") == tmp_path / "ladder" / "vae"
    assert run.evidence("table1") == tmp_path / "evaluation" / "table1.json" == run.evaluation / "table1.json"
    assert (run.report_html, run.report_md) == (tmp_path / "report.html", tmp_path / "report.md")


def test_a_stage_is_stopped_until_its_metrics_are_written_and_trained_only_with_its_model(tmp_path):
    run = RunFolder(tmp_path)
    assert not run.is_trained("vae") and not run.is_stopped("vae")
    run.stage("vae").mkdir()
    run.state("vae").write_bytes(b"state")
    assert run.is_stopped("vae") and not run.is_trained("vae")
    run.model("vae").write_bytes(b"weights")
    run.metrics("vae").write_text("{}")
    assert run.is_trained("vae") and not run.is_stopped("vae")
    run.model("vae").unlink()
    assert not run.is_trained("vae")
