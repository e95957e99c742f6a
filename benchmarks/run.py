"""FOSCU speed benchmarks (issue #3, item 6): ours against the MONAI-tutorial way, in one process.

Each benchmark runs both ways on the same networks (same weights) and the same inputs, and prints one JSON
line on stdout: {"name", "ours_s", "reference_s", "ratio" = reference_s / ours_s, ...}. Progress goes to
stderr. Speed is measured on untrained networks of the preset's sizes (timing does not depend on the
weights); the quality cost of few-step sampling is measured on networks briefly trained on a phantom.

    python benchmarks/run.py --quick                        # smoke run, < 1 min on 2 CPU cores (tiny sizes)
    python benchmarks/run.py                                # demo sizes: 64x64x32 images, 4x32x32x16 latents
    python benchmarks/run.py --device cuda --preset paper   # 160x160x64 on a GPU, with peak memory
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from foscu.config import FoscuConfig, SchedulerConfig, load_config
from foscu.labels import LABELS, NUM_CLASSES

# The ROI each preset is prepared at (`foscu prepare --roi`); the presets themselves do not hold it.
PRESET_ROI = {"tiny": (32, 32, 16), "demo": (64, 64, 32), "paper": (160, 160, 64)}
TRAIN_TIMESTEPS = 1000  # the DDPM reference samples with all 1000 training timesteps
QUALITY_STAGES = ("label-vae", "image-vae", "label-ldm", "image-ldm", "controlnet")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


# ---------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float | None, Any]:
    """(seconds, peak GPU memory in MiB or None, result) of one call, the GPU synchronised around it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return seconds, peak, result


def compare(
    ours: Callable[[], Any], reference: Callable[[], Any], warmup: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """Median seconds of ``repeats`` calls each after ``warmup``, ours and reference interleaved so that a
    load change on a shared machine hits both alike."""
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    peaks: dict[str, float] = {}
    for i in range(warmup + repeats):
        for side, fn in (("ours", ours), ("reference", reference)):
            seconds, peak, _ = timed(fn, device)
            if i >= warmup:
                times[side].append(seconds)
                if peak is not None:
                    peaks[side] = max(peaks.get(side, 0.0), peak)
    out = result_line(statistics.median(times["ours"]), statistics.median(times["reference"]))
    out["repeats"] = repeats
    if peaks:
        out.update(ours_peak_mib=round(peaks["ours"], 1), reference_peak_mib=round(peaks["reference"], 1))
    return out


def result_line(ours_s: float, reference_s: float) -> dict[str, Any]:
    return {
        "ours_s": round(ours_s, 4),
        "reference_s": round(reference_s, 4),
        "ratio": round(reference_s / ours_s, 2),
    }


# ---------------------------------------------------------------- networks and inputs


@dataclass
class Bench:
    """The preset's networks (untrained, shared by both ways) and random inputs at the preset's ROI."""

    cfg: FoscuConfig
    roi: tuple[int, int, int]
    device: torch.device
    nets: dict[str, nn.Module]
    images: torch.Tensor  # (N, 1, X, Y, Z) in [0, 1]
    labels: torch.Tensor  # (N, X, Y, Z) class indices
    downsamples: int

    def amp(self, train: Any) -> torch.autocast:
        """Autocast as the engine uses it: the stage's ``train.amp`` dtype on a GPU, fp32 on the CPU."""
        enabled = self.device.type == "cuda" and train.amp != "none"
        dtype = torch.bfloat16 if train.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)


def bench_config(preset: str) -> FoscuConfig:
    """The preset, with 1000 training timesteps (the DDPM reference's step count) for both LDMs, on the
    epsilon objective the DDIM/DDPM comparison is about (the demo preset trains rflow)."""
    sections = ("label_ldm", "image_ldm")
    overrides = [f"{s}.scheduler.num_train_timesteps={TRAIN_TIMESTEPS}" for s in sections]
    overrides += [f"{s}.objective=epsilon" for s in (*sections, "vqvae_ldm")]
    return load_config(preset, [*overrides, "sample.sampler=ddim", "sample.steps=20"])


