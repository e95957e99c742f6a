"""Table II in words: what each protocol trained on and for how long, which protocol the validation split
chooses, and per protocol and class whether synthetic data helped, by how much and with what interval.

The choice reads each cell's best validation Dice (metrics.json ``best.val_dice``, on the real validation
split) only; the per-class verdicts read the test-split rows, each protocol against real trained with the
same seed (the paired relative improvement, its t-interval over seeds and its paired bootstrap over test
cases within seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from foscu.config import FoscuConfig

BUDGETS = {
    "converge": "every arm trained until train.patience epochs passed without a better real validation Dice "
    "(at most segmentation.converge_steps steps; a cell that did not stop early did not converge within it)",
    "equal_real_exposure": "the real arm trained train.steps; an arm that adds synthetic cases trained "
    "train.steps x (real + synthetic) / real steps, so every arm saw the same number of real patches",
    "fixed": "every arm trained train.steps, so an arm that adds synthetic cases saw fewer real patches",
}


def protocols_note(cfg: FoscuConfig, protocols: Sequence[str], cells: list[dict[str, Any]]) -> str:
    """The protocols' training data, the budget rule and the loss settings, for Table II's note."""
    from foscu.protocols import PROTOCOLS

    seg = cfg.segmentation
    what = "; ".join(f"{p}: {PROTOCOLS[p].describe}" for p in protocols)
    stopped = [c for c in cells if c.get("stopped_early")]
    text = f"Protocols (one row each, against real): {what}. Budget {seg.budget}: {BUDGETS[seg.budget]}"
    text += f"; {len(stopped)} of {len(cells)} cells stopped early (steps and best step per cell below)."
    train = seg.train
    text += (
        f" Dice {'pooled over the batch' if seg.batch_dice else 'per patch'} (batch_dice {seg.batch_dice}),"
    )
    text += f" lr {train.lr:g} {train.lr_schedule}"
    text += f" after {train.warmup_steps} warm-up steps." if train.warmup_steps else "."
    return text


def _choice(cells: list[dict[str, Any]]) -> tuple[str | None, dict[str, float]]:
    """The protocol with the highest mean best validation Dice over its cells (seeds, archs, tasks)."""
    scores: dict[str, list[float]] = {}
    for c in cells:
        if c.get("val_dice") is not None and c.get("protocol"):
            scores.setdefault(c["protocol"], []).append(float(c["val_dice"]))
    means = {p: float(np.mean(v)) for p, v in scores.items()}
    return (max(means, key=lambda p: means[p]) if means else None), means


def _verdict(row: dict[str, Any]) -> tuple[str, str]:
    """(helped|hurt|unclear|no interval, the numbers) for one row: its paired change and intervals.

    With the paired bootstrap over test cases beside the t-interval over seeds, a verdict needs both:
    helped when both lower bounds are above zero, hurt when both upper bounds are below it.
    """
    points, paired, ci = (
        row["difference_points"],
        row["paired_improvement_percent"],
        row["paired_improvement_ci"],
    )
    if points is None or paired is None:
        return "n/a", "n/a"
    numbers = f"{points:+.2f} Dice points, paired {paired:+.2f} %"
    boot = row.get("paired_bootstrap_ci")
    if ci is None and boot is None:
        return "no interval", numbers + " (one seed: no interval)"
    intervals = [i for i in (ci, boot) if i is not None]
    if ci is not None:
        numbers += f" [95 % over seeds {ci[0]:+.2f}, {ci[1]:+.2f}]"
    if boot is not None:
        numbers += f" [95 % over cases {boot[0]:+.2f}, {boot[1]:+.2f}]"
    if all(i[0] > 0 for i in intervals):
        return "helped", numbers
    return ("hurt" if all(i[1] < 0 for i in intervals) else "unclear"), numbers


def protocol_findings(rows: list[dict[str, Any]], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The validation-chosen protocol and, per protocol and class, the verdict against real, in sentences."""
    chosen, val = _choice(cells)
    lines = []
    if chosen is not None:
        scores = ", ".join(f"{p} {v:.4f}" for p, v in val.items())
        lines.append(
            f"Chosen on the real validation split (mean best validation Dice over seeds): {chosen} ({scores}); "
            "the test split played no part in the choice."
        )
    verdicts: dict[str, list[str]] = {"helped": [], "hurt": [], "unclear": [], "no interval": []}
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        for task in dict.fromkeys(r["task"] for r in rows):
            mine = [r for r in rows if (r["protocol"], r["task"], r["arch"]) == (protocol, task, "mean")]
            parts = []
            for r in mine:
                verdict, numbers = _verdict(r)
                if verdict == "n/a":
                    continue
                parts.append(f"{r['class'].replace('_', ' ')} {numbers}: {verdict}")
                verdicts[verdict].append(f"{protocol} {r['class']}")
            if parts:
                lines.append(
                    f"{protocol} against real ({task}, test split, mean over archs): "
                    + "; ".join(parts)
                    + "."
                )
    if verdicts["helped"]:
        lines.append(
            "Synthetic data helped (every interval above zero): " + ", ".join(verdicts["helped"]) + "."
        )
    tested = sum(len(v) for k, v in verdicts.items() if k != "no interval")
    if tested and not verdicts["helped"]:
        lines.append(
            f"Synthetic data did not help anywhere: no protocol and class of {tested} has its intervals above zero."
        )
    if verdicts["hurt"]:
        lines.append("Synthetic data hurt (every interval below zero): " + ", ".join(verdicts["hurt"]) + ".")
    return {"chosen_on_validation": chosen, "validation_dice": val, "verdicts": verdicts, "lines": lines}


def findings_markdown(findings: dict[str, Any]) -> str:
    return "\n".join(["## In words", "", *(f"- {line}" for line in findings["lines"]), ""])
