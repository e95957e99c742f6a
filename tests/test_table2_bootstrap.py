"""Table II's paired bootstrap over test cases within seeds (foscu/table2_bootstrap.py)."""

from __future__ import annotations

import numpy as np

from foscu.table2 import table2_rows
from foscu.table2_bootstrap import add_case_bootstrap, paired_case_bootstrap
from foscu.table2_words import protocol_findings


def _evaluation(per_case: dict[str, float]) -> dict:
    """An evaluate_cases-shaped result for the binary task (liver only)."""
    mean = float(np.mean(list(per_case.values())))
    return {
        "cases": {c: {"liver": {"dice": d, "hd95": 1.0}} for c, d in per_case.items()},
        "mean": {"liver": {"dice": mean}},
        "foreground_mean": {"dice": mean},
    }


CASES = [f"c{i:02d}" for i in range(12)]


def _seeds(values_per_seed: list[list[float]]) -> list[dict]:
    return [_evaluation(dict(zip(CASES, values, strict=True))) for values in values_per_seed]


def test_case_sampling_widens_what_identical_seeds_hide():
    """Protocol better on half the cases, worse on the other half, the same for every seed: the t-interval
    over seeds collapses to a point, the bootstrap over cases must straddle zero."""
    real = [[0.8] * 12] * 3
    other = [[0.95] * 6 + [0.66] * 6] * 3  # +0.15 / -0.14: mean change about +0.6 %
    results = {
        ("unet", "binary", "real"): _seeds(real),
        ("unet", "binary", "real+synthetic"): _seeds(other),
    }
    rows = table2_rows(results, ["unet"], ["binary"], ["real+synthetic"])
    add_case_bootstrap(rows, results, ["real+synthetic"], 500, 0)
    row = next(r for r in rows if r["arch"] == "unet" and r["class"] == "liver")
    low, high = row["paired_improvement_ci"]
    assert abs(high - low) < 1e-9  # three identical seeds: no spread over seeds
    boot = row["paired_bootstrap_ci"]
    assert boot[0] < 0 < boot[1] and boot[1] - boot[0] > 5.0
    # the t-interval alone would call it "helped" (a point above zero); both intervals make it unclear
    verdicts = protocol_findings(rows, [])["verdicts"]
    assert "mix liver" in verdicts["unclear"] and "mix liver" not in verdicts["helped"]


def test_a_gain_on_every_case_is_above_zero_and_pairs_cases():
    """A +0.05 gain on every case of very different difficulty: paired, the interval is tight above zero."""
    rng = np.random.default_rng(1)
    real = [list(rng.uniform(0.3, 0.9, 12)) for _ in range(3)]
    other = [[v + 0.05 for v in seed] for seed in real]
    arms = [
        (
            [{c: {"liver": v} for c, v in zip(CASES, s, strict=True)} for s in real],
            [{c: {"liver": v} for c, v in zip(CASES, s, strict=True)} for s in other],
        )
    ]
    low, high = paired_case_bootstrap(arms, "liver", 300, 0)
    assert 0 < low < high < 25


def test_mean_row_averages_archs_and_absent_cases_give_none():
    real = _seeds([[0.8] * 12] * 2)
    better = _seeds([[0.88] * 12] * 2)
    results = {
        ("unet", "binary", "real"): real,
        ("unet", "binary", "real+synthetic"): better,
        ("vnet", "binary", "real"): real,
        ("vnet", "binary", "real+synthetic"): real,
    }
    rows = table2_rows(results, ["unet", "vnet"], ["binary"], ["real+synthetic"])
    add_case_bootstrap(rows, results, ["real+synthetic"], 100, 0)
    by = {(r["arch"], r["class"]): r["paired_bootstrap_ci"] for r in rows}
    assert np.allclose(by[("unet", "liver")], [10.0, 10.0])
    assert np.allclose(by[("vnet", "liver")], [0.0, 0.0])
    assert np.allclose(by[("mean", "liver")], [5.0, 5.0])  # (0.84 - 0.80) / 0.80 on every resample
    # evaluations without per-case scores (older runs): no bootstrap, no error
    bare = {k: [{kk: vv for kk, vv in e.items() if kk != "cases"} for e in v] for k, v in results.items()}
    rows = table2_rows(bare, ["unet", "vnet"], ["binary"], ["real+synthetic"])
    add_case_bootstrap(rows, bare, ["real+synthetic"], 100, 0)
    assert all(r["paired_bootstrap_ci"] is None for r in rows)
