"""Geometry the phantom is built from: smooth random fields, implicit ellipsoids and tapering vessel trees
rasterised from line segments."""

from __future__ import annotations

import numpy as np


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], coarse: int) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field: Gaussian coefficients on a coarse lattice, blended by
    separable Gaussian radial bases (three small matrix products; a cubic ``ndimage.zoom`` cost 6x more)."""
    lattice = (coarse, coarse, max(2, coarse // 2 + 1))
    coeffs = rng.standard_normal(lattice)
    field = coeffs
    for axis, (n, m) in enumerate(zip(shape, lattice, strict=False)):
        centres = np.linspace(-0.15, 1.15, m)
        position = (np.arange(n) + 0.5) / n
        basis = np.exp(-0.5 * ((position[:, None] - centres[None, :]) / (1.3 / (m - 1))) ** 2)
        basis /= np.sqrt((basis**2).sum(axis=1, keepdims=True))  # unit variance at every voxel
        field = np.moveaxis(np.tensordot(basis, field, axes=(1, axis)), 0, axis)
    return field.astype(np.float32)


def ellipsoid(x, y, z, center, radii) -> np.ndarray:
    """Implicit ellipsoid: < 1 inside."""
    return (
        ((x - center[0]) / radii[0]) ** 2
        + ((y - center[1]) / radii[1]) ** 2
        + ((z - center[2]) / radii[2]) ** 2
    )


def segments_tree(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
    depth: int,
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """A branching, tapering vessel tree: (p0, p1, r0, r1) segments in mm, children at random angles."""
    segments = []
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length
    r_end = radius * 0.78
    segments.append((start, end, radius, r_end))
    if depth > 0 and r_end > 0.7:
        n_children = 2 if depth > 1 else int(rng.integers(2, 4))
        for _ in range(n_children):
            jitter = rng.standard_normal(3)
            jitter -= jitter.dot(direction) * direction
            child_dir = direction + 0.65 * jitter / (np.linalg.norm(jitter) + 1e-6)
            segments += segments_tree(
                rng, end, child_dir, length * rng.uniform(0.6, 0.8), r_end * rng.uniform(0.7, 0.85), depth - 1
            )
    return segments


def rasterise_segments(
    segments, coords_mm: tuple[np.ndarray, np.ndarray, np.ndarray], spacing: np.ndarray, shape
) -> np.ndarray:
    """Boolean mask of voxels within the tapered radius of any segment (bounding-box local work only)."""
    mask = np.zeros(shape, dtype=bool)
    ax, ay, az = coords_mm
    for p0, p1, r0, r1 in segments:
        rmax = max(r0, r1)
        lo = np.minimum(p0, p1) - rmax
        hi = np.maximum(p0, p1) + rmax
        i0 = np.clip(np.floor((lo - [ax[0], ay[0], az[0]]) / spacing).astype(int), 0, np.array(shape) - 1)
        i1 = np.clip(np.ceil((hi - [ax[0], ay[0], az[0]]) / spacing).astype(int) + 1, 0, np.array(shape))
        if np.any(i1 <= i0):
            continue
        px = ax[i0[0] : i1[0], None, None]
        py = ay[None, i0[1] : i1[1], None]
        pz = az[None, None, i0[2] : i1[2]]
        d = p1 - p0
        dd = float(d.dot(d)) + 1e-9
        t = np.clip(((px - p0[0]) * d[0] + (py - p0[1]) * d[1] + (pz - p0[2]) * d[2]) / dd, 0.0, 1.0)
        dist2 = (px - p0[0] - t * d[0]) ** 2 + (py - p0[1] - t * d[1]) ** 2 + (pz - p0[2] - t * d[2]) ** 2
        r = r0 + (r1 - r0) * t
        mask[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]] |= dist2 <= r**2
    return mask
