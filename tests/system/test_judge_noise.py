"""benchmarks/judge_noise.py: one line per (variant, seed) from the validation split, a summary per variant."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

from conftest import SEG_TWO_STEPS

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("judge_noise", ROOT / "benchmarks" / "judge_noise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_judge_noise_reports_each_seed_and_the_spread_and_reuses_trained_seeds(
    seg_prepared, tmp_path, capsys
):
    judge_noise = _module()
    argv = [str(seg_prepared), str(tmp_path), "--config", "tiny", "--seeds", "2", "--variant", "two"]
    argv += [f"--set={s}" for s in SEG_TWO_STEPS]
    assert judge_noise.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows, (summary,) = lines[:2], lines[2:]
    assert [r["seed"] for r in rows] == [0, 1] and all(r["steps"] == 2 for r in rows)
    for row in rows:  # the kept step's validation scores, as the run logged them
        folder = tmp_path / "two" / "seg" / ("unet-multiclass-real" + ("-seed1" if row["seed"] else ""))
        logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        (kept,) = [r for r in logged if r["step"] == row["best_step"] and "val_dice" in r]
        assert row["val_dice"] == kept["val_dice"] and row["dice"]["liver"] == kept["val_dice_liver"]
    values = [r["val_dice"] for r in rows]
    assert summary["val_dice"]["sd"] == round(statistics.stdev(values), 4)
    assert summary["val_dice"]["min"] == round(min(values), 4)
    # a second call finds both seeds trained and trains nothing again
    weights = tmp_path / "two" / "seg" / "unet-multiclass-real" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert judge_noise.main(argv) == 0
    assert weights.stat().st_mtime_ns == before
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == lines
