"""Edit a real label: tumors added, moved or resized inside the liver (the mask half of lesion synthesis).

Counts and sizes come from the real tumors of the training split (``TumorPool``: the 26-connected tumor
components of every training label, their volumes in mL, and the component count of every tumor-holding case).
A tumor is a smooth blob: the ``k`` voxels with the lowest value of a randomly deformed ellipsoid's implicit
function (``phantom_shapes.ellipsoid`` plus a smooth random field), so its volume is exactly the drawn one in
voxels. It is placed only where it lies fully inside the liver and one voxel away from vessels, other tumors
and the liver's border (the liver eroded by the 26-neighbourhood). Every draw comes from one
``np.random.Generator``: the same seed gives the same edit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from foscu.data.phantom_shapes import ellipsoid, smooth_field
from foscu.labels import LIVER, TUMOR

_CUBE = np.ones((3, 3, 3), dtype=bool)
PLACEMENT_TRIES = 40  # centres tried per drawn volume
VOLUME_TRIES = 5  # volumes drawn per tumor before it is given up (recorded as skipped)
MOVE_PROBABILITY = 0.5  # a case with tumors: its tumors moved or resized instead of new ones added


@dataclass(frozen=True)
class TumorPool:
    """The real tumors edits are drawn from: component volumes (mL) and tumors per tumor-holding case."""

    volumes_ml: tuple[float, ...]
    counts: tuple[int, ...]


def tumor_components(label: np.ndarray) -> tuple[np.ndarray, int]:
    """The 26-connected components of the tumor class: (component map, count)."""
    from scipy import ndimage

    components, n = ndimage.label(label == TUMOR, structure=_CUBE)
    return components, int(n)


def tumor_pool(labels: Iterable[np.ndarray], spacing: Sequence[float]) -> TumorPool:
    """Every tumor component's volume (mL) and every tumor-holding case's component count."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    volumes: list[float] = []
    counts: list[int] = []
    for label in labels:
        components, n = tumor_components(label)
        if n:
            volumes += [float(v) * voxel_ml for v in np.bincount(components.ravel())[1:]]
            counts.append(n)
    return TumorPool(tuple(volumes), tuple(counts))


