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
        assert line["steps"] == 1 and line["it_per_s"] > 0 and line["peak_mib"] > 0, line
        assert line["device"] == "cpu" and line["shape"] == [32, 32, 16]
    (pair,) = [line for line in lines if line["check"] == "sample_pair"]
    assert pair["seconds_per_pair"] > 0 and pair["steps"] == 2
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
    assert lines[-2]["check"] == "train" and "CUDA out of memory (simulated)" in lines[-2]["error"]
    assert lines[-1] == {"check": "done", "ok": False, "seconds": lines[-1]["seconds"]}


def test_over_budget_is_a_failure(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--cpu-dry", "--work", str(tmp_path / "work"), "--budget-s", "0.001"]) == 1
    assert "budget" in _lines(capsys)[-1]["error"]
