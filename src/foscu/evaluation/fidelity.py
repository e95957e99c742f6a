"""Is the synthetic data varied, and is it safe? Diversity and a memorization audit of synthetic volumes.

Pair fidelity (a real-only segmenter's Dice on each synthetic image against the label it was generated
from) is a segmentation score, computed with evaluation/segmentation_metrics, not here.

- Diversity: mean MS-SSIM (MONAI) over random pairs of synthetic volumes, beside the same figure for real
  volumes; near 1 means the generator repeats itself (mode collapse).
- Memorization: each synthetic volume's nearest real training case by Pearson correlation; a sample closer
  to a training case than nearly every held-out real patient (validation/test, never trained on) is to
  theirs is flagged as a near copy — synthetic data should protect patients, not leak them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def _standardise(volume: np.ndarray, factor: int) -> np.ndarray:
    """Block-average by ``factor`` (tolerance to noise and small shifts), then zero mean, unit norm."""
    if factor > 1:
        crop = [s - s % factor for s in volume.shape]
        v = volume[: crop[0], : crop[1], : crop[2]]
        v = v.reshape(crop[0] // factor, factor, crop[1] // factor, factor, crop[2] // factor, factor).mean(
            (1, 3, 5)
        )
    else:
        v = volume
    flat = v.astype(np.float64).ravel()
    flat -= flat.mean()
    norm = np.linalg.norm(flat)
    return flat / norm if norm > 0 else flat


def memorization_audit(
    synthetic: Mapping[str, np.ndarray],
    real_training: Mapping[str, np.ndarray],
    held_out: Mapping[str, np.ndarray],
    percentile: float = 99.0,
    downsample: int = 2,
) -> dict:
    """Nearest real training case per synthetic volume (Pearson correlation) and a near-copy flag.

    The threshold is the ``percentile`` (default 99th, linear interpolation) of the held-out real cases'
    correlations with their nearest training case: held-out patients were never trained on, so they show
    how close a genuinely new patient comes to the training set. A synthetic volume above it is closer to
    a training patient than 99 % of new patients are, and a novel sample is flagged about 1 % of the time.
    A percentile, not the maximum, so one near-duplicate pair of patients cannot disable the audit.

    Args:
        synthetic: sample id -> (X, Y, Z) volume.
        real_training: case id -> volume of the training split the generator learned from (>= 1).
        held_out: case id -> volume of the validation and test splits (>= 1), same shape.
        percentile: in (0, 100]; 100 is the held-out maximum.
        downsample: block-averaging factor before the correlation (tolerance to noise and small shifts).
    """
    real_ids = list(real_training)
    if not real_ids:
        raise ValueError("the memorization audit needs at least one real training case")
    if not held_out:
        raise ValueError("the memorization audit needs at least one held-out (validation/test) case")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    real = np.stack([_standardise(real_training[k], downsample) for k in real_ids])  # (R, V)
    held = np.stack([_standardise(v, downsample) for v in held_out.values()])  # (H, V)
    held_nn = (held @ real.T).max(axis=1)  # (H,) each held-out case's nearest training correlation
    threshold = float(np.percentile(held_nn, percentile))
    samples = _nearest_training(synthetic, real, real_ids, threshold, downsample)
    return _audit_record(samples, held_nn, threshold, percentile, downsample)


def _nearest_training(
    synthetic: Mapping[str, np.ndarray],
    real: np.ndarray,
    real_ids: list[str],
    threshold: float,
    downsample: int,
) -> dict[str, dict[str, Any]]:
    """Per synthetic volume: its nearest training case (rows of ``real``), their correlation, near copy or not."""
    samples: dict[str, dict[str, Any]] = {}
    for sid, volume in synthetic.items():
        corr = real @ _standardise(volume, downsample)
        k = int(np.argmax(corr))
        samples[sid] = {
            "nearest_real_case": real_ids[k],
            "correlation": float(corr[k]),
            "near_copy": bool(corr[k] > threshold),
        }
    return samples


def _audit_record(
    samples: dict[str, dict[str, Any]],
    held_nn: np.ndarray,
    threshold: float,
    percentile: float,
    downsample: int,
) -> dict:
    nearest = [s["correlation"] for s in samples.values()]
    return {
        "method": f"Pearson correlation of {downsample}x block-averaged volumes; near copy = above the "
        f"{percentile:g}th percentile of held-out (validation/test) real cases' correlations with their "
        "nearest training case (a new patient is flagged with probability about "
        f"{100 - percentile:g} %)",
        "threshold": threshold,
        "percentile": percentile,
        "held_out_nearest_training": {
            "n": len(held_nn),
            "mean": float(held_nn.mean()),
            "max": float(held_nn.max()),
            "above_threshold": int((held_nn > threshold).sum()),
        },
        "synthetic_nearest_real": {
            "mean": float(np.mean(nearest)) if nearest else None,
            "max": float(np.max(nearest)) if nearest else None,
        },
        "near_copies": int(sum(s["near_copy"] for s in samples.values())),
        "samples": samples,
    }
