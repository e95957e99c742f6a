"""The embedded data set: procedural hepatobiliary-phase abdominal MRI phantoms with labels.

Each case is drawn from its own random stream ``default_rng([seed, case_index])``, so case i is the
same whether 4 or 400 cases are generated. Anatomy is built from implicit shapes evaluated on
randomly deformed coordinates (so the liver is a smooth random deformation of a two-lobed template,
never an ellipsoid), plus branching, tapering vessel trees rasterised from line segments.

Intensities follow the hepatobiliary phase of a fat-suppressed T1 sequence (e.g. Gd-EOB-DTPA at 20 min):
the liver is the brightest solid organ; portal and hepatic veins and tumors are hypointense to it.
Acquisition effects: partial-volume blur, a smooth multiplicative bias field and Rician noise.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from foscu.data.layout import image_path, label_path, write_dataset_json
from foscu.data.nifti import write_nifti
from foscu.data.phantom_shapes import ellipsoid, rasterise_segments, segments_tree, smooth_field
from foscu.labels import BACKGROUND, HEPATIC_VEIN, LIVER, PORTAL_VEIN, TUMOR

# Tissue intensities (arbitrary units, liver = 1.0) of a fat-suppressed T1 hepatobiliary phase.
INTENSITY = {
    "air": 0.0,
    "fat": 0.22,
    "muscle": 0.38,
    "bone": 0.45,
    "marrow": 0.55,
    "spleen": 0.52,
    "kidney": 0.62,
    "stomach_wall": 0.45,
    "stomach_content": 0.12,
    "bowel": 0.3,
    "liver": 1.0,
    "vessel": 0.32,
    "tumor": 0.42,
    "ivc": 0.3,
    "aorta": 0.28,
}


@dataclass(frozen=True)
class PhantomCase:
    """One generated case: image (float32), label (uint8, labels.py map), affine and its tumor count."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    n_tumors: int


@dataclass(frozen=True)
class _Grid:
    """A case's sampling grid: voxel axes in mm (centred on the volume) and normalised coordinates in
    [-1, 1] over the field of view, plain and smoothly warped (the warp is drawn per case)."""

    shape: tuple[int, int, int]
    spacing: np.ndarray
    fov: np.ndarray
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray]
    plain: tuple[np.ndarray, np.ndarray, np.ndarray]  # X, Y, Z (sparse)
    warped: tuple[np.ndarray, np.ndarray, np.ndarray]  # Xw, Yw, Zw


def _grid(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> _Grid:
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    fov = np.asarray(shape) * spacing_arr
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing_arr, strict=False)]
    u = [(a / (f / 2)).astype(np.float32) for a, f in zip(axes, fov, strict=False)]
    X, Y, Z = np.meshgrid(*u, indexing="ij", sparse=True)
    coarse = 5
    warp = 0.09
    DX = warp * smooth_field(rng, shape, coarse)
    DY = warp * smooth_field(rng, shape, coarse)
    DZ = warp * smooth_field(rng, shape, coarse)
    return _Grid(shape, spacing_arr, fov, (axes[0], axes[1], axes[2]), (X, Y, Z), (X + DX, Y + DY, Z + DZ))


