"""Table II's paired bootstrap over test cases within seeds, beside the Student-t interval over seeds.

The t-interval over seeds (table2.t_interval) holds run-to-run training noise only: with 3 seeds it is
mean ± 4.30 sd / sqrt(3), and the 12 or 144 test cases enter as fixed. This interval resamples the test
cases: each resample draws the test cases with replacement once, scores every seed of both arms on that
draw (the seeds stay as trained, and both arms are scored on the same cases), takes each seed's relative
change (protocol - real) / real x 100 and averages it over seeds; the 2.5th and 97.5th percentiles of those
means are the interval. The "mean" architecture averages the architectures' Dice per seed inside each
resample. Dice per case is nnU-Net's convention (a class absent from both prediction and reference is
excluded), so a class mean is over the drawn cases that hold it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from foscu.scarcity_stats import MEAN, CaseScores, case_scores, metric

Arms = tuple[list[CaseScores], list[CaseScores]]  # (real per seed, protocol per seed) of one architecture


def _relative(real: float | None, other: float | None) -> float | None:
    if real is None or other is None or real == 0:
        return None
    return (other - real) / real * 100.0


def _seed_mean(per_arch: list[list[CaseScores]], seed: int, cases: Sequence[str], name: str) -> float | None:
    """The architectures' mean Dice of one seed on ``cases`` (None when no architecture scores it)."""
    values = [metric(seeds[seed], cases, name) for seeds in per_arch]
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def paired_case_bootstrap(arms: list[Arms], name: str, resamples: int, seed: int) -> list[float] | None:
    """95 % percentile interval of the mean over seeds of the paired relative change, in percent.

    ``arms`` holds one (real, protocol) pair of per-seed case scores per architecture (one entry for an
    architecture's own row, all of them for the "mean" row). None without resamples, seeds or cases, or
    when the architectures disagree on their seeds or test cases.
    """
    if resamples < 1 or not arms or not all(real and other for real, other in arms):
        return None
    n_seeds = len(arms[0][0])
    cases = sorted(arms[0][0][0])
    if any(len(r) != n_seeds or len(o) != n_seeds for r, o in arms) or not cases:
        return None
    if any(sorted(s) != cases for r, o in arms for s in (*r, *o)):
        return None
    draws = np.random.default_rng(seed).integers(0, len(cases), size=(resamples, len(cases)))
    means = []
    for draw in draws:
        chosen = [cases[i] for i in draw]
        changes = []
        for k in range(n_seeds):
            real = _seed_mean([r for r, _ in arms], k, chosen, name)
            other = _seed_mean([o for _, o in arms], k, chosen, name)
            change = _relative(real, other)
            if change is not None:
                changes.append(change)
        if changes:
            means.append(float(np.mean(changes)))
    if not means:
        return None
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def add_case_bootstrap(
    rows: list[dict[str, Any]],
    results: dict[tuple[str, str, str], list[dict[str, Any]]],
    kinds: Sequence[str],
    resamples: int,
    seed: int,
) -> None:
    """Fill each row's ``paired_bootstrap_ci`` (percent; None where it cannot be computed) in place.

    ``results`` and ``kinds`` as table2.table2_rows takes them; a row's protocol maps back to its scored
    data tag through ``kinds`` (protocols.SCORED_TAG).
    """
    from foscu.protocols import protocol_of

    kind_of = {protocol_of(k): k for k in kinds}
    scores: dict[tuple[str, str, str], list[CaseScores]] = {}
    for key, evaluations in results.items():
        if all("cases" in e for e in evaluations):
            scores[key] = [case_scores(e) for e in evaluations]
    for row in rows:
        kind = kind_of.get(row["protocol"])
        archs = (
            sorted({a for a, t, _ in results if t == row["task"]}) if row["arch"] == "mean" else [row["arch"]]
        )
        arms: list[Arms] = []
        for arch in archs:
            real = scores.get((arch, row["task"], "real"))
            other = None if kind is None else scores.get((arch, row["task"], kind))
            if real is None or other is None:
                arms = []
                break
            arms.append((real, other))
        name = MEAN if row["class"] == "mean" else row["class"]
        row["paired_bootstrap_ci"] = paired_case_bootstrap(arms, name, resamples, seed) if arms else None
