"""label-ldm / image-ldm / vqvae-ldm: MONAI DiffusionModelUNet on cached latents, and the one denoising loss.

Paper eq. 1: L = E ||eps - eps_theta(z_t, t)||^2 with z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps
(``objective: epsilon``). ``objective: rflow`` trains a rectified flow: z_t = (1 - s) z_0 + s eps with
s = t / T, target velocity v = z_0 - eps. With a ControlNet in ``nets`` (paper eq. 2) its residuals enter
the frozen UNet and only the ControlNet learns.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from foscu.config import DiffusionStage, SchedulerConfig
from foscu.data.loaders import LatentSet
from foscu.engine.loop import Recipe
from foscu.generative import latents
from foscu.generative.autoencoders import check_divisible
from foscu.generative.schedulers import training_scheduler

if TYPE_CHECKING:
    from foscu.context import StageContext


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


# ---------------------------------------------------------------- the stages: recipe and rebuild


def build(info: dict[str, Any]) -> dict[str, nn.Module]:
    """Rebuild an LDM's UNet from its stage's config.yaml."""
    return build_diffusion(DiffusionStage.model_validate(info["section"]), info["latent_channels"])


def scheduler_of(info: dict[str, Any]) -> Any:
    """The training noise schedule an LDM stage recorded (the ControlNet trains on its LDM's)."""
    return training_scheduler(SchedulerConfig.model_validate(info["scheduler"]), info["objective"])


class LatentValidation:
    """Validation: the denoising loss on the scaled validation latents (``val_loss``), fixed noise."""

    def __init__(
        self, mean: torch.Tensor | None, scale: float, scheduler: Any, objective: str, device: torch.device
    ) -> None:
        self.mean, self.scale, self.scheduler, self.objective = mean, scale, scheduler, objective
        self.device = device

    def __call__(self, nets: dict[str, nn.Module], condition: torch.Tensor | None = None) -> dict[str, float]:
        if self.mean is None or len(self.mean) == 0:
            return {}
        z = (self.mean * self.scale).to(self.device)
        return {"val_loss": validation_loss(nets, z, condition, self.scheduler, self.objective)}


def recipe(ctx: StageContext, encoder: str) -> Recipe:
    """label-ldm, image-ldm, vqvae-ldm: a UNet denoising the cached latents of ``encoder`` (paper eq. 1)."""
    section = ctx.section
    cache, meta = latents.read_cache(ctx.latents(encoder))
    scale = float(meta["scale_factor"])
    mean = cache["training"]["mean"]  # (N, C, x, y, z), on the CPU: fit pins it and moves each batch
    levels = len(section.unet.get("channels", [0, 0, 0, 0])) - 1
    check_divisible(
        tuple(mean.shape[2:]),
        2**levels,
        f"{ctx.name} (a {levels + 1}-level UNet on the latent grid)",
        f"{ctx.section_name}.unet.channels",
    )
    nets = build_diffusion(section, mean.shape[1])
    scheduler = training_scheduler(section.scheduler, section.objective)
    info = {
        "latent_channels": int(mean.shape[1]),
        "latent_shape": list(mean.shape[2:]),
        "encoder": encoder,
        "objective": section.objective,
        "scheduler": section.scheduler.model_dump(),
    }
    val_mean = cache.get("validation", {}).get("mean")
    return Recipe(
        nets,
        partial(denoising_loss, scheduler=scheduler, objective=section.objective),
        LatentSet(mean, cache["training"]["sigma"], scale),
        ["unet"],
        LatentValidation(val_mean, scale, scheduler, section.objective, ctx.device),
        **ctx.best_by("val_loss"),
        info=info,
        metadata={"scale_factor": scale, "encoder": encoder},
    )
