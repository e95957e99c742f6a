"""label-ldm / image-ldm / vqvae-ldm: MONAI DiffusionModelUNet on cached latents, and the one denoising loss.

Paper eq. 1: L = E ||eps - eps_theta(z_t, t)||^2 with z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps
(``objective: epsilon``). ``objective: rflow`` trains a rectified flow: z_t = (1 - s) z_0 + s eps with
s = t / T, target velocity v = z_0 - eps. With a ControlNet in ``nets`` (paper eq. 2) its residuals enter
the frozen UNet and only the ControlNet learns.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foscu.config import DiffusionStage


def build_diffusion(stage: DiffusionStage, latent_channels: int) -> dict[str, nn.Module]:
    from monai.networks.nets import DiffusionModelUNet

    unet = DiffusionModelUNet(
        spatial_dims=3, in_channels=latent_channels, out_channels=latent_channels, **stage.unet
    )
    return {"unet": unet}


def predict(
    nets: dict[str, nn.Module], z_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None
) -> torch.Tensor:
    """The network output at (z_t, t): eps or v; through the ControlNet when one is given a condition."""
    t = t.float()
    if condition is None or "controlnet" not in nets:
        return nets["unet"](z_t, t)
    down, mid = nets["controlnet"](x=z_t, timesteps=t, controlnet_cond=condition, conditioning_scale=1.0)
    return nets["unet"](z_t, t, down_block_additional_residuals=down, mid_block_additional_residual=mid)


def denoising_loss(
    nets: dict[str, nn.Module], batch: dict[str, Any], *, scheduler: Any, objective: str
) -> dict[str, torch.Tensor]:
    """L2 between the network output and its target, optionally weighted per latent voxel (``weight``)."""
    z_0 = batch["latent"]  # (B, C, x, y, z), already multiplied by the scale factor
    # 1. draw noise and a timestep per sample
    eps = torch.randn_like(z_0)
    if objective == "rflow":
        t = scheduler.sample_timesteps(z_0)
        target = z_0 - eps
    else:
        t = torch.randint(0, scheduler.num_train_timesteps, (z_0.shape[0],), device=z_0.device)
        target = eps
    # 2. noise the latent: z_t
    z_t = scheduler.add_noise(original_samples=z_0, noise=eps, timesteps=t)
    # 3. predict and compare
    prediction = predict(nets, z_t, t, batch.get("condition"))
    error = (prediction.float() - target.float()) ** 2
    weight = batch.get("weight")
    loss = (error * weight).sum() / (weight.sum() * error.shape[1]) if weight is not None else error.mean()
    return {"loss": loss}


@torch.no_grad()
def validation_loss(
    nets: dict[str, nn.Module],
    latents: torch.Tensor,
    condition: torch.Tensor | None,
    scheduler: Any,
    objective: str,
    seed: int = 1234,
) -> float:
    """The same loss on held-out latents with fixed noise and timesteps, comparable across validations."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        total = 0.0
        for start in range(0, len(latents), 4):
            batch = {"latent": latents[start : start + 4]}
            if condition is not None:
                batch["condition"] = condition[start : start + 4]
            total += float(
                denoising_loss(nets, batch, scheduler=scheduler, objective=objective)["loss"]
            ) * len(batch["latent"])
        return total / max(len(latents), 1)
    finally:
        torch.random.set_rng_state(state)


def weight_map(
    labels: torch.Tensor, latent_shape: tuple[int, ...], class_weights: dict[int, float]
) -> torch.Tensor:
    """(N, X, Y, Z) labels -> (N, 1, x, y, z) loss weights: a latent voxel takes the largest weight of the classes
    it covers (max-pooled), so a tumor of a few voxels still weighs (MAISI weights tumor x100)."""
    weights = torch.ones((labels.shape[0], 1, *latent_shape), device=labels.device)
    for value, w in class_weights.items():
        present = F.adaptive_max_pool3d((labels == value).float()[:, None], latent_shape)
        weights = torch.maximum(weights, present * w)
    return weights
