"""2.5D Fréchet distances between a real and a synthetic set of volumes (paper IV-A, Table I).

Each volume is cut into 2D slices along the axial (z), coronal (y) and sagittal (x) planes; a feature
network maps every slice to a vector; one Fréchet distance per plane compares the real and synthetic
slice features, and their mean is the headline number (as in MAISI's 2.5D FID).

Feature sets: ``inception`` (FID with the standard pt_inception weights), ``radimagenet`` (FID with
RadImageNet ResNet-50, as MAISI) and the default ``frd``: radiomics-style hand-crafted slice features
(first-order statistics, gray-level co-occurrence texture, gradient and local-binary-pattern histograms)
computed with numpy in :mod:`foscu.evaluation.radiomics`, so it needs no download. Its distance is a
Fréchet radiomics-style distance (FRD), not an FID, and is labelled so in every output. The distance maths
and the bootstrap interval are in :mod:`foscu.evaluation.frechet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foscu.config import FEATURES, EvaluationConfig
from foscu.errors import InputError

# the distance maths and the FRD slice features live beside this module
from foscu.evaluation.frechet import _standardiser, bootstrap_interval, frechet_distance
from foscu.evaluation.radiomics import radiomics_features  # looked up here at call time (tests patch it)

if TYPE_CHECKING:
    import torch

PLANES = ("axial", "coronal", "sagittal")
DEFAULTS = EvaluationConfig()  # features, slice_stride, central_fraction: the config's are the defaults here
_PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # the axis a plane's slices are taken along


def plane_slices(
    volume: np.ndarray, plane: str, slice_stride: int = 1, central_fraction: float = 1.0
) -> np.ndarray:
    """The 2D slices of an (X, Y, Z) volume along ``plane``: (n, H, W), central fraction, every k-th.

    Keeps slices [int((1 - f) / 2 * N), int((1 + f) / 2 * N)) of the N along the plane's axis (MAISI's
    centre-slice rule), at least the middle one.
    """
    axis = _PLANE_AXIS[plane]
    count = volume.shape[axis]
    start = int((1.0 - central_fraction) / 2.0 * count)
    stop = max(int((1.0 + central_fraction) / 2.0 * count), start + 1)
    picked = np.take(volume, np.arange(start, stop, slice_stride), axis=axis)
    return np.moveaxis(picked, axis, 0)  # (n, H, W)


def _unit_range(volume: np.ndarray) -> np.ndarray:
    """The volume itself if already in [0, 1], else min-max scaled to [0, 1] (a constant volume -> zeros)."""
    volume = np.asarray(volume, dtype=np.float32)
    low, high = float(volume.min()), float(volume.max())
    if low >= 0.0 and high <= 1.0:
        return volume
    if high - low < 1e-12:
        return np.zeros_like(volume)
    return (volume - low) / (high - low)


def _check_settings(features: str, slice_stride: int, central_fraction: float, weights: Path | None) -> None:
    if features not in FEATURES:
        raise InputError("--features", f"expected one of {', '.join(FEATURES)}, got {features!r}")
    if slice_stride < 1:
        raise InputError("--slice-stride", f"must be >= 1, got {slice_stride}")
    if not 0.0 < central_fraction <= 1.0:
        raise InputError("--central-fraction", f"must be in (0, 1], got {central_fraction}")
    if features == "frd" and weights is not None:
        raise InputError(
            "--weights", "frd uses no network weights (pass --features inception or radimagenet)"
        )


def _check_volumes(
    name: str, volumes: Sequence[np.ndarray], shape: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """The set's common shape; InputError for an empty set, a non-3D or tiny volume, or a shape mismatch."""
    if len(volumes) == 0:
        raise InputError(name, "no volumes")
    for index, volume in enumerate(volumes):
        if volume.ndim != 3 or min(volume.shape) < 3:
            raise InputError(name, f"volume {index} must be 3D with >= 3 voxels a side, got {volume.shape}")
    shape = tuple(volumes[0].shape) if shape is None else shape
    for index, volume in enumerate(volumes):
        if tuple(volume.shape) != shape:
            raise InputError(name, f"volume {index} has shape {volume.shape}, real volume 0 has {shape}")
    return shape


