"""Tri-planar views with a coloured label overlay and legend (the paper's Fig. 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foscu.labels import LABELS, TUMOR

# one colour per foreground class, ITK-SNAP-like
LABEL_COLOURS: dict[str, tuple[float, float, float]] = {
    "liver": (0.95, 0.55, 0.15),
    "portal_vein": (0.2, 0.5, 1.0),
    "hepatic_vein": (0.1, 0.85, 0.85),
    "tumor": (0.95, 0.1, 0.2),
}


def view_center(label: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The slice indices to show: the tumor centroid, else the foreground's, else the volume centre."""
    if label is not None:
        for mask in (label == TUMOR, label > 0):
            if mask.any():
                return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))  # type: ignore[return-value]
    return tuple(s // 2 for s in shape)  # type: ignore[return-value]


def _planes(volume: np.ndarray, center: tuple[int, int, int]) -> list[tuple[str, np.ndarray]]:
    """Axial, coronal, sagittal slices of an (X, Y, Z) RAS volume, oriented for display (anterior up)."""
    x, y, z = center
    return [
        ("axial", np.rot90(volume[:, :, z])),  # (Y, X): anterior at the top
        ("coronal", np.rot90(volume[:, y, :])),  # (Z, X): superior at the top
        ("sagittal", np.rot90(volume[x, :, :])),  # (Z, Y)
    ]


def overlay_rgb(image: np.ndarray, label: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """Grey image in [0, 1] (2D) blended with label colours -> (H, W, 3)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if label is not None:
        for name, colour in LABEL_COLOURS.items():
            mask = label == LABELS[name]
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    return rgb


def tri_planar_figure(
    image: np.ndarray,
    label: np.ndarray | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    title: str | None = None,
    center: tuple[int, int, int] | None = None,
):
    """A matplotlib Figure with axial / coronal / sagittal views, physical aspect ratio, and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    center = center or view_center(label, image.shape)
    img_planes = _planes(image, center)
    lab_planes = _planes(label, center) if label is not None else [(n, None) for n, _ in img_planes]
    aspects = [spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1]]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4), facecolor="black")
    for ax, (name, img2d), (_, lab2d), aspect in zip(axes, img_planes, lab_planes, aspects, strict=False):
        ax.imshow(overlay_rgb(img2d, lab2d), aspect=aspect, interpolation="nearest")
        ax.set_title(name, color="white", fontsize=10)
        ax.axis("off")
    if label is not None:
        present = [n for n in LABEL_COLOURS if (label == LABELS[n]).any()]
        handles = [Patch(color=LABEL_COLOURS[n], label=n.replace("_", " ")) for n in present]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=max(1, len(handles)),
            frameon=False,
            labelcolor="white",
            fontsize=9,
        )
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return fig


def save_view(volume_path: Path, out: Path, label_path: Path | None = None, title: str | None = None) -> Path:
    """``foscu view``: read a volume (and label), write a tri-planar PNG atomically."""
    import matplotlib.pyplot as plt

    from foscu.data.nifti import read_nifti
    from foscu.errors import InputError
    from foscu.runs import atomic_path

    image = read_nifti(volume_path)
    label = None
    if label_path is not None:
        label_vol = read_nifti(label_path, label=True)
        if label_vol.array.shape != image.array.shape:
            raise InputError(
                label_path, f"shape {label_vol.array.shape} differs from the volume's {image.array.shape}"
            )
        label = label_vol.array
    fig = tri_planar_figure(image.array, label, image.spacing, title or Path(volume_path).name)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, facecolor="black", format="png")
    plt.close(fig)
    return Path(out)
