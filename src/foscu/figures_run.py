"""The report's figures of a run's own files: training curves, sample views, real beside synthetic (Fig. 4).

The evidence figures (ladder, label realism, mask to image) are in figures.py; the report (report.py) lays
both out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from foscu.data.layout import Case, list_cases
from foscu.errors import InputError
from foscu.figures import png_bytes


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the rest of the log is still good
    return rows


def _curve(ax: Any, records: list[dict], key: str, **style: Any) -> None:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if pts:
        steps, values = zip(*pts, strict=False)
        ax.plot(steps, values, label=key, **style)


def figure_training_curves(run: Path) -> bytes | None:
    """Per stage from ``RUN/**/metrics.jsonl``: training and validation loss (left axis) and every other
    ``val_*`` score the stage logs (right axis: Dice, L1, contrast kept per structure, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = sorted(p for p in run.rglob("metrics.jsonl") if "samples" not in p.parts)
    if not logs:
        return None
    cols = 4
    rows_n = math.ceil(len(logs) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 4.0 * rows_n), squeeze=False)
    for ax, log in zip(axes.ravel(), logs, strict=False):
        records = [r for r in _read_jsonl(log) if "step" in r]
        _curve(ax, records, "loss")
        _curve(ax, records, "val_loss", marker="o", ms=3)
        scores = sorted({k for r in records for k in r if k.startswith("val_") and k != "val_loss"})
        if scores:
            right = ax.twinx()
            for i, key in enumerate(scores):
                ls = ":" if key.startswith("val_l1") else "--"
                _curve(right, records, key, marker=".", ms=3, ls=ls, lw=0.9, color=f"C{(i + 2) % 10}")
            right.tick_params(labelsize=6)
            right.legend(fontsize=5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        ax.set_title(str(log.parent.relative_to(run)), fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.ravel()[len(logs) :]:
        ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)


def _cases(folder: Path) -> list[Case]:
    """The cases of an nnU-Net folder, labels optional; none where it holds no images."""
    try:
        return list_cases(folder, require_labels=False)
    except InputError:
        return []


def figure_views(folder: Path, n: int, title: str) -> list[tuple[str, bytes]]:
    """Tri-planar views with label overlays of the first ``n`` cases of an nnU-Net folder (paper Fig. 1)."""
    from foscu.data.nifti import read_nifti
    from foscu.viz import tri_planar_figure

    figures = []
    for case in _cases(folder)[:n]:
        image = read_nifti(case.image)
        label = read_nifti(case.label, label=True).array if case.label else None
        caption = f"{title}: {case.case_id}"
        figures.append((caption, png_bytes(tri_planar_figure(image.array, label, image.spacing, caption))))
    return figures


def figure_real_vs_synthetic(real: Path, synthetic: Path) -> bytes | None:
    """Axial slices of real and synthetic cases, with and without tumor (paper Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from foscu.data.nifti import read_nifti
    from foscu.labels import TUMOR
    from foscu.viz import overlay_rgb, view_center

    def pick(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
        chosen: dict[str, tuple[np.ndarray, np.ndarray] | None] = {"tumor": None, "tumor-free": None}
        for case in _cases(folder):
            if case.label is None:
                continue
            label = read_nifti(case.label, label=True).array
            kind = "tumor" if (label == TUMOR).any() else "tumor-free"
            if chosen[kind] is None:
                chosen[kind] = (read_nifti(case.image).array, label)
        return chosen

    groups = {"real": pick(real), "synthetic": pick(synthetic)}
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4), facecolor="black")
    for col, (source, kind) in enumerate((s, k) for s in groups for k in ("tumor", "tumor-free")):
        pair = groups[source][kind]
        for row, overlay in enumerate((False, True)):
            ax = axes[row, col]
            ax.axis("off")
            if pair is None:
                ax.set_title(f"{source} {kind}: none", color="grey", fontsize=9)
                continue
            image, label = pair
            z = view_center(label, image.shape)[2]
            rgb = overlay_rgb(np.rot90(image[:, :, z]), np.rot90(label[:, :, z]) if overlay else None)
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(f"{source}, {kind}" + (" + label" if overlay else ""), color="white", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)
