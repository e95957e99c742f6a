"""Lesion synthesis before and after: a real case and its edited copy at the slice through an inserted tumor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foscu.figures import _pyplot, png_bytes
from foscu.labels import TUMOR


def edit_slice(label: np.ndarray, edited: np.ndarray, record: dict) -> int:
    """The axial slice to show: through the first placed tumor's centre, else through the most changed voxels."""
    for edit in record.get("edits", []):
        if "center_voxel" in edit:
            return int(round(edit["center_voxel"][2]))
    changed = edited != label
    if changed.any():
        return int(np.argmax(changed.sum(axis=(0, 1))))
    return label.shape[2] // 2


def _title(record: dict) -> str:
    kinds = [f"{e['kind']} {e['volume_ml']:.1f} mL" for e in record.get("edits", []) if "volume_ml" in e]
    return ", ".join(kinds) or "no tumor placed"


def before_after_png(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]]) -> bytes:
    """One row per edited case (case id, real image, real label, edited image, edited label, its record):
    real, real + mask, edited, edited + mask and |edited - real|, at the slice through an inserted tumor."""
    from foscu.viz import overlay_rgb

    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 5, figsize=(15, 3.3 * len(rows)), facecolor="black", squeeze=False)
    for row, (case_id, real, label, image, edited, record) in enumerate(rows):
        z = edit_slice(label, edited, record)
        diff = np.abs(image - real)[:, :, z]
        panels: list[tuple[Any, str]] = [
            (overlay_rgb(np.rot90(real[:, :, z]), None), f"{record.get('source', case_id)}: real (z={z})"),
            (overlay_rgb(np.rot90(real[:, :, z]), np.rot90(label[:, :, z]), 0.35), "real + mask"),
            (overlay_rgb(np.rot90(image[:, :, z]), None), f"{case_id}: edited"),
            (overlay_rgb(np.rot90(image[:, :, z]), np.rot90(edited[:, :, z]), 0.35), _title(record)),
        ]
        for col, (rgb, title) in enumerate(panels):
            axes[row, col].imshow(rgb, interpolation="nearest")
            axes[row, col].set_title(title, color="white", fontsize=9)
        axes[row, 4].imshow(np.rot90(diff), cmap="magma", vmin=0, vmax=max(float(diff.max()), 1e-6))
        new = np.rot90(((edited == TUMOR) & (label != TUMOR))[:, :, z])
        if new.any():
            axes[row, 4].contour(new, levels=[0.5], colors="cyan", linewidths=0.6)
        axes[row, 4].set_title("|edited - real| (cyan: new tumor)", color="white", fontsize=9)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)


FIGURE = "before_after.png"


def write_before_after(out: Path, n: int = 3) -> Path | None:
    """``OUT/before_after.png`` for the first ``n`` cases of a ``foscu lesions`` set that received a tumor,
    read from its files (``samples.json`` names each case's source in the prepared set); None when none did."""
    import json

    from foscu.data.nifti import read_nifti
    from foscu.data.prepare import read_prepared
    from foscu.runs import atomic_path

    out = Path(out)
    record = json.loads((out / "samples.json").read_text())
    sources = {e["case_id"]: e for e in read_prepared(Path(record["data"])).datalist["training"]}
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]] = []
    for case_id, case in record["cases"].items():
        if len(rows) == n:
            break
        if not any("volume_ml" in e for e in case["edits"]):
            continue
        real = sources[case["source"]]
        rows.append(
            (
                case_id,
                read_nifti(real["image"]).array,
                read_nifti(real["label"], label=True).array,
                read_nifti(out / "imagesTr" / f"{case_id}_0000.nii.gz").array,
                read_nifti(out / "labelsTr" / f"{case_id}.nii.gz", label=True).array,
                case,
            )
        )
    if not rows:
        return None
    with atomic_path(out / FIGURE) as png:
        png.write_bytes(before_after_png(rows))
    return out / FIGURE
