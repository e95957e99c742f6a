"""The data-scarcity curve in the report: Dice against n for each arm with intervals, its table, its sentences."""

from __future__ import annotations

from typing import Any

import numpy as np

from foscu.figures import _pyplot, png_bytes
from foscu.scarcity_stats import MEAN

METRICS = {MEAN: "mean foreground Dice", "liver": "liver Dice", "tumor": "tumor Dice"}
STYLE = {
    "real": {"color": "#333333", "marker": "o", "label": "real only"},
    "real+synthetic": {"color": "#2ca02c", "marker": "s", "label": "real + shared synthetic"},
    "own-generator": {"color": "#d62728", "marker": "^", "label": "real + own generator's synthetic"},
    "real+lesions": {"color": "#9467bd", "marker": "D", "label": "real + lesion-edited copies of them"},
}


def _interval(point: dict[str, Any]) -> list[float] | None:
    """The t-interval over seeds, else (one seed) the bootstrap over test cases."""
    return point.get("t_interval") or point.get("bootstrap_interval")


def figure_scarcity(result: dict[str, Any]) -> bytes:
    """Dice (y) against real training cases n (x) per arm, one panel per metric; error bars: 95 % intervals.

    A point without a value is left out (a line joins the points that have one).
    """
    plt = _pyplot()
    metrics = [m for m in METRICS if m in result["curve"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    span = max(result["n"], default=1) or 1
    for ax, name in zip(axes[0], metrics, strict=True):
        for k, (arm, style) in enumerate(STYLE.items()):
            points = [p for p in result["curve"][name] if p["arm"] == arm and p["mean"] is not None]
            if not points:
                continue
            xs = np.array([p["n"] for p in points], dtype=float) + (k - 1) * 0.012 * span  # arms side by side
            ys = np.array([p["mean"] for p in points], dtype=float)
            bounds = [_interval(p) or [p["mean"], p["mean"]] for p in points]
            err = np.array(
                [
                    [y - b[0] for y, b in zip(ys, bounds, strict=True)],
                    [b[1] - y for y, b in zip(ys, bounds, strict=True)],
                ]
            )
            ax.errorbar(xs, ys, yerr=np.clip(err, 0, None), capsize=3, linewidth=1.2, markersize=5, **style)
        ax.set_xticks(result["n"])
        ax.set_xlabel(f"real training cases n (of {result['n_training']})")
        ax.set_ylabel(f"{METRICS[name]} (test)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"Data scarcity: {result['synthetic_cases']} synthetic pairs at every n, seeds {result['seeds']}; "
        "bars: 95 % t-interval over seeds (one seed: bootstrap over test cases)",
        fontsize=9,
    )
    fig.tight_layout()
    return png_bytes(fig)


def _value(point: dict[str, Any] | None, key: str = "t_interval") -> str:
    if point is None or point.get("mean") is None:
        return "n/a"
    interval = point.get(key)
    text = f"{point['mean']:+.3f}" if key == "paired_bootstrap" else f"{point['mean']:.3f}"
    return text if not interval else f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]"


def scarcity_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric x n: each arm's mean [t-interval], and mixed minus real [paired bootstrap]."""
    rows = []
    arms = [a for a in STYLE if any(p["arm"] == a for p in result["curve"][MEAN])]
    for name in (m for m in METRICS if m in result["curve"]):
        points = {(p["n"], p["arm"]): p for p in result["curve"][name]}
        diffs = {(d["n"], d["arm"]): d for d in result["difference"][name]}
        for n in result["n"]:
            row: dict[str, Any] = {"metric": METRICS[name], "n": n}
            for arm in arms:
                row[arm] = _value(points.get((n, arm)))
            for arm in arms[1:]:
                row[f"{arm} - real (paired bootstrap)"] = _value(diffs.get((n, arm)), "paired_bootstrap")
            rows.append(row)
    return rows


def scarcity_sentences(result: dict[str, Any]) -> list[str]:
    """The "worth about" sentences (mean foreground Dice, then liver Dice), and the generator's origin."""
    lines = [f"Generator: {result['generator']}; {result['synthetic_cases']} of its pairs at every n."]
    for name, label in METRICS.items():
        for w in result["worth"].get(name, []):
            lines.append(f"{label[0].upper()}{label[1:]}: {w['sentence']}.")
    helped = [w for ws in result["worth"].values() for w in ws if w["kind"] in ("worth", "more_than_all")]
    if not helped:
        lines.append("Synthetic pairs did not help at any n of this curve (see the numbers above).")
    return lines


def scarcity_markdown(result: dict[str, Any]) -> str:
    """RUN/evaluation/scarcity.md: the table, the sentences and the note."""
    rows = scarcity_rows(result)
    columns = list(rows[0]) if rows else []
    lines = ["# The data-scarcity curve", ""]
    if columns:
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    lines += ["", *(f"- {s}" for s in scarcity_sentences(result)), "", result["note"], ""]
    return "\n".join(lines)


def add_to_report(report: Any, result: dict[str, Any]) -> None:
    """The curve's sentences, table and figure as sections of a ``foscu.report`` report."""
    report.bullets("Data scarcity: what a synthetic pair is worth", scarcity_sentences(result))
    report.table(
        "Data scarcity: test Dice against real training cases", scarcity_rows(result), result["note"]
    )
    report.figures.append(("Data scarcity: Dice against real training cases n", figure_scarcity(result)))
