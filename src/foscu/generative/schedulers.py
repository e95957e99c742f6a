"""Noise schedules from config (MONAI DDPM / DDIM / RFlow), shared by training and every ``--sampler``.

MONAI's DDPM and DDIM schedulers default to ``clip_sample=True``, which clamps x_0 estimates to [-1, 1]:
right for images in [-1, 1], wrong for latents. FOSCU always builds them with ``clip_sample=False``.
"""

from __future__ import annotations

from typing import Any, Literal

from foscu.config import Sampler, SchedulerConfig


def _beta_args(cfg: SchedulerConfig) -> dict[str, Any]:
    args: dict[str, Any] = {"num_train_timesteps": cfg.num_train_timesteps, "schedule": cfg.schedule}
    if cfg.schedule != "cosine":
        args.update(beta_start=cfg.beta_start, beta_end=cfg.beta_end)
    return args


def training_scheduler(cfg: SchedulerConfig, objective: Literal["epsilon", "rflow"]) -> Any:
    """The scheduler that noises latents in training: DDPM (epsilon objective) or RFlow (velocity)."""
    from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

    if objective == "rflow":
        return RFlowScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            use_discrete_timesteps=True,
            sample_method="logit-normal",
            spatial_dim=3,
        )
    return DDPMScheduler(clip_sample=False, prediction_type="epsilon", **_beta_args(cfg))


def sampling_scheduler(cfg: SchedulerConfig, objective: Literal["epsilon", "rflow"], sampler: Sampler) -> Any:
    """The scheduler a sampler steps with; a sampler that does not match the training objective is refused."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

    from foscu.errors import InputError

    if (sampler == "rflow") != (objective == "rflow"):
        wanted = "rflow" if objective == "rflow" else "ddpm or ddim"
        raise InputError(
            "--sampler",
            f"{sampler} cannot sample a model trained with the {objective} objective (use {wanted})",
        )
    if sampler == "rflow":
        return RFlowScheduler(
            num_train_timesteps=cfg.num_train_timesteps, use_discrete_timesteps=False, spatial_dim=3
        )
    if sampler == "ddim":
        return DDIMScheduler(
            clip_sample=False, prediction_type="epsilon", set_alpha_to_one=True, **_beta_args(cfg)
        )
    return DDPMScheduler(clip_sample=False, prediction_type="epsilon", **_beta_args(cfg))
