"""The fidelity ladder: where between the data and a Duo-Diffusion pair is quality lost?

One segmenter trained on real data only scores, on the test split, per class:

- (a) ``real``: the real test images against their masks — the ceiling;
- (b) ``vae``: the image VAE's reconstructions of those images — what the autoencoder loses;
- (c) ``mask_to_image``: images generated (ControlNet) from the real test masks — what conditioning keeps;
- (d) ``duo``: Duo-Diffusion pairs, generated label and its generated image — what the label model adds;
- (e) ``control``: the images of (c) scored against *another* test case's mask — what a generator that
  ignores its mask would score. (c) must stand clearly above (e), or the conditioning is not working.

Each rung is reported as per-class Dice, as a fraction of (a), and with its number of cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

RUNGS: dict[str, str] = {
    "real": "(a) real test images",
    "vae": "(b) image-VAE reconstructions of the test images",
    "mask_to_image": "(c) images generated from the real test masks",
    "duo": "(d) Duo-Diffusion pairs (generated label + its image)",
    "control": "(e) control: the images of (c) against another case's mask",
}
CLASSES = ("liver", "portal_vein", "hepatic_vein", "tumor")
# (c) counts as conditioned when its liver Dice beats the control (e) by this much, per case on average,
# with the paired bootstrap 95 % interval of the difference above zero
MIN_MARGIN = 0.1


def control_pairs(pairs: Mapping[str, tuple[Path, Path]]) -> dict[str, tuple[Path, Path]]:
    """Each case's prediction paired with the next case's mask (a cyclic shift: no case keeps its own)."""
    ids = sorted(pairs)
    if len(ids) < 2:
        raise ValueError("the control rung needs at least two cases")
    return {ids[i]: (pairs[ids[i]][0], pairs[ids[(i + 1) % len(ids)]][1]) for i in range(len(ids))}


def case_dice(metrics: Mapping[str, Any], cls: str) -> dict[str, float | None]:
    """Per-case Dice of one class from an :func:`~foscu.evaluation.segmentation_metrics.evaluate_cases` result."""
    return {case: values[cls]["dice"] for case, values in metrics["cases"].items()}


def paired_difference(
    a: Mapping[str, float | None], b: Mapping[str, float | None], n_boot: int = 2000, seed: int = 0
) -> dict[str, float | int | None]:
    """Mean of a - b over cases where both are defined, with a bootstrap 95 % interval over cases."""
    pairs = [(a[k], b.get(k)) for k in a]
    diffs = np.array([x - y for x, y in pairs if x is not None and y is not None])
    if len(diffs) == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    boots = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"mean": float(diffs.mean()), "low": float(low), "high": float(high), "n": int(len(diffs))}


def ladder_rows(metrics: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per rung present in ``metrics`` (rung -> evaluate_cases result): Dice per class, fraction of (a)."""
    real = metrics.get("real")
    rows = []
    for rung, description in RUNGS.items():
        if rung not in metrics:
            continue
        m = metrics[rung]
        row: dict[str, Any] = {"rung": rung, "description": description, "n": m["n_cases"]}
        for cls in (*CLASSES, "mean"):
            value = m["foreground_mean"]["dice"] if cls == "mean" else m["mean"][cls]["dice"]
            ref = None
            if real is not None:
                ref = real["foreground_mean"]["dice"] if cls == "mean" else real["mean"][cls]["dice"]
            row[f"dice {cls}"] = value
            row[f"fraction {cls}"] = value / ref if value is not None and ref else None
        rows.append(row)
    return rows


def conditioning_verdict(
    mask_to_image: Mapping[str, Any], control: Mapping[str, Any], cls: str = "liver"
) -> dict[str, Any]:
    """Is (c) clearly above (e)? The paired per-case difference of ``cls`` Dice, and a sentence saying so."""
    diff = paired_difference(case_dice(mask_to_image, cls), case_dice(control, cls))
    working = (
        diff["mean"] is not None
        and diff["mean"] >= MIN_MARGIN
        and diff["low"] is not None
        and diff["low"] > 0  # type: ignore[operator]
    )
    if diff["mean"] is None:
        text = f"The conditioning cannot be judged: no case has a {cls} in both (c) and (e)."
    elif working:
        text = (
            f"The conditioning works: images generated from a mask score {diff['mean']:.2f} higher {cls} "
            f"Dice against their own mask than against another case's (95 % interval "
            f"{diff['low']:.2f} to {diff['high']:.2f}, {diff['n']} cases)."
        )
    else:
        text = (
            f"The conditioning is NOT working: images generated from a mask score only {diff['mean']:.2f} "
            f"higher {cls} Dice against their own mask than against another case's (95 % interval "
            f"{diff['low']:.2f} to {diff['high']:.2f}, {diff['n']} cases; at least {MIN_MARGIN} with the "
            f"interval above zero is needed). The generator does not put the anatomy where the mask says."
        )
    return {"class": cls, "difference": diff, "working": bool(working), "text": text}


def where_lost(rows: list[dict[str, Any]]) -> str:
    """One sentence naming the rung where the liver Dice drops most, from (a) down to (d)."""
    chain = [r for r in rows if r["rung"] in ("real", "vae", "mask_to_image", "duo")]
    drops = []
    for before, after in zip(chain, chain[1:], strict=False):
        b, a = before["dice liver"], after["dice liver"]
        if b is not None and a is not None:
            drops.append((b - a, before["rung"], after["rung"]))
    if not drops:
        return "Not enough rungs to say where quality is lost."
    drop, frm, to = max(drops)
    stage = {"vae": "the image VAE", "mask_to_image": "the ControlNet image model", "duo": "the label model"}
    if drop <= 0.05:
        return "No rung loses more than 0.05 liver Dice."
    return f"Most liver Dice is lost at {stage[to]}: {drop:.2f} from {RUNGS[frm]} to {RUNGS[to]}."
