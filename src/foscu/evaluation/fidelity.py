"""Is the synthetic data varied? Diversity of synthetic volumes.

Pair fidelity (a real-only segmenter's Dice on each synthetic image against the label it was generated
from) is a segmentation score, computed with evaluation/segmentation_metrics, not here.

- Diversity: mean MS-SSIM (MONAI) over random pairs of synthetic volumes, beside the same figure for real
  volumes; near 1 means the generator repeats itself (mode collapse).

The memorization audit (nearest training case of each synthetic image and label) is in
evaluation/memorization.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ms_ssim_settings(shape: Sequence[int]) -> tuple[int, list[float]]:
    """Kernel size and scale weights that fit ``shape``: a 7-voxel kernel (3 below 14 voxels a side) and as
    many of MONAI's five scale weights (renormalised) as the smallest side holds."""
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    side = min(shape)
    kernel = 7 if side >= 7 * 2 else 3
    levels = len(weights)
    while levels > 1 and not _scales_fit(side, kernel, levels):
        levels -= 1
    used = weights[:levels]
    return kernel, [w / sum(used) for w in used]


def _scales_fit(side: int, kernel: int, levels: int) -> bool:
    """Whether ``levels`` scales fit a side of ``side`` voxels: at least ``(kernel - 1) * 2**(levels - 1) + 1``
    voxels, what MONAI's compute_ms_ssim requires (``side // (levels - 1)**2 > kernel - 1``), and the kernel
    still fits the coarsest scale after ``levels - 1`` halvings."""
    return (
        side >= (kernel - 1) * 2 ** (levels - 1) + 1
        and side // max(1, levels - 1) ** 2 > kernel - 1
        and side // 2 ** (levels - 1) >= kernel
    )


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM between two 3D volumes in [0, 1] (MONAI), with as many scales as the size allows."""
    import torch
    from monai.metrics.regression import compute_ms_ssim

    kernel, weights = _ms_ssim_settings(a.shape)
    ta = torch.as_tensor(a, dtype=torch.float32)[None, None]  # (1, 1, X, Y, Z)
    tb = torch.as_tensor(b, dtype=torch.float32)[None, None]
    value = compute_ms_ssim(ta, tb, spatial_dims=3, data_range=1.0, kernel_size=kernel, weights=weights)
    return float(value.mean())


def diversity(volumes: Sequence[np.ndarray], max_pairs: int = 50, seed: int = 0) -> dict:
    """Mean and std of MS-SSIM over up to ``max_pairs`` random distinct pairs (lower = more diverse)."""
    n = len(volumes)
    if n < 2:
        return {"ms_ssim_mean": None, "ms_ssim_std": None, "pairs": 0}
    rng = np.random.default_rng(seed)
    all_pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = [all_pairs[k] for k in rng.permutation(len(all_pairs))[:max_pairs]]
    values = [ms_ssim(volumes[i], volumes[j]) for i, j in chosen]
    return {
        "ms_ssim_mean": float(np.mean(values)),
        "ms_ssim_std": float(np.std(values)),
        "pairs": len(values),
    }
