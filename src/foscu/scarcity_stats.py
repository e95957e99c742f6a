"""The data-scarcity curve's numbers: nested subsets, per-seed scores, intervals and "worth about".

Pure functions over the per-case test Dice of each cell (foscu.scarcity trains and scores the cells): the
seeded nested subsets of the training split, a metric over a set of test cases (nnU-Net's convention:
class means over valid cases, the foreground mean the mean of class means), Student-t intervals over seeds,
a paired bootstrap over test cases within seeds, and the real-case count a synthetic set is worth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from foscu.table2 import t_interval

MEAN = "mean"  # the metric name of the mean foreground Dice (the mean of the class means)
ARMS = ("real", "real+synthetic")
CaseScores = dict[str, dict[str, float | None]]  # test case -> class -> Dice (None: excluded)


def nested_subsets(case_ids: Sequence[str], counts: Sequence[int], seed: int) -> dict[int, list[str]]:
    """For each count n, the first n cases of one ``seed``-permuted order of ``case_ids`` (sorted first).

    Every subset of a seed is inside the larger ones of that seed; another seed permutes anew.
    """
    order = [str(c) for c in np.random.default_rng(seed).permutation(sorted(case_ids))]
    return {int(n): order[: int(n)] for n in counts}


def case_scores(evaluation: dict[str, Any]) -> CaseScores:
    """A segmentation evaluation's per-case Dice (``evaluate_cases`` output): case -> class -> Dice."""
    return {case: {c: v["dice"] for c, v in classes.items()} for case, classes in evaluation["cases"].items()}


def metric(scores: CaseScores, cases: Sequence[str], name: str) -> float | None:
    """Dice of class ``name`` (or the mean foreground Dice for ``MEAN``) over ``cases`` (repeats count)."""
    classes = list(next(iter(scores.values()))) if scores else []
    means: dict[str, float | None] = {}
    for cls in classes if name == MEAN else [name]:
        valid = [v for v in (scores[c][cls] for c in cases) if v is not None]
        means[cls] = float(np.mean(valid)) if valid else None
    kept = [v for v in means.values() if v is not None]
    if name != MEAN:
        return means[name]
    return float(np.mean(kept)) if kept else None


def _percentile_interval(values: list[float]) -> list[float] | None:
    if not values:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def bootstrap_interval(
    seeds_a: list[CaseScores], name: str, resamples: int, seed: int, seeds_b: list[CaseScores] | None = None
) -> list[float] | None:
    """95 % percentile interval of the mean over seeds of one arm (or of arm b minus arm a, paired).

    Each resample draws the test cases with replacement once and scores every seed on that draw, so the
    seeds stay as trained (within seeds) and a paired difference compares the same cases. None without
    resamples, seeds or test cases.
    """
    if resamples < 1 or not seeds_a or not seeds_a[0]:
        return None
    cases = sorted(seeds_a[0])
    draws = np.random.default_rng(seed).integers(0, len(cases), size=(resamples, len(cases)))
    values = []
    for draw in draws:  # (n_cases,) indices of one resample
        chosen = [cases[i] for i in draw]
        per_seed = []
        for k, scores in enumerate(seeds_a):
            a = metric(scores, chosen, name)
            b = None if seeds_b is None else metric(seeds_b[k], chosen, name)
            if a is not None and (seeds_b is None or b is not None):
                per_seed.append(a if seeds_b is None else b - a)  # type: ignore[operator]
        if per_seed:
            values.append(float(np.mean(per_seed)))
    return _percentile_interval(values)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def curve_point(per_seed_scores: list[CaseScores], name: str, resamples: int, seed: int) -> dict[str, Any]:
    """One arm at one n: per-seed values, their mean, t-interval over seeds and bootstrap over cases."""
    per_seed = [metric(s, sorted(s), name) for s in per_seed_scores]
    return {
        "per_seed": per_seed,
        "mean": _mean(per_seed),
        "t_interval": t_interval(per_seed),
        "bootstrap_interval": bootstrap_interval(per_seed_scores, name, resamples, seed),
    }


