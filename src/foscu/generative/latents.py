"""Encode a prepared set once through a trained, frozen VAE -> RUN/latents/<kind>.safetensors.

The cache keeps each case's latent mean and sigma (so training resamples z, as re-encoding would) and the
latent scale factor 1/std(z), computed once over all training latents, checked, and stored both here and in
the LDM's model file so fine-tuning and sampling reload the same value.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from foscu.data.loaders import SplitVolumes, one_hot
from foscu.engine.checkpoint import read_weights, save_weights
from foscu.errors import InputError
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, X, Y, Z) volumes -> latent mean and sigma (N, c, x, y, z) on the CPU.

    With ``num_classes``, ``x`` holds (N, X, Y, Z) integer labels, one-hot encoded one batch at a time: the
    whole split at once would need N x classes x voxels floats (~33 GB for 504 cases at 160x160x64).
    """
    means, sigmas = [], []
    autoencoder.eval().to(device)
    for start in range(0, max(len(x), 1), batch_size):  # an empty split: one empty batch, (0, c, x, y, z)
        batch = x[start : start + batch_size]
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
) -> None:
    """Encode every split and write the cache with its scale factor (from training latents only)."""
    tensors, case_ids = {}, {}
    for split, volumes in splits.items():
        if kind == "label":
            mean, sigma = encode_volumes(autoencoder, volumes.labels, 2, device, num_classes)
        else:
            mean, sigma = encode_volumes(autoencoder, volumes.images, 2, device)
        tensors[f"{split}.mean"], tensors[f"{split}.sigma"] = mean, sigma
        case_ids[split] = volumes.case_ids
    generator = torch.Generator().manual_seed(seed)
    z = tensors["training.mean"] + tensors["training.sigma"] * torch.randn(
        tensors["training.mean"].shape, generator=generator
    )
    meta = {
        "scale_factor": scale_factor(z, encoder_file),
        "case_ids": case_ids,
        "encoder": str(encoder_file),
        "encoder_stamp": _stamp(encoder_file),
    }
    save_weights(path, {"latents": _Tensors(tensors)}, meta)


def _stamp(path: Path) -> str:
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def cache_is_current(path: Path, encoder_file: Path) -> bool:
    """A cache is reused only when it was made from the encoder weights now on disk."""
    if not path.is_file():
        return False
    try:
        _, meta = read_weights(path)
    except InputError:
        return False
    return meta.get("encoder_stamp") == _stamp(encoder_file)


def read_cache(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """-> ({split: {"mean", "sigma"}}, metadata with scale_factor and case_ids)."""
    tensors, meta = read_weights(path)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        split, field = key.removeprefix("latents.").split("__")
        out.setdefault(split, {})[field] = value
    return out, meta
