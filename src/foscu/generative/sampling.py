"""Paired sampling (paper Fig. 2): label latent -> discrete label -> condition -> image.

The networks of a run (``load_pipeline``), the denoising loop and one batch of pairs (``generate_batch``);
``foscu sample``, which writes N of them as an nnU-Net raw set, is generative/generate.py. Sample i draws its
noise from generators seeded by (seed, i) alone, so it is the same sample whatever the batch size or the
number of GPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from foscu.config import SampleConfig, SchedulerConfig, check_sampler
from foscu.engine import distributed
from foscu.engine.loop import _mix
from foscu.errors import InputError
from foscu.generative import autoencoders, controlnet, diffusion, label_cleaning, tumor_condition
from foscu.generative.decoding import decode_volume, unit_range
from foscu.generative.novelty import NoveltyCheck
from foscu.generative.schedulers import sampling_scheduler
from foscu.runs import RunFolder, RunPath, as_run

MODELS = ("duo", "image-ldm", "vqvae-ldm")


@dataclass
class LatentModel:
    """A trained LDM with what sampling needs: its UNet, scheduler settings, scale factor and decoder."""

    unet: nn.Module
    scheduler: SchedulerConfig
    objective: str
    scale: float
    latent_shape: tuple[int, ...]
    autoencoder: nn.Module


@dataclass
class Pipeline:
    """The networks one ``model`` samples with (the image LDM; for duo also the label LDM and ControlNet) and
    the run's grid and label map."""

    image: LatentModel
    label: LatentModel | None = None
    controlnet: nn.Module | None = None
    condition: str | None = None
    roi: tuple[int, int, int] = (0, 0, 0)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    labels: dict[str, int] = field(default_factory=dict)
    decode_patch: list[int] | None = None
    min_tumor_ml: float | None = None  # set: sampled labels are cleaned (generative/label_cleaning.py)
    novelty: NoveltyCheck | None = None  # set: near copies of training labels are redrawn
    conditioning_scale: float = 1.0  # the ControlNet residuals' factor (sample.conditioning_scale)
    tumor_prevalence: float | None = None  # set: the label LDM is conditioned on tumor presence


def _latent_model(run: RunFolder, ldm: str, device: torch.device) -> tuple[LatentModel, dict[str, Any]]:
    """An LDM and its autoencoder from their stage folders, and the LDM's config.yaml."""
    from foscu.stages import load_stage

    nets, meta, info = load_stage(run, ldm)
    vae, _, _ = load_stage(run, info["encoder"])
    model = LatentModel(
        nets["unet"].to(device),
        SchedulerConfig.model_validate(info["scheduler"]),
        info["objective"],
        float(meta["scale_factor"]),
        (info["latent_channels"], *info["latent_shape"]),
        vae["autoencoder"].to(device),
    )
    return model, info


def load_pipeline(run_root: RunPath, model: str = "duo", controlnet_folder: str = "controlnet") -> Pipeline:
    """Every network ``model`` needs, from the run's stage folders (their own config.yaml + weights)."""
    from foscu.stages import load_stage

    if model not in MODELS:
        raise InputError("--model", f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    run, device = as_run(run_root), distributed.current().device
    ldm = "vqvae-ldm" if model == "vqvae-ldm" else "image-ldm"
    image, info = _latent_model(run, ldm, device)
    pipe = Pipeline(image, roi=tuple(info["roi"]), spacing=tuple(info["spacing"]), labels=info["labels"])
    if model == "duo":
        pipe.label, label_info = _latent_model(run, "label-ldm", device)
        pipe.tumor_prevalence = tumor_condition.trained_prevalence(label_info)
        nets, meta, cn_info = load_stage(run, controlnet_folder)
        pipe.controlnet, pipe.condition = nets["controlnet"].to(device), cn_info["condition"]
    return pipe


def sampler_steps(scheduler: SchedulerConfig, sampler: str, steps: int | None) -> int:
    """The step count ``sampler`` runs: DDPM only with every training timestep, refused otherwise.

    MONAI's ``DDPMScheduler.step`` moves z_t to z_{t-1} with a one-step posterior whatever the spacing of the
    timesteps, so DDPM over fewer steps than it was trained with returns mostly noise (an exact epsilon oracle
    on N(0, 0.1^2) data ends with std 0.73 after 50 of 1000 steps; DDIM-50 ends with 0.07).
    """
    if steps is not None and steps < 1:
        raise InputError("--steps", f"must be >= 1, got {steps}")
    total = scheduler.num_train_timesteps
    if check_sampler(sampler) != "ddpm":
        return SampleConfig().steps if steps is None else steps
    if steps is not None and steps != total:
        raise InputError(
            "--steps",
            f"ddpm samples only with all {total} training timesteps, got {steps} "
            f"(use --steps {total}, or --sampler ddim for fewer steps)",
        )
    return total


@torch.no_grad()
def denoise(
    model: LatentModel,
    noise: torch.Tensor,
    sampler: str,
    steps: int | None,
    generators: list[torch.Generator],
    control: nn.Module | None = None,
    condition: torch.Tensor | None = None,
    impose: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    conditioning_scale: float = 1.0,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the reverse process from z_T = noise to z_0 (scaled latent space).

    ``steps`` None: DDPM with all its training timesteps (the only count it samples correctly), DDIM/RFlow
    ``SampleConfig``'s default. ``impose(z_t, t)``: applied to z_T and after every step (t: the timestep
    reached, None after the last) — latent inpainting re-imposes the known region (generative/inpainting.py). ``conditioning_scale``: the ControlNet
    residuals' factor; ``class_labels`` (B,): the label LDM's tumor presence.
    """
    steps = sampler_steps(model.scheduler, sampler, steps)
    scheduler = sampling_scheduler(model.scheduler, model.objective, sampler)  # type: ignore[arg-type]
    if sampler == "rflow":
        scheduler.set_timesteps(
            steps, device=noise.device, input_img_size_numel=int(np.prod(noise.shape[2:]))
        )
    else:
        scheduler.set_timesteps(steps, device=noise.device)
    nets = {"unet": model.unet} if control is None else {"unet": model.unet, "controlnet": control}
    timesteps = list(scheduler.timesteps)
    z_t = noise if impose is None else impose(noise, timesteps[0])
    for i, t in enumerate(timesteps):
        t_batch = torch.full((z_t.shape[0],), float(t), device=z_t.device)
        # 1. predict the noise (or the velocity)
        output = diffusion.predict(
            nets, z_t, t_batch, condition, conditioning_scale=conditioning_scale, class_labels=class_labels
        )
        # 2. z_t -> z_{t-1}
        if sampler == "rflow":
            next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
            z_t, _ = scheduler.step(output, t, z_t, next_t)
        elif sampler == "ddim":
            z_t, _ = scheduler.step(output, int(t), z_t)
        else:  # ddpm adds fresh noise each step: per sample, from that sample's generator
            z_t = torch.cat(
                [
                    scheduler.step(output[j : j + 1], int(t), z_t[j : j + 1], generator=generators[j])[0]
                    for j in range(z_t.shape[0])
                ]
            )
        if impose is not None:
            z_t = impose(z_t, timesteps[i + 1] if i + 1 < len(timesteps) else None)
    return z_t


def _noise(shape: tuple[int, ...], seeds: list[int], device: torch.device) -> torch.Tensor:
    """One standard-normal latent per seed, drawn on the CPU so every device gets the same numbers."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(
        device
    )