def paired_difference(
    real: list[CaseScores], mixed: list[CaseScores], name: str, resamples: int, seed: int
) -> dict[str, Any]:
    """Mixed minus real at one n, seed by seed: the mean, its t-interval over seeds and the paired
    bootstrap over test cases within seeds."""
    diffs = []
    for a, b in zip(real, mixed, strict=True):
        va, vb = metric(a, sorted(a), name), metric(b, sorted(b), name)
        diffs.append(None if va is None or vb is None else vb - va)
    return {
        "per_seed": diffs,
        "mean": _mean(diffs),
        "t_interval": t_interval(diffs),
        "paired_bootstrap": bootstrap_interval(real, name, resamples, seed, mixed),
    }


def equivalent_real_cases(
    ns: Sequence[int], real: Sequence[float | None], target: float, start: int = 0
) -> tuple[str, float | None]:
    """Where the real-only curve, linear between measured points, first reaches ``target`` at n >= start.

    Returns ("at", n), ("below", the smallest measured n) when ``target`` is under the curve's first point
    (no real-only point lies lower to interpolate from), or ("above", the largest n) when the curve never
    reaches it. Points without a value are left out.
    """
    points = sorted((n, v) for n, v in zip(ns, real, strict=True) if v is not None and n >= start)
    if not points:
        return "above", None
    if target <= points[0][1] and points[0][0] > start:
        return "below", float(points[0][0])
    if target <= points[0][1]:
        return "at", float(points[0][0])
    for (n0, v0), (n1, v1) in zip(points, points[1:], strict=False):
        if v0 < target <= v1:
            return "at", n0 + (target - v0) / (v1 - v0) * (n1 - n0)
    return "above", float(points[-1][0])


def _interval_text(interval: list[float] | None) -> str:
    return "" if interval is None else f", 95 % interval {interval[0]:+.3f} to {interval[1]:+.3f}"


def _difference_text(difference: dict[str, Any] | None) -> str:
    if difference is None or difference.get("mean") is None:
        return ""
    return f"paired difference {difference['mean']:+.3f}{_interval_text(difference.get('paired_bootstrap'))}"


def worth_sentence(
    n: int,
    curve: dict[int, float | None],
    mixed: float | None,
    label: str,
    n_training: int,
    difference: dict[str, Any] | None = None,
) -> tuple[str, str, float | None]:
    """The sentence for one n: (kind, sentence, equivalent n). ``curve``: real-only mean at each n.

    kind: "worth" (the real-only curve reaches the mixed Dice at an interpolated n), "more_than_all",
    "fewer_than" (n = 0: below the smallest real-only point), "no_help" (mixed not above real at this n)
    or "missing" (an arm has no value here).
    """
    own = curve.get(n)
    if mixed is None or (n > 0 and own is None):
        return "missing", f"at n = {n}, {label} is missing for an arm", None
    diff = _difference_text(difference)
    if own is not None and mixed <= own:
        return (
            "no_help",
            (
                f"at n = {n}, adding synthetic pairs does not help: {label} {mixed:.3f} with them against "
                f"{own:.3f} without" + (f" ({diff})" if diff else "")
            ),
            None,
        )
    kind, value = equivalent_real_cases(list(curve), list(curve.values()), mixed, start=n)
    what = "synthetic pairs alone are" if n == 0 else "adding synthetic pairs is"
    diff = f"; {diff}" if diff and n > 0 else ""
    if kind == "below":
        assert value is not None
        return (
            "fewer_than",
            (
                f"at n = {n}, {what} worth fewer than the {value:.0f} real cases of the smallest real-only "
                f"point ({label} {mixed:.3f} against {curve[int(value)]:.3f})"
            ),
            None,
        )
    if kind == "above":
        top = max((k for k, v in curve.items() if v is not None), default=n)
        best = curve.get(top)
        whole = f"all {n_training}" if top == n_training else f"the {top}"
        reached = f"; real-only reaches {best:.3f} with {top}" if best is not None else ""
        return (
            "more_than_all",
            (f"at n = {n}, {what} worth more than {whole} real cases ({label} {mixed:.3f}{reached}){diff}"),
            None,
        )
    assert value is not None
    more = "" if n == 0 else f", {value - n:.1f} more than the {n} it had"
    return (
        "worth",
        (
            f"at n = {n}, {what} worth about {value:.1f} real cases ({label} {mixed:.3f}, reached by the "
            f"real-only curve at n ≈ {value:.1f}, linear between measured points{more}){diff}"
        ),
        value,
    )
