"""benchmarks/gpu_check.py --cpu-dry: the GPU check's every step at tiny sizes, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is in tests/system/)


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_cpu_dry_runs_every_check_and_prints_json_lines(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--cpu-dry", "--work", str(tmp_path / "work")]) == 0
    lines = _lines(capsys)
    assert [line["check"] for line in lines] == [
        "env",
        "data",
        *["train"] * 7,
        "sample_pair",
        "fid",
        "seg_predict",
        "done",
    ]
    trained = [line for line in lines if line["check"] == "train"]
    assert [line["stage"] for line in trained] == list(gpu_check.STAGES)
    for line in trained:
        # one warm-up step, then the stage resumed for one timed step: the rate is the resumed step's
        assert line["steps"] == 2 and line["timed_steps"] == 1, line
        assert line["it_per_s"] > 0 and line["peak_mib"] > 0, line
        assert line["device"] == "cpu" and line["shape"] == [32, 32, 16]
    (pair,) = [line for line in lines if line["check"] == "sample_pair"]
    assert pair["seconds_per_pair"] > 0 and pair["seconds_first_pair"] > 0 and pair["steps"] == 2
    (fid,) = [line for line in lines if line["check"] == "fid"]
    assert min(fid["slices"].values()) >= 4 and "random weights" in fid["note"]
    assert lines[-1]["ok"] is True
    assert (tmp_path / "work" / "predictions").is_dir()  # the segmenter's prediction was written


def test_a_failing_check_exits_non_zero_with_its_error(gpu_check, tmp_path, capsys, monkeypatch):
    from foscu import stages

    def broken(name, *args, **kwargs):
        if name == "label-ldm":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_train_stage(name, *args, **kwargs)

    real_train_stage = stages.train_stage
    monkeypatch.setattr(stages, "train_stage", broken)
    assert gpu_check.main(["--cpu-dry", "--work", str(tmp_path / "work"), "--budget-s", "600"]) == 1
    lines = _lines(capsys)
    (failed,) = [line for line in lines if "error" in line and line["check"] == "train"]
    assert "CUDA out of memory (simulated)" in failed["error"]
    # the checks after it still run: the independent ones pass, so one run shows every failure
    later = [line["check"] for line in lines[lines.index(failed) + 1 :]]
    assert later[:4] == ["train"] * 4 and "seg_predict" in later
    (seg,) = [line for line in lines if line["check"] == "seg_predict"]
    assert "error" not in seg and seg["it_per_s"] > 0
    assert lines[-1]["check"] == "done" and lines[-1]["ok"] is False
    assert "failed" in lines[-1]["error"]


def test_over_budget_is_a_failure(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--cpu-dry", "--work", str(tmp_path / "work"), "--budget-s", "0.001"]) == 1
    assert "budget" in _lines(capsys)[-1]["error"]


def test_levers_print_a_ratio_against_their_base(gpu_check, tmp_path, capsys):
    assert (
        gpu_check.main(["--cpu-dry", "--levers", "--work", str(tmp_path / "work"), "--budget-s", "600"]) == 0
    )
    levers = [line for line in _lines(capsys) if line["check"] == "lever"]
    *levers, bf16, weighted, maisi = levers
    assert weighted["lever"] == "image-vae structure_weight 10" and weighted["ratio_it_per_s"] > 0
    assert maisi["lever"] == "image-vae maisi" and maisi["ratio_it_per_s"] > 0
    assert bf16["lever"] == "sample bf16 autocast" and bf16["seconds_per_pair"] > 0
    assert 0 <= bf16["image_mean_abs_diff"] < 0.1 and 0.5 < bf16["label_voxels_equal"] <= 1
    assert [line["lever"] for line in levers] == [
        "image-vae batch 4",
        "image-vae cudnn.benchmark",
        "image-ldm batch 4",
        "image-ldm cudnn.benchmark",
    ]
    for line in levers:
        ratio = line.get("ratio_samples_per_s", line.get("ratio_it_per_s"))
        assert ratio is not None and ratio > 0, line
    assert levers[0]["batch_size"] == 4 and levers[0]["base_batch_size"] == 2
    assert (tmp_path / "work" / "run" / "image-ldm-b4" / "model.safetensors").is_file()
