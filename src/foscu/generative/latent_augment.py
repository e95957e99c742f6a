"""Augmented copies of the training cases for the latent cache (``<ldm or controlnet>.augment_copies``).

With 42 training cases and one fixed latent mean per case, an LDM's velocity field can transport noise
onto the training points (the proof run: 8 of 36 samples near copies). Each case's copy k >= 1 is the case
under a small random affine, drawn from a seed of (run seed, case index, k) alone, so the label cache and
the image cache deform copy k of a case identically (the ControlNet's pairs stay aligned) and a rebuilt
cache is the same. Copy 0 is the case itself: ``augment_copies: 0`` is the cache of before.

The affine is drawn in millimetres (the prepared grid's spacing), so a rotation is a rotation of the body
and not a shear of the anisotropic voxel grid: a rotation about each axis uniform in +-ROTATION_DEG, one
isotropic scale in 1 +- SCALE and a shift of up to SHIFT of the ROI's extent per axis. No flip: a
mirrored liver sits on the wrong side of the body, which no patient has. Images are resampled trilinearly,
labels by nearest neighbour; both repeat the border voxels where the deformation looks outside the ROI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from foscu.engine.loop import _mix

ROTATION_DEG = 10.0
SCALE = 0.08
SHIFT = 0.05


def settings(copies: int, seed: int) -> dict[str, float | int]:
    """What the cache records of its augmentation (a cache made with other settings is rebuilt)."""
    return {"copies": copies, "seed": seed, "rotation_deg": ROTATION_DEG, "scale": SCALE, "shift": SHIFT}


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(3,) radians about the X, Y and Z axes -> (3, 3) rotation R_z R_y R_x."""
    (cx, cy, cz), (sx, sy, sz) = angles.cos().tolist(), angles.sin().tolist()
    r_x = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    r_y = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    r_z = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return r_z @ r_y @ r_x


def draw_affine(seed: int, case: int, copy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy ``copy`` of training case ``case``: (3, 3) matrix and (3,) shift as a fraction of the ROI's
    half extent, in (X, Y, Z) millimetre axes; copy 0 is the identity."""
    if copy == 0:
        return torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    generator = torch.Generator().manual_seed(_mix(seed, case, copy))
    u = torch.rand(7, generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1)
    angles = u[:3] * math.radians(ROTATION_DEG)
    scale = 1.0 + SCALE * float(u[3])
    return _rotation(angles) * scale, u[4:] * 2 * SHIFT  # a shift of SHIFT x extent = 2 SHIFT half extents


def _theta(
    matrix: torch.Tensor, shift: torch.Tensor, shape: Sequence[int], spacing: Sequence[float]
) -> torch.Tensor:
    """The (3, 4) ``affine_grid`` matrix of a millimetre affine about the ROI's centre.

    ``affine_grid`` maps normalised output coordinates u to input ones (align_corners=False: u = -1 and 1
    are the outer voxel faces), in the order (last, middle, first) axis = (Z, Y, X). With H the half
    extents in mm, p_in = A p_out + t becomes u_in = H^-1 A H u_out + t / H.
    """
    half = torch.tensor([s * d / 2 for s, d in zip(shape, spacing, strict=True)], dtype=torch.float64)
    normalised = (matrix * half[None, :]) / half[:, None]  # H^-1 A H
    order = [2, 1, 0]  # (X, Y, Z) -> affine_grid's (Z, Y, X)
    theta = torch.zeros(3, 4, dtype=torch.float64)
    theta[:, :3] = normalised[order][:, order]
    theta[:, 3] = shift[order]
    return theta.float()


def deform(volumes: torch.Tensor, thetas: torch.Tensor, label: bool) -> torch.Tensor:
    """Resample (B, C, X, Y, Z) images (trilinear) or (B, X, Y, Z) labels (nearest) under (B, 3, 4) thetas."""
    x = volumes[:, None] if label else volumes
    grid = F.affine_grid(thetas, list(x.shape), align_corners=False)
    out = F.grid_sample(
        x.float(), grid, mode="nearest" if label else "bilinear", padding_mode="border", align_corners=False
    )
    return out[:, 0].to(volumes.dtype) if label else out


def augment_batch(
    volumes: torch.Tensor,
    first_case: int,
    copy: int,
    seed: int,
    spacing: Sequence[float],
    label: bool,
) -> torch.Tensor:
    """Copy ``copy`` of the training cases ``first_case``, ``first_case + 1``, ... held in ``volumes``
    ((B, C, X, Y, Z) images or (B, X, Y, Z) labels); copy 0 returns ``volumes`` unchanged."""
    if copy == 0:
        return volumes
    shape = volumes.shape[-3:]
    thetas = torch.stack(
        [_theta(*draw_affine(seed, first_case + j, copy), shape, spacing) for j in range(len(volumes))]
    )
    return deform(volumes, thetas, label)


def copy_ids(case_ids: list[str], copies: int) -> list[str]:
    """The cache's row names: the cases, then each augmented copy of them (``<case>~aug<k>``)."""
    return [*case_ids, *(f"{c}~aug{k}" for k in range(1, copies + 1) for c in case_ids)]


def training_labels(
    labels: torch.Tensor, copies: int, seed: int, spacing: Sequence[float], batch_size: int = 8
) -> torch.Tensor:
    """(N, X, Y, Z) labels -> (N (copies + 1), X, Y, Z): the cache's rows, copy by copy (the ControlNet's
    labels for an augmented image cache)."""
    rows = [labels]
    for k in range(1, copies + 1):
        rows += [
            augment_batch(labels[s : s + batch_size], s, k, seed, spacing, label=True)
            for s in range(0, len(labels), batch_size)
        ]
    return torch.cat(rows)
