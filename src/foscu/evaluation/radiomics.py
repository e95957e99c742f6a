"""Radiomics-style hand-crafted features of 2D slices: the ``frd`` feature set of the 2.5D Fréchet distance.

First-order intensity statistics, gray-level co-occurrence texture, gradient magnitude and local binary
patterns, computed with numpy (no download, no network); :mod:`foscu.evaluation.fid` turns them into a
Fréchet radiomics-style distance (FRD).
"""

from __future__ import annotations

import numpy as np

_GLCM_LEVELS = 16
_HIST_BINS = 32


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray, fallback: float = 0.0) -> np.ndarray:
    out = np.full(np.broadcast(numerator, denominator).shape, fallback, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 1e-12)
    return out


def _first_order(flat: np.ndarray) -> np.ndarray:
    """Mean, std, 10/25/50/75/90th percentiles, skewness, excess kurtosis, histogram entropy: (n, 10)."""
    n = len(flat)
    mean = flat.mean(axis=1)
    std = flat.std(axis=1)
    centred = flat - mean[:, None]
    skewness = _safe_ratio((centred**3).mean(axis=1), std**3)
    kurtosis = _safe_ratio((centred**4).mean(axis=1), std**4, fallback=3.0) - 3.0
    percentiles = np.percentile(flat, [10, 25, 50, 75, 90], axis=1).T
    bins = np.minimum((flat * _HIST_BINS).astype(np.int64), _HIST_BINS - 1)
    counts = np.bincount((bins + _HIST_BINS * np.arange(n)[:, None]).ravel(), minlength=n * _HIST_BINS)
    p = counts.reshape(n, _HIST_BINS) / flat.shape[1]
    entropy = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=1)
    return np.column_stack([mean, std, percentiles, skewness, kurtosis, entropy])


def _glcm_features(levels: np.ndarray, distance: int) -> np.ndarray:
    """Contrast, homogeneity, energy, correlation of the symmetric co-occurrence matrix, mean of 4 directions.

    ``levels``: (n, H, W) gray levels in [0, _GLCM_LEVELS). Returns (n, 4).
    """
    n, height, width = levels.shape
    size = _GLCM_LEVELS
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    per_direction = []
    for dy, dx in ((0, distance), (distance, 0), (distance, distance), (distance, -distance)):
        if dy >= height or abs(dx) >= width:
            continue
        x0, x1 = max(0, -dx), width - max(0, dx)
        first = levels[:, : height - dy, x0:x1]
        second = levels[:, dy:, x0 + dx : x1 + dx]
        codes = (np.arange(n)[:, None, None] * size + first) * size + second
        glcm = np.bincount(codes.ravel(), minlength=n * size * size).reshape(n, size, size).astype(np.float64)
        glcm = glcm + glcm.transpose(0, 2, 1)
        glcm /= glcm.sum(axis=(1, 2), keepdims=True)
        contrast = (glcm * (i - j) ** 2).sum(axis=(1, 2))
        homogeneity = (glcm / (1.0 + (i - j) ** 2)).sum(axis=(1, 2))
        energy = np.sqrt((glcm**2).sum(axis=(1, 2)))
        mu = (glcm * i).sum(axis=(1, 2))  # equal for rows and columns: the matrix is symmetric
        var = (glcm * (i - mu[:, None, None]) ** 2).sum(axis=(1, 2))
        cov = (glcm * (i - mu[:, None, None]) * (j - mu[:, None, None])).sum(axis=(1, 2))
        correlation = _safe_ratio(cov, var, fallback=1.0)  # a uniform slice correlates perfectly
        per_direction.append(np.column_stack([contrast, homogeneity, energy, correlation]))
    if not per_direction:
        return np.zeros((n, 4))
    return np.mean(per_direction, axis=0)


def _lbp_histogram(slices: np.ndarray) -> np.ndarray:
    """Rotation-invariant local binary pattern: share of pixels with k of 8 neighbours >= centre, k=0..8."""
    n = len(slices)
    centre = slices[:, 1:-1, 1:-1]
    height, width = centre.shape[1:]
    count = np.zeros(centre.shape, dtype=np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                count += slices[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] >= centre
    hist = np.bincount((count + 9 * np.arange(n)[:, None, None]).ravel(), minlength=9 * n).reshape(n, 9)
    return hist / max(height * width, 1)


def radiomics_features(slices: np.ndarray) -> np.ndarray:
    """Radiomics-style hand-crafted features of 2D slices in [0, 1]: (n, H, W) -> (n, 30).

    10 first-order intensity statistics, 4 co-occurrence texture features (16 gray levels) at distances 1
    and 2, mean/std/90th percentile of the gradient magnitude, and a 9-bin local-binary-pattern histogram.
    Slices need at least 3 voxels a side.
    """
    slices = np.clip(np.asarray(slices, dtype=np.float64), 0.0, 1.0)
    n = len(slices)
    first_order = _first_order(slices.reshape(n, -1))
    levels = np.minimum((slices * _GLCM_LEVELS).astype(np.int64), _GLCM_LEVELS - 1)
    texture = [_glcm_features(levels, d) for d in (1, 2)]
    grad_y, grad_x = np.gradient(slices, axis=(1, 2))
    magnitude = np.hypot(grad_y, grad_x).reshape(n, -1)
    gradient = np.column_stack([magnitude.mean(1), magnitude.std(1), np.percentile(magnitude, 90, axis=1)])
    return np.column_stack([first_order, *texture, gradient, _lbp_histogram(slices)])
