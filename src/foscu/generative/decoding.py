"""Latent -> volume for sampling: whole or through a sliding window, then min-max to [0, 1] as real ROIs."""

from __future__ import annotations

import torch
from torch import nn

from foscu.generative import autoencoders


def decode_volume(autoencoder: nn.Module, z: torch.Tensor, patch: list[int] | None = None) -> torch.Tensor:
    """Latent -> volume; with ``patch``, through MONAI's sliding-window inferer (less memory, seams blended)."""
    if not patch:
        return autoencoders.decode(autoencoder, z)
    from monai.inferers import sliding_window_inference

    def predictor(tile: torch.Tensor) -> torch.Tensor:
        return autoencoders.decode(autoencoder, tile)

    return sliding_window_inference(  # type: ignore[return-value]  # a tensor predictor gives a tensor
        z, roi_size=patch, sw_batch_size=1, predictor=predictor, overlap=0.5, mode="gaussian"
    )


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) -> each volume min-max scaled to [0, 1], the rule ``foscu prepare`` applies to real ROIs
    (a constant volume becomes zeros), so every consumer of a sample sees the intensities it was written with."""
    x = images.float()
    lo = x.flatten(1).amin(1).view(-1, *[1] * (x.dim() - 1))
    hi = x.flatten(1).amax(1).view(-1, *[1] * (x.dim() - 1))
    span = hi - lo
    return torch.where(span > 1e-12, (x - lo) / span.clamp_min(1e-12), torch.zeros_like(x))