def blob(
    rng: np.random.Generator,
    allowed: np.ndarray,
    center: np.ndarray,
    n_voxels: int,
    spacing: Sequence[float],
) -> np.ndarray | None:
    """A smooth tumor of exactly ``n_voxels`` allowed voxels around ``center``: the lowest values, among
    ``allowed`` voxels, of a deformed ellipsoid's implicit function (random axis ratios, a smooth random field
    of amplitude 0.35) — flattened where it meets the edge of ``allowed``. None when too few voxels are allowed."""
    shape = allowed.shape
    spacing_mm = np.asarray(spacing, dtype=float)
    radius_mm = (3.0 * n_voxels * float(np.prod(spacing_mm)) / (4.0 * np.pi)) ** (1.0 / 3.0)
    radii = radius_mm * rng.uniform(0.75, 1.25, size=3)
    axes = [(np.arange(n) - c) * s for n, c, s in zip(shape, center, spacing_mm, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    f = ellipsoid(x, y, z, (0.0, 0.0, 0.0), radii) + 0.35 * smooth_field(rng, shape, 6)
    f = np.where(allowed, f, np.inf).ravel()
    lowest = np.argpartition(f, n_voxels - 1)[:n_voxels]
    if not np.isfinite(f[lowest]).all():
        return None
    out = np.zeros(shape, dtype=bool)
    out.flat[lowest] = True
    return out


def _room(allowed: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from each allowed voxel to the nearest voxel that is not allowed."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(allowed, sampling=spacing)


def place_tumor(
    rng: np.random.Generator,
    allowed: np.ndarray,
    volume_ml: float,
    spacing: Sequence[float],
    near: np.ndarray | None = None,
) -> np.ndarray | None:
    """A tumor of ``volume_ml`` lying fully inside ``allowed``, or None when none fits in the tries.

    Centres are drawn among allowed voxels with room for the tumor's radius (the roomiest ones when none
    has it); ``near``: a centre tried first (a resized tumor stays where it was when it fits).
    """
    from scipy import ndimage

    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_voxels = max(1, int(round(volume_ml / voxel_ml)))
    if n_voxels > int(allowed.sum()):
        return None
    room = _room(allowed, spacing)
    radius_mm = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    candidates = np.argwhere(room >= 0.8 * radius_mm)
    if not len(candidates):
        candidates = np.argwhere(room >= 0.9 * room.max())
    for attempt in range(PLACEMENT_TRIES):
        if attempt == 0 and near is not None:
            center = near
        else:
            center = candidates[rng.integers(len(candidates))]
        tumor = blob(rng, allowed, np.asarray(center, dtype=float), n_voxels, spacing)
        if tumor is not None and ndimage.label(tumor, structure=_CUBE)[1] == 1:
            return tumor
    return None


def _allowed(label: np.ndarray) -> np.ndarray:
    """Where a tumor may lie: liver voxels whose whole 26-neighbourhood is liver."""
    from scipy import ndimage

    return ndimage.binary_erosion(label == LIVER, structure=_CUBE)


def _record(kind: str, tumor: np.ndarray, voxel_ml: float, extra: dict) -> dict:
    center = [round(float(c), 1) for c in np.argwhere(tumor).mean(axis=0)]
    volume = round(float(tumor.sum()) * voxel_ml, 4)
    return {"kind": kind, "volume_ml": volume, "center_voxel": center, **extra}


def _insert(
    rng: np.random.Generator,
    out: np.ndarray,
    pool: TumorPool,
    spacing: Sequence[float],
    kind: str,
    volume_ml: float | None = None,
    near: np.ndarray | None = None,
    extra: dict | None = None,
) -> dict:
    """Place one tumor into ``out`` (in place): ``volume_ml`` or one drawn from the pool; ``extra``: more
    fields for its record."""
    extra = extra or {}
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for _ in range(VOLUME_TRIES):
        target = float(rng.choice(pool.volumes_ml)) if volume_ml is None else volume_ml
        tumor = place_tumor(rng, _allowed(out), target, spacing, near)
        if tumor is not None:
            out[tumor] = TUMOR
            return _record(kind, tumor, voxel_ml, extra)
        if volume_ml is not None:  # a moved tumor keeps its volume: there is nothing else to draw
            break
    return {"kind": kind, "skipped": "no room in the liver", **extra}


def edit_mask(
    label: np.ndarray, spacing: Sequence[float], pool: TumorPool, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """A copy of ``label`` with tumors added (count and volumes drawn from ``pool``) or, for a case with
    tumors (with probability ``MOVE_PROBABILITY``), its tumors moved (same volume, another place) or resized
    (a volume from the pool, at its old place when it fits); a removed tumor's voxels become liver.

    Returns the edited label and one record per tumor edit (kind, volume in mL, centre voxel).
    """
    if not pool.volumes_ml:
        raise ValueError("the tumor pool is empty: no real tumor to draw sizes from")
    out = label.copy()
    voxel_ml = float(np.prod(spacing)) / 1000.0
    components, n = tumor_components(label)
    edits: list[dict] = []
    if n and rng.random() < MOVE_PROBABILITY:
        # 1. take the case's own tumors out: their voxels become liver
        existing = [components == k for k in range(1, n + 1)]
        out[components > 0] = LIVER
        # 2. put each back elsewhere (moved) or at a drawn size (resized)
        for tumor in existing:
            old = {"from_volume_ml": round(float(tumor.sum()) * voxel_ml, 4)}
            if rng.random() < 0.5:
                volume = float(tumor.sum()) * voxel_ml
                edits.append(_insert(rng, out, pool, spacing, "moved", volume, extra=old))
            else:
                centre = np.round(np.argwhere(tumor).mean(axis=0)).astype(int)
                edits.append(_insert(rng, out, pool, spacing, "resized", None, centre, old))
        return out, edits
    # new tumors: as many as a real tumor-holding case has
    for _ in range(int(rng.choice(pool.counts))):
        edits.append(_insert(rng, out, pool, spacing, "added"))
    return out, edits
