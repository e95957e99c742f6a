"""Encode a prepared set once through a trained, frozen VAE -> RUN/latents/<kind>.safetensors.

The cache keeps each case's latent mean and sigma (so training resamples z, as re-encoding would) and the
latent scale factor 1/std(z), computed once over all training latents, checked, and stored both here and in
the LDM's model file so fine-tuning and sampling reload the same value.

With ``copies`` (a stage's ``augment_copies``) the training split holds each case and then ``copies``
deformed copies of every case (generative/latent_augment.py), row ``k N + i`` = copy k of case i, so an
epoch is one pass over every copy; the scale factor stays the one of the cases themselves (copy 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from foscu.data.loaders import SplitVolumes, load_split, one_hot
from foscu.engine.checkpoint import read_weights, save_weights
from foscu.errors import InputError

if TYPE_CHECKING:
    from foscu.data.prepare import PreparedSet
from foscu.generative import latent_augment
from foscu.generative.autoencoders import encode

SPLITS = ("training", "validation")


class _Tensors(nn.Module):
    """Holds named tensors so the cache is written by the one safetensors writer."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for key, value in tensors.items():
            self.register_buffer(key.replace(".", "__"), value)


def scale_factor(z: torch.Tensor, source: str | Path) -> float:
    """1 / std of the training latents; refuses a NaN, zero or absurd value naming the encoder."""
    std = float(z.float().std())
    if not math.isfinite(std) or std < 1e-4 or std > 1e4:
        raise InputError(
            source,
            f"latent std is {std:.3g}: the autoencoder is broken or untrained "
            "(latent scale factor refused); retrain it",
        )
    return 1.0 / std


@torch.no_grad()
def encode_volumes(
    autoencoder: nn.Module,
    x: torch.Tensor,
    batch_size: int,
    device: torch.device,
    num_classes: int | None = None,
    transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, X, Y, Z) volumes -> latent mean and sigma (N, c, x, y, z) on the CPU.

    With ``num_classes``, ``x`` holds (N, X, Y, Z) integer labels, one-hot encoded one batch at a time: the
    whole split at once would need N x classes x voxels floats (~33 GB for 504 cases at 160x160x64).
    ``transform(batch, first_index)`` is applied to each batch before that (an augmented copy).
    """
    means, sigmas = [], []
    autoencoder.eval().to(device)
    for start in range(0, max(len(x), 1), batch_size):  # an empty split: one empty batch, (0, c, x, y, z)
        batch = x[start : start + batch_size]
        if transform is not None and len(batch):
            batch = transform(batch, start)
        if num_classes is not None:
            batch = one_hot(batch, num_classes)  # (B, C, X, Y, Z)
        z_mu, z_sigma = encode(autoencoder, batch.to(device))
        means.append(z_mu.float().cpu())
        sigmas.append(z_sigma.float().cpu())
    return torch.cat(means), torch.cat(sigmas)


def build_cache(
    path: Path,
    autoencoder: nn.Module,
    encoder_file: Path,
    splits: dict[str, SplitVolumes],
    kind: str,
    num_classes: int,
    device: torch.device,
    seed: int,
    copies: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> None:
    """Encode every split and write the cache with its scale factor (from the training cases only); the
    training split with ``copies`` augmented copies of each case after the cases (``spacing``: the grid's)."""
    tensors, case_ids = {}, {}
    for split, volumes in splits.items():
        x = volumes.labels if kind == "label" else volumes.images
        encoded = [
            encode_volumes(autoencoder, x, 2, device, num_classes if kind == "label" else None, transform)
            for transform in _copies(copies if split == "training" else 0, seed, spacing, kind == "label")
        ]
        tensors[f"{split}.mean"] = torch.cat([mean for mean, _ in encoded])
        tensors[f"{split}.sigma"] = torch.cat([sigma for _, sigma in encoded])
        case_ids[split] = latent_augment.copy_ids(volumes.case_ids, copies if split == "training" else 0)
    generator = torch.Generator().manual_seed(seed)
    n = len(splits["training"]) if "training" in splits else 0
    z = tensors["training.mean"][:n] + tensors["training.sigma"][:n] * torch.randn(
        tensors["training.mean"][:n].shape, generator=generator
    )
    meta = {
        "scale_factor": scale_factor(z, encoder_file),
        "case_ids": case_ids,
        "encoder": str(encoder_file),
        "encoder_stamp": _stamp(encoder_file),
    }
    if copies:
        meta["augmentation"] = latent_augment.settings(copies, seed)
    save_weights(path, {"latents": _Tensors(tensors)}, meta)


def _copies(
    copies: int, seed: int, spacing: Sequence[float], label: bool
) -> list[Callable[[torch.Tensor, int], torch.Tensor] | None]:
    """One batch transform per copy: None for the cases themselves, then each augmented copy."""

    def copy_k(k: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
        return lambda batch, start: latent_augment.augment_batch(batch, start, k, seed, spacing, label)

    return [None, *(copy_k(k) for k in range(1, copies + 1))]


def _stamp(path: Path) -> str:
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def cache_is_current(path: Path, encoder_file: Path, augmentation: dict | None = None) -> bool:
    """A cache is reused only when it was made from the encoder weights now on disk, with the same
    augmentation (``latent_augment.settings``; None: none)."""
    if not path.is_file():
        return False
    try:
        _, meta = read_weights(path)
    except InputError:
        return False
    return meta.get("encoder_stamp") == _stamp(encoder_file) and meta.get("augmentation") == augmentation


def read_cache(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """-> ({split: {"mean", "sigma"}}, metadata with scale_factor and case_ids)."""
    tensors, meta = read_weights(path)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        split, field = key.removeprefix("latents.").split("__")
        out.setdefault(split, {})[field] = value
    return out, meta


def cached_labels(prepared: PreparedSet, split: str, meta: dict) -> torch.Tensor:
    """The labels of ``split`` row by row as a cache with metadata ``meta`` holds its latents: with an
    augmented training split, each copy's label deformed as its image was (the ControlNet's condition)."""
    labels = load_split(prepared, split).labels
    augmentation = meta.get("augmentation")
    if split != "training" or not augmentation:
        return labels
    copies, seed = int(augmentation["copies"]), int(augmentation["seed"])
    return latent_augment.training_labels(labels, copies, seed, prepared.spacing)
