"""The report's evidence figures: the fidelity ladder, label realism, and mask-to-image beside the real case."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, facecolor=fig.get_facecolor())
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_ladder(ladder: dict[str, Any]) -> bytes:
    """Grouped bars: Dice per class (x) for each rung of the fidelity ladder, with the case count."""
    from foscu.evaluation.ladder import CLASSES

    plt = _pyplot()
    rows = ladder["rows"]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / max(len(rows), 1)
    colours = {"real": "#333333", "vae": "#777777", "mask_to_image": "#1f77b4", "duo": "#2ca02c"}
    colours["control"] = "#d62728"
    for i, row in enumerate(rows):
        values = [row[f"dice {c}"] if row[f"dice {c}"] is not None else 0.0 for c in CLASSES]
        xs = np.arange(len(CLASSES)) + (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(
            xs, values, width, label=f"{row['description']} (n={row['n']})", color=colours.get(row["rung"])
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)  # a bar of height 0 still shows its value
    ax.set_xticks(np.arange(len(CLASSES)), [c.replace("_", " ") for c in CLASSES])
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (real-only segmenter)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("Fidelity ladder: where quality is lost", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def figure_label_realism(realism: dict[str, Any]) -> bytes:
    """Per-feature distributions of generated against real labels (points over box plots)."""
    plt = _pyplot()
    names = [r["feature"] for r in realism["features"]]
    real, gen = realism["real_cases"], realism["generated_cases"]
    cols = 4
    rows_n = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.4 * rows_n), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name, row in zip(axes.ravel(), names, realism["features"], strict=False):
        groups = []
        for values in (real.values(), gen.values()):
            v = np.array([f[name] for f in values], dtype=float)
            groups.append(v[~np.isnan(v)])
        ax.boxplot(groups, widths=0.5, showfliers=False)
        for k, v in enumerate(groups, start=1):
            ax.scatter(k + rng.uniform(-0.15, 0.15, len(v)), v, s=8, alpha=0.6)
        ax.set_xticks([1, 2], [f"real ({len(groups[0])})", f"generated ({len(groups[1])})"], fontsize=7)
        distance = row["distance"]
        ax.set_title(name + (f"  d={distance:.2f}" if distance is not None else ""), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)


def figure_mask_to_image(
    real_items: dict[str, tuple[Path, Path]], generated: Path, n: int = 3
) -> bytes | None:
    """For ``n`` test cases, the same axial slice of the real image and of the image generated from its mask,
    each bare and with the mask overlaid semi-transparently."""
    from foscu.data.layout import case_files
    from foscu.data.nifti import read_nifti
    from foscu.viz import overlay_rgb, view_center

    plt = _pyplot()
    images = case_files(generated, "images")
    chosen = [c for c in sorted(real_items) if f"{c}_synth" in images][:n]
    if not chosen:
        return None
    fig, axes = plt.subplots(
        len(chosen), 4, figsize=(12, 3.1 * len(chosen)), facecolor="black", squeeze=False
    )
    for row, case in enumerate(chosen):
        real = read_nifti(real_items[case][0]).array
        label = read_nifti(real_items[case][1], label=True).array
        synth = read_nifti(images[f"{case}_synth"]).array
        z = view_center(label, label.shape)[2]
        panels = [
            (real, None, f"{case}: real"),
            (real, label, "real + mask"),
            (synth, None, "generated from the mask"),
            (synth, label, "generated + mask"),
        ]
        for col, (image, mask, title) in enumerate(panels):
            ax = axes[row, col]
            ax.axis("off")
            rgb = overlay_rgb(
                np.rot90(image[:, :, z]), np.rot90(mask[:, :, z]) if mask is not None else None, 0.35
            )
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(f"{title} (z={z})", color="white", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)