def _trunk(rng: np.random.Generator, g: _Grid) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Body outline, subcutaneous fat, muscle wall, spine, paraspinal muscles and aorta.

    Returns the image so far, the abdominal cavity, the spine's y and the spine/muscle/aorta mask (2D in
    x, y) the liver must leave free.
    """
    X, Y, Z = g.plain
    shape = g.shape
    # body outline, subcutaneous fat, muscle wall; constant through z with a gentle taper
    body_a = rng.uniform(0.84, 0.94)
    body_b = rng.uniform(0.62, 0.72)
    body = ((X / body_a) ** 2 + ((Y + 0.05) / body_b) ** 2) * (1.0 - 0.04 * Z) < 1.0
    fat_t = rng.uniform(0.05, 0.1)
    inner = ((X / (body_a - fat_t)) ** 2 + ((Y + 0.05) / (body_b - fat_t)) ** 2) < 1.0
    muscle_t = 0.05
    cavity = ((X / (body_a - fat_t - muscle_t)) ** 2 + ((Y + 0.05) / (body_b - fat_t - muscle_t)) ** 2) < 1.0
    body = np.broadcast_to(body, shape)
    inner = np.broadcast_to(inner, shape) & body
    cavity = np.broadcast_to(cavity, shape) & body

    image = np.zeros(shape, np.float32)
    image[body] = INTENSITY["fat"]
    image[inner] = INTENSITY["muscle"]
    image[cavity] = INTENSITY["bowel"]

    # spine (vertebral body + marrow) and paraspinal muscles, posterior midline
    spine_y = -body_b + fat_t + 0.17
    vert = ((X / 0.1) ** 2 + ((Y - spine_y) / 0.09) ** 2) < 1.0
    marrow = ((X / 0.075) ** 2 + ((Y - spine_y) / 0.065) ** 2) < 1.0
    para = (((np.abs(X) - 0.17) / 0.1) ** 2 + ((Y - spine_y + 0.05) / 0.08) ** 2) < 1.0
    image[np.broadcast_to(para, shape) & cavity] = INTENSITY["muscle"]
    image[np.broadcast_to(vert, shape)] = INTENSITY["bone"]
    image[np.broadcast_to(marrow, shape)] = INTENSITY["marrow"]
    aorta = ((X - 0.05) / 0.045) ** 2 + ((Y - spine_y - 0.15) / 0.045) ** 2 < 1.0
    image[np.broadcast_to(aorta, shape)] = INTENSITY["aorta"]
    return image, cavity, spine_y, vert | para | aorta


def _organs(rng: np.random.Generator, g: _Grid, image: np.ndarray, spine_y: float) -> None:
    """Kidneys, spleen and stomach, painted into ``image``."""
    Xw, Yw, Zw = g.warped
    kz = rng.uniform(-0.45, -0.2)
    for side, dz in ((-1, -0.08), (1, 0.0)):
        k = ellipsoid(Xw, Yw, Zw, (side * 0.33, spine_y + 0.08, kz + dz), (0.12, 0.09, 0.32)) < 1.0
        image[k] = INTENSITY["kidney"]
    spleen = ellipsoid(Xw, Yw, Zw, (0.55, spine_y + 0.2, rng.uniform(0.1, 0.3)), (0.13, 0.2, 0.3)) < 1.0
    image[spleen] = INTENSITY["spleen"]
    st_c = (0.28, rng.uniform(0.05, 0.2), rng.uniform(0.2, 0.4))
    stomach = ellipsoid(Xw, Yw, Zw, st_c, (0.2, 0.17, 0.25)) < 1.0
    lumen = ellipsoid(Xw, Yw, Zw, st_c, (0.16, 0.13, 0.21)) < 1.0
    image[stomach] = INTENSITY["stomach_wall"]
    image[lumen] = INTENSITY["stomach_content"]


def _liver(rng: np.random.Generator, g: _Grid, cavity: np.ndarray, solid: np.ndarray) -> np.ndarray:
    """The liver mask: right lobe + tapering left lobe, randomly scaled and deformed (an extra liver-local
    warp), inside the cavity and clear of ``solid`` (spine, paraspinal muscles, aorta)."""
    Xw, Yw, Zw = g.warped
    scale = rng.uniform(0.88, 1.1, size=3)
    lw = 0.1 * smooth_field(rng, g.shape, 4)
    rl_c = (-0.38 * scale[0], 0.0, 0.12)
    right_lobe = ellipsoid(Xw + lw, Yw, Zw, rl_c, (0.42 * scale[0], 0.42 * scale[1], 0.62 * scale[2]))
    # left lobe: flattened anterior wedge crossing the midline, thinner towards the patient's left
    taper = np.clip(1.0 - (Xw + 0.1) / 0.6, 0.25, 1.0)
    left_lobe = ellipsoid(Xw, Yw + lw, Zw, (0.02, 0.18, 0.28), (0.36 * scale[0], 0.2 * taper, 0.3 * taper))
    # visceral surface: the kidney / gallbladder impression carves the posterior-inferior face, and the
    # inferior border rises from the right lobe's tip towards the left lobe
    visceral = ellipsoid(Xw, Yw, Zw, (-0.2 * scale[0], -0.32, -0.28), (0.3, 0.22, 0.38)) < 1.0
    inferior = Zw > -0.55 * scale[2] + 0.55 * (Xw + 0.75)
    liver = ((right_lobe < 1.0) | (left_lobe < 1.0)) & ~visceral & inferior & cavity
    liver &= ~np.broadcast_to(solid, g.shape)
    return liver


def _vessels(
    rng: np.random.Generator,
    g: _Grid,
    image: np.ndarray,
    label: np.ndarray,
    liver: np.ndarray,
    spine_y: float,
) -> None:
    """Vessels in mm space, painted into ``image`` and ``label``: the IVC runs up behind the liver, hepatic
    veins drain into it superiorly, the portal vein enters at the hilum and branches to both lobes."""
    half = g.fov / 2
    ivc_xy = np.array([-0.12, spine_y + 0.17]) * half[:2]
    ivc_segment = (
        np.array([*ivc_xy, -half[2]]),
        np.array([*ivc_xy, half[2]]),
        0.045 * half[0],
        0.05 * half[0],
    )
    ivc = rasterise_segments([ivc_segment], g.axes_mm, g.spacing, g.shape)
    image[ivc] = INTENSITY["ivc"]
    label[ivc] = BACKGROUND
    r_main = 0.042 * half[0]
    hv_root = np.array([*ivc_xy, 0.45 * half[2]])
    hepatic_segments = []
    # right, middle and left hepatic veins fan out from the IVC under the dome, anteriorly and inferiorly
    for target in ((-0.8, 0.25, -0.3), (-0.25, 0.65, -0.3), (0.45, 0.55, -0.15)):
        direction = np.array(target) + rng.normal(0, 0.08, 3)
        hepatic_segments += segments_tree(
            rng, hv_root, direction * half, 0.36 * half[0], r_main * rng.uniform(0.75, 0.9), depth=4
        )
    pv_root = np.array([-0.2, -0.02, -0.15]) * half
    portal_segments = [(pv_root - np.array([0, 0.12, 0.25]) * half, pv_root, r_main * 1.2, r_main * 1.1)]
    for target in ((-0.8, 0.1, 0.25), (0.7, 0.5, 0.35)):  # right and left portal branches
        direction = np.array(target) + rng.normal(0, 0.08, 3)
        portal_segments += segments_tree(rng, pv_root, direction * half, 0.34 * half[0], r_main, depth=4)
    hilum_reach = ndimage.binary_dilation(liver, iterations=2)
    portal = rasterise_segments(portal_segments, g.axes_mm, g.spacing, g.shape)
    hepatic = rasterise_segments(hepatic_segments, g.axes_mm, g.spacing, g.shape)
    portal_in = portal & hilum_reach
    hepatic_in = hepatic & hilum_reach & ~ivc
    image[portal_in | hepatic_in] = INTENSITY["vessel"]
    label[portal_in] = PORTAL_VEIN
    label[hepatic_in] = HEPATIC_VEIN


def _tumors(
    rng: np.random.Generator, g: _Grid, image: np.ndarray, label: np.ndarray, liver: np.ndarray
) -> int:
    """About half the cases none, else 1-3 tumors of varied size inside the liver; returns how many landed."""
    n_tumors = 0 if rng.random() < 0.5 else int(rng.integers(1, 4))
    if not n_tumors:
        return 0
    placed = 0
    candidates = np.argwhere(ndimage.binary_erosion(liver, iterations=2))
    for _ in range(n_tumors):
        if len(candidates) == 0:
            break
        c_vox = candidates[rng.integers(len(candidates))]
        c_mm = np.array([g.axes_mm[i][c_vox[i]] for i in range(3)])
        radius_mm = rng.uniform(5.0, 20.0) * min(1.0, g.fov[0] / 240.0 * 1.5)
        radius_mm = max(radius_mm, 1.6 * g.spacing.max())
        radii = radius_mm * rng.uniform(0.8, 1.2, size=3)
        tx, ty, tz = np.meshgrid(
            *[a - c for a, c in zip(g.axes_mm, c_mm, strict=False)], indexing="ij", sparse=True
        )
        lobulation = 1.0 + 0.15 * np.sin(3 * np.arctan2(ty, tx) + rng.uniform(0, 6.28))
        inside = (tx / radii[0]) ** 2 + (ty / radii[1]) ** 2 + (tz / radii[2]) ** 2 < lobulation**2
        inside &= liver
        if not inside.any():
            continue
        # hypointense with a heterogeneous, slightly darker core and a faint rim
        depth = np.sqrt((tx / radii[0]) ** 2 + (ty / radii[1]) ** 2 + (tz / radii[2]) ** 2)
        tumor_int = INTENSITY["tumor"] * (0.8 + 0.25 * np.clip(depth, 0, 1))
        image[inside] = np.broadcast_to(tumor_int, g.shape)[inside]
        label[inside] = TUMOR
        placed += 1
    return placed


def _acquire(rng: np.random.Generator, g: _Grid, image: np.ndarray) -> np.ndarray:
    """Tissue texture (multiplicative, low amplitude), partial-volume blur, bias field, Rician noise."""
    texture = 1.0 + 0.04 * smooth_field(rng, g.shape, 12)
    image *= texture
    sigma_vox = 0.6 * np.array([1.0, 1.0, 1.0]) * (g.spacing.min() / g.spacing) + 0.25
    image = ndimage.gaussian_filter(image, sigma=sigma_vox)
    bias = np.exp(0.18 * smooth_field(rng, g.shape, 3))
    image *= bias
    noise_sigma = rng.uniform(0.02, 0.04)
    n1 = rng.standard_normal(g.shape, dtype=np.float32) * noise_sigma
    n2 = rng.standard_normal(g.shape, dtype=np.float32) * noise_sigma
    image = np.sqrt((image + n1) ** 2 + n2**2)
    return (image * 1000.0).astype(np.float32)  # scanner-like units


def generate_case(
    case_index: int,
    seed: int = 0,
    shape: tuple[int, int, int] = (160, 160, 64),
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
) -> PhantomCase:
    """Generate phantom case ``case_index`` of the set drawn with ``seed``.

    The affine is RAS+ (nibabel's convention), millimetres centred on the volume: +x toward the patient's
    right, +y anterior, +z superior, so the liver lies at world x > 0. The anatomy below is drawn with
    +x toward the patient's left (liver at x < 0) and the arrays are flipped along x at the end, which puts
    it where the RAS affine says. The field of view scales with ``shape * spacing``; anatomy is sized
    relative to a 240 x 240 x 192 mm abdomen, so small test shapes keep every structure.
    """
    rng = np.random.default_rng([seed, case_index])  # one stream, drawn in the order of the steps below
    g = _grid(rng, shape, spacing)
    image, cavity, spine_y, solid = _trunk(rng, g)
    _organs(rng, g, image, spine_y)
    liver = _liver(rng, g, cavity, solid)
    label = np.zeros(g.shape, np.uint8)
    label[liver] = LIVER
    image[liver] = INTENSITY["liver"]
    _vessels(rng, g, image, label, liver, spine_y)
    placed = _tumors(rng, g, image, label, liver)
    image = _acquire(rng, g, image)
    # drawn with +x toward the patient's left; flip x so that voxel index i sits at world x = axes_mm[0][i]
    # of the RAS+ affine (the axes are symmetric about 0: the flip mirrors x -> -x)
    image = np.ascontiguousarray(image[::-1])
    label = np.ascontiguousarray(label[::-1])
    affine = np.diag([*g.spacing, 1.0])
    affine[:3, 3] = [float(a[0]) for a in g.axes_mm]
    return PhantomCase(image=image, label=label, affine=affine, n_tumors=placed)


def case_id(case_index: int) -> str:
    """The case id of phantom ``case_index``: ``phantom_0007``."""
    return f"phantom_{case_index:04d}"


def _write_case(args: tuple[Path, int, int, tuple, tuple]) -> tuple[str, int]:
    out, index, seed, shape, spacing = args
    case = generate_case(index, seed, shape, spacing)
    cid = case_id(index)
    write_nifti(image_path(out, cid), case.image, case.affine)
    write_nifti(label_path(out, cid), case.label, case.affine, label=True)
    return cid, case.n_tumors


def write_phantom_set(
    out: Path,
    cases: int,
    shape: tuple[int, int, int] = (160, 160, 64),
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``cases`` phantoms to ``out`` in nnU-Net v2 raw layout; returns case id -> tumor count.

    The folder appears whole or not at all (built under a temporary name, then renamed).
    """
    import os

    from foscu.engine.tracking import progress_bar
    from foscu.errors import InputError
    from foscu.runs import atomic_folder

    if len(shape) != 3 or min(shape) < 8:
        raise InputError("--shape", f"every axis needs at least 8 voxels, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError("--spacing", f"spacing must be positive, got {tuple(spacing)}")

    workers = workers or min(cases, os.cpu_count() or 1)
    tumors: dict[str, int] = {}
    with atomic_folder(out) as tmp:
        jobs = [(tmp, i, seed, tuple(shape), tuple(spacing)) for i in range(cases)]
        with progress_bar("phantom", total=cases, enabled=progress) as advance:
            if workers > 1:
                with ProcessPoolExecutor(workers) as pool:
                    for cid, n in pool.map(_write_case, jobs):
                        tumors[cid] = n
                        advance()
            else:
                for job in jobs:
                    cid, n = _write_case(job)
                    tumors[cid] = n
                    advance()
        write_dataset_json(
            tmp,
            name="FOSCU hepatobiliary-phase phantom",
            num_training=cases,
            description="Procedural abdominal MRI (hepatobiliary phase, fat-suppressed T1) with labels",
            foscu_phantom={"seed": seed, "shape": list(shape), "spacing": list(spacing), "tumors": tumors},
        )
    return tumors
