"""Paired sampling (paper Fig. 2): label latent -> discrete label -> condition -> image, in nnU-Net layout.

Sample i draws its noise from generators seeded by (seed, i) alone, so it is the same sample whatever the
batch size or the number of GPUs; under torchrun the N samples are split across ranks, each written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from foscu.config import SampleConfig, Sampler, SchedulerConfig, check_sampler, load_config
from foscu.engine import distributed
from foscu.engine.loop import _mix
from foscu.errors import InputError
from foscu.generative import autoencoders, controlnet, diffusion, label_cleaning, tumor_condition
from foscu.generative.decoding import decode_volume, unit_range
from foscu.generative.given_labels import Given, read_label_folder
from foscu.generative.novelty import NoveltyCheck, draw_labels, for_sampling
from foscu.generative.schedulers import sampling_scheduler
from foscu.runs import RunFolder, RunPath, as_run, write_json_atomic

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


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _sample_settings(
    run: RunFolder, sampler: str | None, steps: int | None, batch_size: int | None
) -> tuple[Sampler, int | None, int, list[int] | None]:
    """Sampler, steps, batch size and decode patch: each argument, else the run's config.yaml, else
    ``SampleConfig``'s default. DDPM keeps ``steps`` None: every training timestep (another count is refused)."""
    defaults = load_config(str(run.run_config)).sample if run.run_config.is_file() else SampleConfig()
    checked = check_sampler(defaults.sampler if sampler is None else sampler)
    if checked != "ddpm" and steps is None:
        steps = defaults.steps
    batch_size = defaults.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise InputError("--batch-size", f"must be >= 1, got {batch_size}")
    return checked, steps, batch_size, defaults.decode_patch


def _min_tumor_ml(run: RunFolder, model: str, given: bool) -> float | None:
    """``sample.min_tumor_ml`` where the run's config cleans sampled labels (``sample.clean_labels``)."""
    if model != "duo" or given or not run.run_config.is_file():
        return None
    sample = load_config(str(run.run_config)).sample
    return sample.min_tumor_ml if sample.clean_labels else None


def _conditioning(
    pipe: Pipeline, run: RunFolder, sampled: bool, scale: float | None, prevalence: float | None
) -> float | None:
    """Set ``pipe``'s ControlNet scale and labels' tumor prevalence (``sampled``: the duo model draws labels):
    each argument, else the run's ``sample`` section. -> the label LDM's training prevalence."""
    cfg = load_config(str(run.run_config)).sample if run.run_config.is_file() else SampleConfig()
    pipe.conditioning_scale = cfg.conditioning_scale if scale is None else scale
    if pipe.conditioning_scale < 0:
        raise InputError("--conditioning-scale", f"must be >= 0, got {pipe.conditioning_scale}")
    trained = pipe.tumor_prevalence
    pipe.tumor_prevalence = tumor_condition.resolve(trained, cfg.tumor_prevalence, prevalence, sampled)
    return trained


def _checked_pipeline(
    run: RunPath, model: str, controlnet_folder: str, sampler: Sampler, steps: int | None, labels: Path | None
) -> tuple[Pipeline, int, Given | None]:
    """The networks, the step count they will run and the given label volumes (mask-to-image); a step count
    an LDM cannot sample with, or labels that do not fit, are refused here, before anything is written."""
    pipe = load_pipeline(run, model, controlnet_folder)
    steps_run = sampler_steps(pipe.image.scheduler, sampler, steps)
    if pipe.label is not None:
        sampler_steps(pipe.label.scheduler, sampler, steps)
    given = read_label_folder(Path(labels), pipe) if labels is not None else None
    if given is not None and model != "duo":
        raise InputError("--labels", "mask-to-image needs the duo model (ControlNet)")
    return pipe, steps_run, given


def _cases(n: int, seed: int, given: Given | None) -> list[tuple[str, int, int]]:
    """(case id, index, sample seed) of every sample: ``synth_0000``... or ``<label case>_synth``."""
    if given is None and n < 1:
        raise InputError("--n", f"must be >= 1, got {n}")
    total = len(given) if given is not None else n
    return [
        (f"synth_{i:04d}" if given is None else f"{given[i][0]}_synth", i, _mix(seed, i))
        for i in range(total)
    ]


