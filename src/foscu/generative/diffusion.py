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

from foscu.config import DiffusionStage, LabelDiffusionStage, SchedulerConfig
from foscu.data.loaders import LatentSet
from foscu.engine.loop import Recipe
from foscu.generative import latents
from foscu.generative.autoencoders import check_divisible
from foscu.generative.schedulers import training_scheduler

if TYPE_CHECKING:
    from foscu.context import StageContext


def build_diffusion(stage: DiffusionStage, latent_channels: int) -> dict[str, nn.Module]:
    """A MONAI DiffusionModelUNet on the latent channels; with ``tumor_condition`` (label LDM) it embeds the
    tumor presence class (generative/tumor_condition.py)."""
    from monai.networks.nets import DiffusionModelUNet

    from foscu.generative.tumor_condition import NUM_CLASSES

    classes: dict[str, Any] = (
        {"num_class_embeds": NUM_CLASSES} if getattr(stage, "tumor_condition", False) else {}
    )
    unet = DiffusionModelUNet(
        spatial_dims=3, in_channels=latent_channels, out_channels=latent_channels, **stage.unet, **classes
    )
    return {"unet": unet}


def predict(
    nets: dict[str, nn.Module],
    z_t: torch.Tensor,
    t: torch.Tensor,
    condition: torch.Tensor | None = None,
    *,
    conditioning_scale: float = 1.0,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The network output at (z_t, t): eps or v; through the ControlNet when one is given a condition, its
    residuals times ``conditioning_scale``; ``class_labels`` (B,) for a class-conditioned UNet."""
    t = t.float()
    unet_kwargs: dict[str, Any] = {} if class_labels is None else {"class_labels": class_labels}
    if condition is None or "controlnet" not in nets:
        return nets["unet"](z_t, t, **unet_kwargs)
    down, mid = nets["controlnet"](
        x=z_t, timesteps=t, controlnet_cond=condition, conditioning_scale=conditioning_scale
    )
    return nets["unet"](
        z_t, t, down_block_additional_residuals=down, mid_block_additional_residual=mid, **unet_kwargs
    )


def draw_noise(z_0: torch.Tensor, scheduler: Any, objective: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise eps (like z_0) and a timestep per sample (B,), from the global generator."""
    eps = torch.randn_like(z_0)
    if objective == "rflow":
        return eps, scheduler.sample_timesteps(z_0)
    return eps, torch.randint(0, scheduler.num_train_timesteps, (z_0.shape[0],), device=z_0.device)


def squared_error(
    nets: dict[str, nn.Module],
    z_0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    *,
    scheduler: Any,
    objective: str,
    condition: torch.Tensor | None = None,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, C, x, y, z) squared error of the network's output against its target (eps; rflow: z_0 - eps)."""
    target = z_0 - eps if objective == "rflow" else eps
    # noise the latent: z_t, then predict
    z_t = scheduler.add_noise(original_samples=z_0, noise=eps, timesteps=t)
    prediction = predict(nets, z_t, t, condition, class_labels=class_labels)
    return (prediction.float() - target.float()) ** 2


def denoising_loss(
    nets: dict[str, nn.Module], batch: dict[str, Any], *, scheduler: Any, objective: str
) -> dict[str, torch.Tensor]:
    """L2 between the network output and its target, optionally weighted per latent voxel (``weight``)."""
    z_0 = batch["latent"]  # (B, C, x, y, z), already multiplied by the scale factor
    # 1. draw noise and a timestep per sample
    eps, t = draw_noise(z_0, scheduler, objective)
    # 2. noise the latent, predict and compare
    error = squared_error(
        nets,
        z_0,
        eps,
        t,
        scheduler=scheduler,
        objective=objective,
        condition=batch.get("condition"),
        class_labels=batch.get("class_labels"),
    )
    weight = batch.get("weight")
    loss = (error * weight).sum() / (weight.sum() * error.shape[1]) if weight is not None else error.mean()
    return {"loss": loss}


# ---------------------------------------------------------------- the stages: recipe and rebuild


def build(info: dict[str, Any]) -> dict[str, nn.Module]:
    """Rebuild an LDM's UNet from its stage's config.yaml."""
    kind = LabelDiffusionStage if info["stage"] == "label-ldm" else DiffusionStage
    return build_diffusion(kind.model_validate(info["section"]), info["latent_channels"])


def scheduler_of(info: dict[str, Any]) -> Any:
    """The training noise schedule an LDM stage recorded (the ControlNet trains on its LDM's)."""
    return training_scheduler(SchedulerConfig.model_validate(info["scheduler"]), info["objective"])


def recipe(ctx: StageContext, encoder: str) -> Recipe:
    """label-ldm, image-ldm, vqvae-ldm: a UNet denoising the cached latents of ``encoder`` (paper eq. 1); the
    label LDM with ``tumor_condition`` also sees each case's tumor presence."""
    from foscu.generative import tumor_condition, validation

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
    classes = tumor_condition.stage_classes(ctx, meta)  # None unless label_ldm.tumor_condition
    if classes is not None:
        info.update(tumor_condition.recorded(classes))
    val = validation.LatentValidation(
        cache.get("validation", {}).get("mean"),
        scale,
        scheduler,
        section.objective,
        ctx.device,
        section.val_draws,
        None if classes is None else classes["validation"],
    )
    extras = None if classes is None else {"class_labels": classes["training"]}
    return Recipe(
        nets,
        partial(denoising_loss, scheduler=scheduler, objective=section.objective),
        LatentSet(mean, cache["training"]["sigma"], scale, extras),
        ["unet"],
        val,
        **ctx.best_by("val_loss"),
        info=info,
        metadata={"scale_factor": scale, "encoder": encoder},
    )