def build_bench(cfg: FoscuConfig, roi: tuple[int, int, int], cases: int, device: torch.device) -> Bench:
    from foscu.generative import autoencoders, controlnet, diffusion

    torch.manual_seed(0)
    image_vae = autoencoders.build_autoencoder(cfg.image_vae, 1)["autoencoder"]
    label_vae = autoencoders.build_autoencoder(cfg.label_vae, NUM_CLASSES)["autoencoder"]
    for vae in (image_vae, label_vae):
        vae.to(device).eval().requires_grad_(False)
    with torch.no_grad():
        image_latent = image_vae.encode_stage_2_inputs(torch.zeros(1, 1, *roi, device=device))
        label_latent = label_vae.encode_stage_2_inputs(torch.zeros(1, NUM_CLASSES, *roi, device=device))
    downsamples = int(round(np.log2(roi[0] / image_latent.shape[2])))
    condition_channels = controlnet.condition_channels(
        cfg.controlnet.condition, label_latent.shape[1], NUM_CLASSES
    )
    nets = {
        "image_vae": image_vae,
        "label_vae": label_vae,
        "image_unet": diffusion.build_diffusion(cfg.image_ldm, image_latent.shape[1])["unet"],
        "label_unet": diffusion.build_diffusion(cfg.label_ldm, label_latent.shape[1])["unet"],
        "controlnet": controlnet.build_controlnet(
            cfg.controlnet, cfg.image_ldm.unet, image_latent.shape[1], condition_channels, downsamples
        ),
    }
    controlnet.init_from_unet(nets["controlnet"], nets["image_unet"])
    for net in nets.values():
        net.to(device)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand((cases, 1, *roi), generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (cases, *roi), generator=generator).to(device)
    return Bench(cfg, roi, device, nets, images, labels, downsamples)


def describe_machine(device: torch.device, threads: int) -> dict[str, Any]:
    import monai

    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    out = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


# ---------------------------------------------------------------- training: cached latents vs re-encoding


@dataclass
class Cache:
    """What ``foscu train`` encodes once per run: latent mean and sigma, and the scale factor."""

    mean: torch.Tensor
    sigma: torch.Tensor
    scale: float
    seconds: float


def build_cache(b: Bench, kind: str) -> Cache:
    """The one-off encoding of the whole (benchmark) training set, timed: paid once per run, not per step."""
    from foscu.generative import latents

    vae = b.nets[f"{kind}_vae"]
    x, classes = (b.images, None) if kind == "image" else (b.labels, NUM_CLASSES)
    seconds, _, (mean, sigma) = timed(lambda: latents.encode_volumes(vae, x, 2, b.device, classes), b.device)
    z = mean + sigma * torch.randn(mean.shape, generator=torch.Generator().manual_seed(2))
    scale = latents.scale_factor(z, f"benchmark {kind} VAE")
    return Cache(mean.to(b.device), sigma.to(b.device), scale, seconds)