def _write_cases(
    pipe: Pipeline,
    cases: list[tuple[str, int, int]],
    folder: Path,
    sampler: Sampler,
    steps: int | None,
    batch_size: int,
    given: Given | None,
    progress: str | None,
) -> dict[str, dict]:
    """Sample ``cases`` batch by batch into ``folder`` (nnU-Net layout); ``progress``: the progress bar's
    title (None: no bar). Returns each sampled label's cleaning and novelty records (none when neither runs)."""
    from foscu.data.layout import image_path, label_path
    from foscu.data.nifti import write_nifti
    from foscu.engine.tracking import progress_bar

    affine = np.diag([*pipe.spacing, 1.0])
    cleaning: dict[str, dict] = {}
    with progress_bar(progress or "", len(cases), enabled=progress is not None) as advance:
        for chunk in _batches(cases, batch_size):
            labels = None
            if given is not None:
                labels = torch.from_numpy(np.stack([given[i][1] for _, i, _ in chunk]).astype(np.int64))
            elif pipe.label is not None and (pipe.min_tumor_ml is not None or pipe.novelty is not None):
                draw = partial(sample_labels, pipe, sampler=sampler, steps=steps)
                labels, records = draw_labels(pipe.novelty, draw, [s for _, _, s in chunk])
                cleaning.update({case_id: r for (case_id, _, _), r in zip(chunk, records, strict=True)})
            images, label_maps = generate_batch(pipe, [s for _, _, s in chunk], sampler, steps, labels)
            for j, (case_id, i, _) in enumerate(chunk):
                case_affine = given[i][2] if given is not None else affine
                write_nifti(image_path(folder, case_id), images[j], case_affine)
                if label_maps is not None:
                    write_nifti(label_path(folder, case_id), label_maps[j], case_affine, label=True)
            advance(len(chunk))
    return cleaning


def generate(
    run_root: RunPath,
    n: int,
    out: Path,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    labels_dir: Path | None = None,
    model: str = "duo",
    controlnet_folder: str = "controlnet",
    batch_size: int | None = None,
    progress: bool = True,
    conditioning_scale: float | None = None,
    tumor_prevalence: float | None = None,
) -> Path:
    """``foscu sample``: write N synthetic (image, label) pairs — or images for given labels — to ``out``.

    ``sampler``, ``steps``, ``batch_size``, ``conditioning_scale``, ``tumor_prevalence`` None: the run's
    config.yaml, else ``SampleConfig``'s defaults. Every bad argument is refused before anything is written.
    """
    from foscu.data.layout import write_dataset_json

    run, out = as_run(run_root), Path(out)
    dist = distributed.setup()
    sampler, steps, batch_size, decode_patch = _sample_settings(run, sampler, steps, batch_size)
    pipe, steps_run, given = _checked_pipeline(run, model, controlnet_folder, sampler, steps, labels_dir)
    pipe.decode_patch = decode_patch
    pipe.min_tumor_ml = _min_tumor_ml(run, model, given is not None)
    pipe.novelty, novelty_record = for_sampling(run, model, given is not None)
    sampled = model == "duo" and given is None
    trained = _conditioning(pipe, run, sampled, conditioning_scale, tumor_prevalence)
    cases = _cases(n, seed, given)
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "output folder exists and is not empty (choose another or remove it)")
    tmp = Path(str(distributed.broadcast_object(str(out.parent / f".tmp-{out.name}-{time.time_ns()}"))))
    start = time.perf_counter()
    try:
        title = f"sample {model}" if progress and dist.is_main else None
        cleaned = _write_cases(
            pipe, cases[dist.rank :: dist.world_size], tmp, sampler, steps, batch_size, given, title
        )
        label_cleaning.write_rank_records(tmp, dist.rank, cleaned)
        distributed.barrier()
        if dist.is_main:
            write_dataset_json(tmp, f"FOSCU synthetic ({model})", len(cases), labels=pipe.labels)
            per_case: dict[str, dict] = {c: {"seed": s} for c, _, s in cases}
            label_cleaning.merge_rank_records(tmp, per_case)
            presence = tumor_condition.record(per_case, cases, trained, pipe.tumor_prevalence)
            record = {
                "model": model,
                "sampler": sampler,
                "steps": steps_run,
                "seed": seed,
                "run": str(run.root),
                "controlnet": controlnet_folder if model == "duo" else None,
                "condition": pipe.condition,
                "conditioning_scale": pipe.conditioning_scale if model == "duo" else None,
                "tumor_condition": presence,
                "mask_to_image": given is not None,
                "seconds": round(time.perf_counter() - start, 2),
                "world_size": dist.world_size,
                "cases": per_case,
                "label_cleaning": pipe.min_tumor_ml and label_cleaning.settings(pipe.min_tumor_ml),
                "novelty": novelty_record,
            }
            write_json_atomic(tmp / "samples.json", record)
            tmp.rename(out)
        distributed.barrier()
    finally:
        if dist.is_main and tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out