def _step_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(_mix(s, 99)) for s in seeds]


def _sample_latent(
    model: LatentModel,
    seeds: list[int],
    stream: int,
    sampler: str,
    steps: int | None,
    control: nn.Module | None = None,
    condition: torch.Tensor | None = None,
    **conditioning: Any,
) -> torch.Tensor:
    """z_0 for each seed; ``stream`` separates the label (0) and image (1) noise of one sample;
    ``conditioning``: ``denoise``'s conditioning_scale and class_labels."""
    device = next(model.unet.parameters()).device
    stream_seeds = [_mix(s, stream) for s in seeds]
    noise = _noise(model.latent_shape, stream_seeds, device)
    generators = _step_generators(stream_seeds, device)
    return denoise(model, noise, sampler, steps, generators, control, condition, **conditioning)


@torch.no_grad()
def sample_labels(
    pipe: Pipeline, seeds: list[int], sampler: str, steps: int | None
) -> tuple[torch.Tensor, list[dict] | None]:
    """Labels (B, X, Y, Z) for per-sample seeds: a label latent (under each sample's drawn tumor presence when
    the label LDM is conditioned on it), decoded to class logits, their argmax, then cleaned where
    ``pipe.min_tumor_ml`` is set (with each label's cleaning record; None when not cleaned)."""
    assert pipe.label is not None
    device = next(pipe.label.unet.parameters()).device
    classes = tumor_condition.class_labels(seeds, pipe.tumor_prevalence, device)
    z_label = _sample_latent(pipe.label, seeds, 0, sampler, steps, class_labels=classes)
    labels = decode_volume(pipe.label.autoencoder, z_label / pipe.label.scale, pipe.decode_patch).argmax(1)
    if pipe.min_tumor_ml is None:
        return labels, None
    return label_cleaning.clean_batch(labels, pipe.spacing, pipe.min_tumor_ml)


@torch.no_grad()
def generate_batch(
    pipe: Pipeline, seeds: list[int], sampler: str, steps: int | None, labels: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (B, X, Y, Z) min-max scaled to [0, 1] and labels (B, X, Y, Z) for one batch of per-sample seeds."""
    device = next(pipe.image.unet.parameters()).device
    num_classes = len(pipe.labels)
    if pipe.controlnet is None:  # baselines: the image LDM alone
        z_0 = _sample_latent(pipe.image, seeds, 1, sampler, steps)
        images = decode_volume(pipe.image.autoencoder, z_0 / pipe.image.scale, pipe.decode_patch)
        return unit_range(images)[:, 0].cpu().numpy(), None
    # 1. label: sampled (and cleaned, with pipe.min_tumor_ml), unless labels are given
    if labels is None:
        labels, _ = sample_labels(pipe, seeds, sampler, steps)
    labels = labels.to(device)
    assert pipe.label is not None
    # 2. condition: re-encode the discrete label (label_latent) or use it as it is
    label_latent = None
    if pipe.condition == "label_latent":
        onehot = torch.nn.functional.one_hot(labels.long(), num_classes).movedim(-1, 1).float()
        label_latent = autoencoders.encode(pipe.label.autoencoder, onehot)[0] * pipe.label.scale
    cond = controlnet.make_condition(
        pipe.condition or "", labels, label_latent, pipe.image.latent_shape[1:], num_classes
    )
    # 3. image: sample the image latent under ControlNet conditioning and decode
    scale = pipe.conditioning_scale
    z_image = _sample_latent(
        pipe.image, seeds, 1, sampler, steps, pipe.controlnet, cond, conditioning_scale=scale
    )
    images = decode_volume(pipe.image.autoencoder, z_image / pipe.image.scale, pipe.decode_patch)
    return unit_range(images)[:, 0].cpu().numpy(), labels.cpu().numpy().astype(np.uint8)