def make_step(
    b: Bench,
    nets: dict[str, nn.Module],
    trainable: str,
    batch_fn: Callable[[], dict],
    loss_fn: Callable,
    train: Any,
) -> Callable[[], float]:
    """The reference: one optimiser step written out as the MONAI tutorials write it (AdamW, autocast,
    clipping), on the batch ``batch_fn`` makes."""
    params = list(nets[trainable].parameters())
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)

    def step() -> float:
        with b.amp(train):  # the tutorial encodes inside autocast too
            batch = batch_fn()
            loss = loss_fn(nets, batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        opt.step()
        return float(loss.detach())

    return step


def engine_step(
    b: Bench, nets: dict[str, nn.Module], trainable: str, train_set: Any, loss_fn: Callable, train: Any
) -> Callable[[], float]:
    """Ours: what ``fit`` runs per step -- the next batch from the engine's DataLoader over the cached
    latents (``train_loader``), moved to the device, through the engine's ``TrainStep`` (so a regression
    in fit's step shows in the ratio)."""
    from foscu.engine.loop import TrainStep, _to, train_loader

    take_step = TrainStep(nets, loss_fn, train, b.device, [trainable], name="benchmark")
    loader, _ = train_loader(train_set, train, seed=0, start=0, total=1 << 30)
    batches = iter(loader)
    counter = {"step": 0}

    def step() -> float:
        losses = take_step(_to(next(batches), b.device), counter["step"])
        counter["step"] += 1
        return float(losses["loss"].detach())

    return step


def latent_set(cache: Cache, extras: dict[str, torch.Tensor]) -> Any:
    """The LatentSet ``foscu train`` builds (on the CPU: the engine moves each batch to the device)."""
    from foscu.data.loaders import LatentSet

    cpu = {k: v.cpu() for k, v in extras.items()}
    return LatentSet(cache.mean.cpu(), cache.sigma.cpu(), cache.scale, cpu)


def reference_batches(batch_size: int, n: int, reencode: Callable[[list[int]], dict]) -> Callable[[], dict]:
    """The reference's batches: the engine's batch indices, their volumes through the frozen encoder
    (``reencode``), as the MONAI tutorials do every step."""
    from foscu.engine.loop import StepBatches

    batches = StepBatches(n, batch_size, seed=0, rank=0, world=1, start=0, total=1 << 30)
    counter = {"step": 0}

    def reference() -> dict:
        keys = batches.batch(counter["step"])
        counter["step"] += 1
        return reencode([i for i, _ in keys])

    return reference


def bench_diffusion_train(b: Bench, warmup: int, repeats: int) -> dict[str, Any]:
    from functools import partial

    from foscu.generative import diffusion
    from foscu.generative.schedulers import training_scheduler

    section = b.cfg.image_ldm
    cache = build_cache(b, "image")
    vae = b.nets["image_vae"]

    @torch.no_grad()
    def reencode(index: list[int]) -> dict:
        return {"latent": vae.encode_stage_2_inputs(b.images[index]) * cache.scale}  # (B, c, x, y, z)

    scheduler = training_scheduler(section.scheduler, section.objective)
    loss_fn = partial(diffusion.denoising_loss, scheduler=scheduler, objective=section.objective)
    train, n = section.train, len(cache.mean)

    def unet() -> dict[str, nn.Module]:
        return {"unet": copy.deepcopy(b.nets["image_unet"]).train().requires_grad_(True)}

    steps = {
        "ours": engine_step(b, unet(), "unet", latent_set(cache, {}), loss_fn, train),
        "reference": make_step(
            b, unet(), "unet", reference_batches(train.batch_size, n, reencode), loss_fn, train
        ),
    }
    line = {
        "name": "diffusion_train_step",
        **compare(steps["ours"], steps["reference"], warmup, repeats, b.device),
    }
    line.update(
        batch_size=section.train.batch_size,
        shape=[*b.roi],
        latent_shape=list(cache.mean.shape[1:]),
        cache_build_s=round(cache.seconds, 3),
        cache_cases=len(cache.mean),
        note="image-ldm step; ours: the engine's step (engine.loop.TrainStep on batches of the engine's "
        "DataLoader over cached latents), reference: the tutorial's hand-written step with "
        "encode_stage_2_inputs every batch under no_grad; same UNet weights, batch indices, AdamW; "
        "cache_build_s is paid once per run",
    )
    return line


def bench_controlnet_train(b: Bench, warmup: int, repeats: int) -> dict[str, Any]:
    from functools import partial

    from foscu.data.loaders import one_hot
    from foscu.generative import diffusion
    from foscu.generative.controlnet import controlnet_batch
    from foscu.generative.schedulers import training_scheduler

    section, condition = b.cfg.controlnet, b.cfg.controlnet.condition
    cache = build_cache(b, "image")
    extras = {"labels": b.labels}
    label_scale = 1.0
    if condition == "label_latent":
        label_cache = build_cache(b, "label")
        label_scale = label_cache.scale
        extras["label_latent"] = label_cache.mean * label_scale
    image_vae, label_vae = b.nets["image_vae"], b.nets["label_vae"]

    @torch.no_grad()
    def reencode(index: list[int]) -> dict:
        batch = {
            "latent": image_vae.encode_stage_2_inputs(b.images[index]) * cache.scale,
            "labels": b.labels[index],
        }
        if condition == "label_latent":
            batch["label_latent"] = label_vae.encode(one_hot(b.labels[index], NUM_CLASSES))[0] * label_scale
        return batch

    make_batch = partial(
        controlnet_batch,
        condition=condition,
        latent_shape=tuple(cache.mean.shape[2:]),
        num_classes=NUM_CLASSES,
        class_weights={LABELS[name]: w for name, w in (section.class_weights or {}).items()},
    )
    scheduler = training_scheduler(b.cfg.image_ldm.scheduler, b.cfg.image_ldm.objective)

    def loss_fn(nets: dict[str, nn.Module], batch: dict) -> dict[str, torch.Tensor]:
        return diffusion.denoising_loss(
            nets, make_batch(batch), scheduler=scheduler, objective=b.cfg.image_ldm.objective
        )

    unet = copy.deepcopy(b.nets["image_unet"]).eval().requires_grad_(False)
    train, n = section.train, len(cache.mean)

    def nets() -> dict[str, nn.Module]:
        return {"unet": unet, "controlnet": copy.deepcopy(b.nets["controlnet"]).train().requires_grad_(True)}

    steps = {
        "ours": engine_step(b, nets(), "controlnet", latent_set(cache, extras), loss_fn, train),
        "reference": make_step(
            b, nets(), "controlnet", reference_batches(train.batch_size, n, reencode), loss_fn, train
        ),
    }
    line = {
        "name": "controlnet_train_step",
        **compare(steps["ours"], steps["reference"], warmup, repeats, b.device),
    }
    line.update(
        batch_size=section.train.batch_size,
        shape=[*b.roi],
        condition=condition,
        class_weights=section.class_weights,
        note="ControlNet step on the frozen image UNet; ours: the engine's TrainStep on the engine's "
        "DataLoader over cached latents, reference: the tutorial's hand-written step re-encoding every batch",
    )
    return line


# ---------------------------------------------------------------- sampling one pair: DDIM-K vs DDPM-1000


def bench_pipeline(b: Bench) -> Any:
    """The sampling Pipeline over the benchmark networks, as load_pipeline builds it from a run folder."""
    from foscu.generative.sampling import LatentModel, Pipeline

    image_cache, label_cache = build_cache(b, "image"), build_cache(b, "label")
    models = {}
    for kind, cache, section in (
        ("image", image_cache, b.cfg.image_ldm),
        ("label", label_cache, b.cfg.label_ldm),
    ):
        unet = b.nets[f"{kind}_unet"].eval().requires_grad_(False)
        scheduler = SchedulerConfig.model_validate(section.scheduler.model_dump())
        models[kind] = LatentModel(
            unet, scheduler, "epsilon", cache.scale, tuple(cache.mean.shape[1:]), b.nets[f"{kind}_vae"]
        )
    return Pipeline(
        models["image"],
        models["label"],
        b.nets["controlnet"].eval().requires_grad_(False),
        b.cfg.controlnet.condition,
        b.roi,
        labels=dict(LABELS),
        decode_patch=b.cfg.sample.decode_patch,
    )


def with_timesteps(pipe: Any, timesteps: int) -> Any:
    """The pipeline with every LDM's schedule shortened to ``timesteps`` training timesteps: DDPM samples only
    with all of them, and a DDPM step costs the same (one UNet pass + one scheduler step) whatever T is."""
    from dataclasses import replace

    def shorten(model: Any) -> Any:
        if model is None:
            return None
        scheduler = model.scheduler.model_copy(update={"num_train_timesteps": timesteps})
        return replace(model, scheduler=scheduler)

    return replace(pipe, image=shorten(pipe.image), label=shorten(pipe.label))


def reference_sampling(
    run: Callable[[int], Any], reference_steps: int, device: torch.device
) -> tuple[float, float | None, str]:
    """Seconds of ``TRAIN_TIMESTEPS``-step DDPM: timed whole, or from ``reference_steps`` steps and 2 steps
    (fixed cost = decoding etc.) extrapolated linearly per step. ``run(k)`` samples with DDPM over k
    training timesteps."""
    if reference_steps >= TRAIN_TIMESTEPS:
        seconds, peak, _ = timed(lambda: run(TRAIN_TIMESTEPS), device)
        return seconds, peak, f"DDPM-{TRAIN_TIMESTEPS} timed whole"
    two, _, _ = timed(lambda: run(2), device)
    many, peak, _ = timed(lambda: run(reference_steps), device)
    per_step = (many - two) / (reference_steps - 2)
    seconds = two + (TRAIN_TIMESTEPS - 2) * per_step
    note = (
        f"DDPM-{TRAIN_TIMESTEPS} extrapolated linearly from {reference_steps} measured DDPM steps "
        f"({many:.2f} s) and 2 steps ({two:.2f} s): {per_step:.4f} s per step"
    )
    return seconds, peak, note


def bench_sample_pair(b: Bench, pipe: Any, reference_steps: int, repeats: int) -> dict[str, Any]:
    from foscu.generative.sampling import generate_batch

    steps = b.cfg.sample.steps
    seed = [7]
    generate_batch(pipe, seed, "ddim", 1)  # warm-up: every network once
    ours = [timed(lambda: generate_batch(pipe, seed, "ddim", steps), b.device) for _ in range(repeats)]
    reference_s, reference_peak, note = reference_sampling(
        lambda k: generate_batch(with_timesteps(pipe, k), seed, "ddpm", None), reference_steps, b.device
    )
    ours_s = statistics.median(t for t, _, _ in ours)
    line = {"name": f"sample_pair_ddim{steps}_vs_ddpm{TRAIN_TIMESTEPS}", **result_line(ours_s, reference_s)}
    line.update(repeats=repeats, shape=[*b.roi], condition=pipe.condition)
    if b.device.type == "cuda":
        line.update(
            ours_peak_mib=round(max(p for _, p, _ in ours), 1), reference_peak_mib=round(reference_peak, 1)
        )
    line["note"] = (
        f"one label->image pair (label LDM, argmax, ControlNet image LDM, both decodes); ours: DDIM-{steps} "
        f"(the preset's sample.steps); reference: {note}"
    )
    return line


def bench_batched_sampling(b: Bench, pipe: Any, steps: int = 2) -> dict[str, Any]:
    """Seconds per pair: the preset's sample.batch_size pairs in one batch vs one pair at a time."""
    from foscu.generative.sampling import generate_batch

    seeds = list(range(b.cfg.sample.batch_size))
    ours, _, _ = timed(lambda: generate_batch(pipe, seeds, "ddim", steps), b.device)
    one_by_one, _, _ = timed(lambda: [generate_batch(pipe, [s], "ddim", steps) for s in seeds], b.device)
    line = {
        "name": f"batched_sampling_{len(seeds)}_per_pair",
        **result_line(ours / len(seeds), one_by_one / len(seeds)),
    }
    line.update(shape=[*b.roi], note=f"DDIM-{steps} pairs, batch {len(seeds)} vs batch 1, seconds per pair")
    return line


# ---------------------------------------------------------------- the quality cost of few steps


def foreground_dice(a: np.ndarray, c: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in either label set (1.0 when neither has any)."""
    scores = [
        2.0 * np.logical_and(a == value, c == value).sum() / ((a == value).sum() + (c == value).sum())
        for value in range(1, NUM_CLASSES)
        if (a == value).any() or (c == value).any()
    ]
    return float(np.mean(scores)) if scores else 1.0


def train_phantom_run(folder: Path, cases: int, steps: int, timesteps: int) -> tuple[Path, Path]:
    """A tiny phantom set (32x32x16), prepared, and the five Duo-Diffusion stages trained ``steps`` steps each
    at the tiny preset (with ``timesteps`` training timesteps), through the same train_stage as ``foscu train``."""
    from foscu.data.phantom import write_phantom_set
    from foscu.data.prepare import prepare_dataset
    from foscu.stages import train_stage

    roi = PRESET_ROI["tiny"]
    write_phantom_set(folder / "raw", cases, roi, (7.5, 7.5, 12.0), seed=3, workers=1, progress=False)
    prepared = folder / "prepared"
    prepare_dataset(
        folder / "raw", prepared, roi=roi, center="tumor", split=(0.75, 0.25, 0.0), seed=0, progress=False
    )
    sections = ("label_vae", "image_vae", "label_ldm", "image_ldm", "controlnet")
    overrides = [f"{s}.scheduler.num_train_timesteps={timesteps}" for s in ("label_ldm", "image_ldm")]
    for s in sections:
        overrides += [
            f"{s}.train.steps={steps}",
            f"{s}.train.checkpoint_every={steps}",
            f"{s}.train.val_every={steps}",
        ]
    cfg = load_config("tiny", overrides)
    run = folder / "run"
    for stage in QUALITY_STAGES:
        start = time.perf_counter()
        result = train_stage(stage, cfg, prepared, run, progress=False)
        log(f"quality: trained {stage} {steps} steps in {time.perf_counter() - start:.1f} s {result.last}")
    return prepared, run


def bench_quality(
    steps: int, cases: int, samples: int, train_steps: int, reference_steps: int
) -> dict[str, Any]:
    """DDIM-``steps`` against DDIM and DDPM with ``reference_steps`` steps, same seeds, on trained networks:
    per-voxel differences of the same seeds' samples, and each set's FRD against the real volumes."""
    from foscu.data.loaders import load_split
    from foscu.data.prepare import read_prepared
    from foscu.evaluation.fid import fid_25d
    from foscu.generative.sampling import generate_batch, load_pipeline

    with tempfile.TemporaryDirectory(prefix="foscu-bench-") as tmp:
        # DDPM samples only with every training timestep: the networks train with reference_steps of them
        prepared, run = train_phantom_run(Path(tmp), cases, train_steps, reference_steps)
        prep = read_prepared(prepared)
        real = [v[0].numpy() for split in ("training", "validation") for v in load_split(prep, split).images]
        pipe = load_pipeline(run)
    device = next(pipe.image.unet.parameters()).device
    seeds = list(range(1000, 1000 + samples))
    runs = {}
    for sampler, k in (("ddim", steps), ("ddim", reference_steps), ("ddpm", reference_steps)):
        seconds, _, (images, labels) = timed(lambda: generate_batch(pipe, seeds, sampler, k), device)  # noqa: B023
        runs[f"{sampler}{k}"] = {"seconds": seconds / samples, "images": images, "labels": labels}
        log(f"quality: {samples} pairs {sampler.upper()}-{k} in {seconds:.1f} s")
    ours, ode, ddpm = runs[f"ddim{steps}"], runs[f"ddim{reference_steps}"], runs[f"ddpm{reference_steps}"]

    def mad(a: np.ndarray, c: np.ndarray) -> float:
        return round(float(np.abs(a - c).mean()), 4)

    line = {
        "name": f"sampling_quality_ddim{steps}_vs_ddpm{reference_steps}",
        **result_line(ours["seconds"], ddpm["seconds"]),
    }
    for key, r in runs.items():
        line[f"frd_{key}"] = round(
            fid_25d(real, list(r["images"]), features="frd", slice_stride=2)["mean"], 3
        )
    line.update(
        {
            f"mad_ddim{steps}_vs_ddim{reference_steps}": mad(ours["images"], ode["images"]),
            f"label_agreement_ddim{steps}_vs_ddim{reference_steps}": round(
                float((ours["labels"] == ode["labels"]).mean()), 4
            ),
            f"label_dice_ddim{steps}_vs_ddim{reference_steps}": round(
                foreground_dice(ours["labels"], ode["labels"]), 4
            ),
            f"mad_ddim{steps}_vs_ddpm{reference_steps}": mad(ours["images"], ddpm["images"]),
            "mad_between_seeds_ddpm": mad(ddpm["images"][:-1], ddpm["images"][1:]),
            "samples": samples,
            "real_volumes": len(real),
            "shape": list(PRESET_ROI["tiny"]),
            "note": f"tiny preset networks trained {train_steps} steps per stage on a {cases}-case 32x32x16 "
            f"phantom "
            f"({reference_steps} training timesteps); same seeds for every sampler; FRD (radiomics-style 2.5D Frechet, "
            f"foscu.evaluation.fid) against the {len(real)} real volumes; images in [0, 1]; seconds per pair",
        }
    )
    return line


# ---------------------------------------------------------------- main


@dataclass(frozen=True)
class Plan:
    preset: str
    warmup: int = 1  # training steps before timing
    repeats: int = 2  # timed training steps per side
    sample_repeats: int = 1  # timed DDIM pairs
    reference_steps: int = 20  # DDPM steps actually timed for the 1000-step reference
    quality_cases: int = 16  # phantom cases the quality networks train on
    quality_samples: int = 8  # pairs per sampler in the quality comparison
    quality_train_steps: int = 200  # steps per stage
    quality_reference_steps: int = TRAIN_TIMESTEPS


def make_plan(args: argparse.Namespace, device: torch.device) -> Plan:
    """--quick: tiny sizes, a 20-step DDPM reference extrapolated to 1000, barely trained quality networks
    (a smoke run, < 1 min); otherwise the preset's sizes and the 1000-step reference timed whole (~2.5 min
    for a demo pair on 2 CPU cores; ``--reference-steps`` extrapolates from fewer)."""
    if args.quick:
        plan = Plan(
            args.preset or "tiny",
            sample_repeats=2,
            quality_cases=8,
            quality_samples=4,
            quality_train_steps=10,
            quality_reference_steps=40,
        )
    elif device.type == "cuda":
        plan = Plan(args.preset or "demo", repeats=10, sample_repeats=3, reference_steps=TRAIN_TIMESTEPS)
    else:
        plan = Plan(args.preset or "demo", reference_steps=TRAIN_TIMESTEPS, quality_samples=6)
    if args.reference_steps is not None:
        plan = Plan(**{**plan.__dict__, "reference_steps": args.reference_steps})
    return plan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (< 1 min on 2 CPU cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--preset", choices=tuple(PRESET_ROI), default=None, help="default: demo (quick: tiny)"
    )
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=None,
        help="DDPM steps actually timed for the 1000-step reference (>= 20; 1000: no extrapolation)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-quality", action="store_true", help="speed only (no phantom training)")
    args = parser.parse_args(argv)
    if args.reference_steps is not None and args.reference_steps < 20:
        parser.error("--reference-steps must be >= 20")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plan = make_plan(args, device)
    machine = describe_machine(device, torch.get_num_threads())
    log(f"plan {plan}; machine {machine}")
    common = {"device": args.device, "preset": plan.preset, "torch_threads": torch.get_num_threads()}
    cfg = bench_config(plan.preset)
    roi = PRESET_ROI[plan.preset]
    cases = 2 * max(cfg.image_ldm.train.batch_size, cfg.controlnet.train.batch_size)
    b = build_bench(cfg, roi, cases, device)
    benchmarks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("diffusion train step", lambda: bench_diffusion_train(b, plan.warmup, plan.repeats)),
        ("controlnet train step", lambda: bench_controlnet_train(b, plan.warmup, plan.repeats)),
    ]
    pipe_box: dict[str, Any] = {}

    def pipe() -> Any:
        if "pipe" not in pipe_box:
            pipe_box["pipe"] = bench_pipeline(b)
        return pipe_box["pipe"]

    benchmarks += [
        ("sample one pair", lambda: bench_sample_pair(b, pipe(), plan.reference_steps, plan.sample_repeats)),
        ("batched sampling", lambda: bench_batched_sampling(b, pipe())),
    ]
    if not args.skip_quality:
        benchmarks.append(
            (
                "quality of few steps",
                lambda: bench_quality(
                    cfg.sample.steps,
                    plan.quality_cases,
                    plan.quality_samples,
                    plan.quality_train_steps,
                    plan.quality_reference_steps,
                ),
            )
        )
    for title, bench in benchmarks:
        start = time.perf_counter()
        line = bench()
        emit({**line, **common})
        log(f"{title}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