def _note(features: str, weights_path: Path | None) -> str:
    if features == "frd":
        return (
            "Fréchet radiomics-style distance (FRD) on 2.5D slices: 30 hand-crafted features per slice "
            "(first-order, co-occurrence texture, gradient, local binary patterns), standardised by the "
            "real set's mean and std per plane. Not an FID: not comparable with the paper's Table I values."
        )
    network = "Inception-v3 (pt_inception-2015-12-05)" if features == "inception" else "RadImageNet ResNet-50"
    return f"2.5D FID with {network} 2048-d slice features; weights {weights_path}."


@dataclass(frozen=True)
class SetFeatures:
    """Slice features of one set of volumes per plane, and the settings that made them.

    Computed once with :func:`set_features` and passed to :func:`fid_25d` as ``real`` for every
    synthetic set of an experiment (Table I compares each set against the same real training images).
    """

    features: str
    slice_stride: int
    central_fraction: float
    weights: Path | None  # the weight file used (None for frd)
    shape: tuple[int, ...]  # (X, Y, Z) of every volume
    n_volumes: int
    per_plane: dict[str, np.ndarray]  # plane -> (n_slices, d)


def _load_net(
    features: str, weights: Path | None, download: bool, device: str | torch.device | None
) -> tuple[Any, Path | None]:
    """The feature network (None for frd) on ``device`` (default: the run's device) and its weight file."""
    if features == "frd":
        return None, None
    import torch

    from foscu.engine import distributed
    from foscu.evaluation.feature_nets import load_feature_net

    on = distributed.current().device if device is None else torch.device(device)
    return load_feature_net(features, weights, download, device=on)


def _volume_features(
    name: str,
    volumes: Sequence[np.ndarray],
    net: Any,
    features: str,
    slice_stride: int,
    central_fraction: float,
    batch_size: int,
    progress: bool,
) -> dict[str, list[np.ndarray]]:
    """plane -> one (n_slices, d) array per volume (each volume scaled to [0, 1] first)."""
    from foscu.engine.tracking import progress_bar

    per_plane: dict[str, list[np.ndarray]] = {plane: [] for plane in PLANES}
    with progress_bar(f"{features} features ({name})", len(volumes), enabled=progress) as advance:
        for volume in volumes:
            unit = _unit_range(volume)
            for plane in PLANES:
                slices = plane_slices(unit, plane, slice_stride, central_fraction)
                per_plane[plane].append(_slice_features(slices, net, batch_size))
            advance()
    return per_plane


def _real_set(
    volumes: Sequence[np.ndarray],
    net: Any,
    weights_path: Path | None,
    features: str,
    slice_stride: int,
    central_fraction: float,
    batch_size: int,
    progress: bool,
) -> SetFeatures:
    """The real set's features with a loaded network: per plane every volume's slices, one after another."""
    settings = (features, slice_stride, central_fraction, batch_size, progress)
    per_volume = _volume_features("real", volumes, net, *settings)
    per_plane = {plane: np.concatenate(chunks) for plane, chunks in per_volume.items()}
    shape = tuple(volumes[0].shape)
    return SetFeatures(features, slice_stride, central_fraction, weights_path, shape, len(volumes), per_plane)


