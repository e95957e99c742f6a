"""benchmarks/run.py --quick: one JSON line per benchmark, ours against the MONAI-tutorial way."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is in tests/system/)


@pytest.mark.slow
def test_quick_benchmarks_print_one_json_line_each() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    names = [line["name"] for line in lines]
    assert len(set(names)) == len(names) >= 4, names
    for line in lines:
        assert line["ours_s"] > 0 and line["reference_s"] > 0, line
        # ratio = reference / ours, as printed (both rounded to 4 decimals, the ratio to 2)
        assert line["ratio"] == pytest.approx(line["reference_s"] / line["ours_s"], rel=0.02, abs=0.01), line
        assert line["device"] == "cpu" and line["preset"] == "tiny"

    (train,) = [line for line in lines if "diffusion" in line["name"] and "train" in line["name"]]
    assert train["latent_shape"] == [4, 16, 16, 8]  # the tiny VAE halves 32x32x16, 4 latent channels

    (pair,) = [line for line in lines if line["name"].startswith("sample_pair")]
    # DDIM-4 against 1000 DDPM steps (extrapolated from 20 measured in --quick): far more than 20x faster
    assert pair["ratio"] >= 20, pair
    assert "extrapolated linearly from 20 measured DDPM steps" in pair["note"]

    (quality,) = [line for line in lines if line["name"].startswith("sampling_quality")]
    frds = [value for key, value in quality.items() if key.startswith("frd_")]
    assert len(frds) == 3 and all(math.isfinite(v) and v >= 0 for v in frds), quality
    mads = [value for key, value in quality.items() if key.startswith("mad_")]
    assert len(mads) == 3 and all(0 <= v <= 1 for v in mads), quality  # images are in [0, 1]
    agreement = [value for key, value in quality.items() if key.startswith("label_")]
    assert agreement and all(0 <= v <= 1 for v in agreement), quality


@pytest.mark.slow
def test_train_step_benchmarks_time_the_engines_own_step(monkeypatch) -> None:
    # "ours" must be fit's step (engine.loop.TrainStep), so a regression in fit shows in the ratio
    import importlib.util

    import torch

    from foscu.engine import loop

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    calls = {"n": 0}
    real_call = loop.TrainStep.__call__

    def counted(self, batch, step):
        calls["n"] += 1
        return real_call(self, batch, step)

    monkeypatch.setattr(loop.TrainStep, "__call__", counted)
    cfg = bench.bench_config("tiny")
    b = bench.build_bench(cfg, bench.PRESET_ROI["tiny"], 4, torch.device("cpu"))
    for run, name in (
        (bench.bench_diffusion_train, "diffusion"),
        (bench.bench_controlnet_train, "controlnet"),
    ):
        calls["n"] = 0
        line = run(b, 1, 2)
        assert calls["n"] == 3, name  # warm-up + 2 timed steps of ours, none of the reference
        assert line["ours_s"] > 0 and "TrainStep" in line["note"]