def set_features(
    volumes: Sequence[np.ndarray],
    features: str = DEFAULTS.features,
    slice_stride: int = DEFAULTS.slice_stride,
    central_fraction: float = DEFAULTS.central_fraction,
    weights: Path | None = None,
    batch_size: int = 32,
    download: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> SetFeatures:
    """The slice features of a set of volumes (the real set of an experiment, computed once).

    Args: as :func:`fid_25d`; the feature network runs on ``device`` (default: the run's device).
    """
    _check_settings(features, slice_stride, central_fraction, weights)
    _check_volumes("real", volumes)
    net, weights_path = _load_net(features, weights, download, device)
    return _real_set(
        volumes, net, weights_path, features, slice_stride, central_fraction, batch_size, progress
    )


def fid_25d(
    real: Sequence[np.ndarray] | SetFeatures,
    fake: Sequence[np.ndarray],
    features: str = DEFAULTS.features,
    slice_stride: int = DEFAULTS.slice_stride,
    central_fraction: float = DEFAULTS.central_fraction,
    weights: Path | None = None,
    batch_size: int = 32,
    download: bool = False,
    progress: bool = False,
    device: str | torch.device | None = None,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
) -> dict:
    """2.5D Fréchet distance per plane (axial, coronal, sagittal) and their mean, real vs fake volumes.

    Args:
        real: (X, Y, Z) volumes, or their :func:`set_features` computed once with the same settings.
        fake: (X, Y, Z) volumes of the real set's shape; each min-max scaled to [0, 1] unless already in it.
        features: ``frd`` (radiomics-style, no download), ``inception`` or ``radimagenet`` (FID).
        slice_stride, central_fraction: keep every k-th slice of the central fraction along each axis.
        weights: network weight file (default: the torch hub cache); ``download`` fetches inception's.
        device: where the feature network runs (default: the run's device, a GPU when there is one).
        bootstrap: resamples of the fake volumes for a 95 % interval of the mean (0: none); see
            :func:`bootstrap_interval`. ``bootstrap_seed`` draws them.
    """
    _check_settings(features, slice_stride, central_fraction, weights)
    if bootstrap < 0:
        raise InputError("bootstrap", f"must be >= 0 resamples, got {bootstrap}")
    if isinstance(real, SetFeatures):
        _check_reusable(real, features, slice_stride, central_fraction)
        _check_volumes("fake", fake, real.shape)
        weights = weights or real.weights
    else:
        _check_volumes("fake", fake, _check_volumes("real", real))
    net, weights_path = _load_net(features, weights, download, device)
    settings = (features, slice_stride, central_fraction, batch_size, progress)
    real_set = real if isinstance(real, SetFeatures) else _real_set(real, net, weights_path, *settings)
    if real_set.weights is not None and weights_path is not None and real_set.weights != weights_path:
        raise ValueError(f"real features come from {real_set.weights}, fake ones would from {weights_path}")
    fake_volumes = _volume_features("fake", fake, net, *settings)
    distances, counts = _plane_distances(real_set, fake_volumes, features)
    result: dict = {"features": features, "metric": "FRD" if features == "frd" else "FID", **distances}
    if bootstrap:
        result.update(bootstrap_interval(real_set, fake_volumes, bootstrap, bootstrap_seed))
    result.update(n_real=real_set.n_volumes, n_fake=len(fake), slices_per_plane=counts)
    result.update(
        note=_note(features, weights_path), slice_stride=slice_stride, central_fraction=central_fraction
    )
    if weights_path is not None:
        from foscu.evaluation.feature_nets import sha256

        result.update(weights=str(weights_path), weights_sha256=sha256(weights_path))
    return result


def _check_reusable(real: SetFeatures, features: str, slice_stride: int, central_fraction: float) -> None:
    """Real features computed once serve only the settings they were computed with."""
    asked = (features, slice_stride, central_fraction)
    if (real.features, real.slice_stride, real.central_fraction) != asked:
        raise ValueError(
            f"real features were computed with {(real.features, real.slice_stride, real.central_fraction)}"
            f", not {asked}"
        )


def _plane_distances(
    real: SetFeatures, fake: dict[str, list[np.ndarray]], features: str
) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Fréchet distance per plane (standardised by the real set) and their mean; slices per set and plane."""
    distances: dict[str, float] = {}
    counts = {}
    for plane in PLANES:
        real_features = real.per_plane[plane]
        fake_features = np.concatenate(fake[plane])
        counts[plane] = {"real": len(real_features), "fake": len(fake_features)}
        if min(len(real_features), len(fake_features)) < 2:
            raise InputError("--central-fraction", f"{plane}: fewer than 2 slices per set; keep more slices")
        scale = _standardiser(real_features, features)
        distances[plane] = frechet_distance(scale(real_features), scale(fake_features))
    distances["mean"] = float(np.mean([distances[plane] for plane in PLANES]))
    return distances, counts


def _slice_features(slices: np.ndarray, net: Any, batch_size: int) -> np.ndarray:
    """(n, H, W) slices in [0, 1] -> (n, d) features: radiomics-style without a network, else its own.

    Batches go to the network's device and the features come back to the CPU.
    """
    if net is None:
        return radiomics_features(slices)
    import torch

    device = next(net.parameters()).device
    batches = []
    with torch.inference_mode():
        for start in range(0, len(slices), batch_size):
            chunk = np.ascontiguousarray(slices[start : start + batch_size])
            batch = torch.from_numpy(chunk)[:, None].float().to(device)  # (B, 1, H, W)
            batches.append(net(batch).float().cpu().double().numpy())  # (B, d)
    return np.concatenate(batches)


def read_volumes(folder: Path) -> list[np.ndarray]:
    """Every image of ``folder`` as an (X, Y, Z) array with axes reordered to x, y, z by its affine."""
    import nibabel as nib

    from foscu.data.layout import case_files
    from foscu.data.nifti import read_nifti

    volumes = []
    for path in case_files(folder, "images").values():
        volume = read_nifti(path)
        codes = nib.aff2axcodes(volume.affine)
        order = [next(i for i, c in enumerate(codes) if c in pair) for pair in ("LR", "PA", "IS")]
        volumes.append(np.transpose(volume.array, order))
        if volumes[-1].shape != volumes[0].shape:
            raise InputError(
                path, f"shape {volumes[-1].shape} differs from the folder's first {volumes[0].shape}"
            )
    return volumes


def evaluate_fid(
    real_dir: Path,
    fake_dir: Path,
    features: str | None = None,
    slice_stride: int | None = None,
    central_fraction: float | None = None,
    weights: Path | None = None,
    out: Path = Path("fid.json"),
    download: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict:
    """``foscu evaluate fid``: read both folders, compute :func:`fid_25d` (network on ``device``, default
    the run's device), write ``out`` atomically. ``features``, ``slice_stride``, ``central_fraction`` None:
    the config's defaults (``EvaluationConfig``)."""
    from foscu.runs import write_json_atomic

    features = DEFAULTS.features if features is None else features
    slice_stride = DEFAULTS.slice_stride if slice_stride is None else slice_stride
    central_fraction = DEFAULTS.central_fraction if central_fraction is None else central_fraction
    _check_settings(features, slice_stride, central_fraction, weights)
    real = read_volumes(real_dir)
    fake = read_volumes(fake_dir)
    if fake[0].shape != real[0].shape:
        raise InputError(fake_dir, f"volumes have shape {fake[0].shape}, the real ones {real[0].shape}")
    result = fid_25d(
        real,
        fake,
        features,
        slice_stride,
        central_fraction,
        weights,
        download=download,
        progress=progress,
        device=device,
    )
    result = {"real": str(real_dir), "fake": str(fake_dir), **result}
    write_json_atomic(out, result)
    return result


def paper_ordering(duo: dict, vae_ldm: dict, vqvae_ldm: dict) -> dict[str, Any]:
    """Does Table I order the methods as the paper (Duo-Diffusion <= 3D-LDM w/ VAE < 3D-LDM w/ VQ-VAE)?

    Args: the three Table I rows, each with ``mean`` and, when bootstrapped, ``mean_low``/``mean_high``.
    Returns ``holds`` (the ordering of the means), ``separated`` (per neighbouring pair: the better one's
    interval lies wholly below the other's; None without intervals) and a sentence saying both.
    """
    names = ("Duo-Diffusion", "3D-LDM w/ VAE", "3D-LDM w/ VQ-VAE")
    holds = duo["mean"] <= vae_ldm["mean"] < vqvae_ldm["mean"]
    text = (
        f"The paper's ordering (Duo-Diffusion <= 3D-LDM w/ VAE < 3D-LDM w/ VQ-VAE) "
        f"{'holds' if holds else 'does not hold'}: {duo['mean']:.6g}, {vae_ldm['mean']:.6g}, "
        f"{vqvae_ldm['mean']:.6g}."
    )
    separated: dict[str, bool | None] = {}
    for (better, worse), (better_row, worse_row) in zip(
        ((names[0], names[1]), (names[1], names[2])), ((duo, vae_ldm), (vae_ldm, vqvae_ldm)), strict=True
    ):
        key = f"{better} < {worse}"
        if better_row.get("mean_high") is None or worse_row.get("mean_low") is None:
            separated[key] = None
            continue
        separated[key] = better_row["mean_high"] < worse_row["mean_low"]
        if separated[key]:
            text += f" The 95 % intervals separate {better} (lower) from {worse}."
        elif worse_row["mean_high"] < better_row["mean_low"]:
            text += f" The 95 % intervals separate them the other way: {worse} is lower than {better}."
        else:
            text += f" The 95 % intervals of {better} and {worse} overlap: not separated."
    if all(v is None for v in separated.values()):
        text += " No intervals (evaluation.bootstrap: 0): separation not judged."
    return {"holds": holds, "separated": separated, "text": text}
