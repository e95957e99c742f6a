"""STAGES: the dispatch table of ``foscu train STAGE``, and the one function that trains any of them.

A stage reads its predecessors only through their folders in the run (config.yaml + model.safetensors),
so a stage can always be rebuilt from its own folder, whatever the current config says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from foscu.config import FoscuConfig, dump_config, provenance
from foscu.data.loaders import LatentSet, VolumeSet, load_split, one_hot
from foscu.data.prepare import PreparedSet, read_prepared
from foscu.engine import distributed
from foscu.engine.checkpoint import load_weights
from foscu.engine.loop import FitResult, fit
from foscu.errors import InputError
from foscu.generative import autoencoders, controlnet, diffusion, latents
from foscu.generative.schedulers import training_scheduler
from foscu.runs import RunFolder, write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class Stage:
    name: str
    section: str  # the FoscuConfig section it reads
    kind: str  # autoencoder | vqvae | diffusion | controlnet
    data: str  # label | image
    needs: tuple[str, ...] = ()
    encoder: str | None = None  # diffusion stages: the autoencoder whose latents they model


STAGES: dict[str, Stage] = {
    "label-vae": Stage("label-vae", "label_vae", "autoencoder", "label"),
    "image-vae": Stage("image-vae", "image_vae", "autoencoder", "image"),
    "vqvae": Stage("vqvae", "vqvae", "vqvae", "image"),
    "label-ldm": Stage("label-ldm", "label_ldm", "diffusion", "label", ("label-vae",), "label-vae"),
    "image-ldm": Stage("image-ldm", "image_ldm", "diffusion", "image", ("image-vae",), "image-vae"),
    "vqvae-ldm": Stage("vqvae-ldm", "vqvae_ldm", "diffusion", "image", ("vqvae",), "vqvae"),
    "controlnet": Stage("controlnet", "controlnet", "controlnet", "image", ("image-vae", "image-ldm")),
}


@dataclass
class Recipe:
    """What a stage hands the engine: its networks, pure loss, data, validation and what it records."""

    nets: dict[str, nn.Module]
    loss_fn: Any
    train_set: Any
    validate: Any
    info: dict[str, Any]
    trainable: list[str]
    adversary: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


LATENT_KIND = {"label-vae": "label", "image-vae": "image", "vqvae": "vqvae"}


def required_stages(name: str, cfg: FoscuConfig) -> tuple[str, ...]:
    needs = STAGES[name].needs
    if name == "controlnet" and cfg.controlnet.condition == "label_latent":
        needs = ("label-vae", *needs)
    return needs


# ---------------------------------------------------------------- reading stages back from their folders


def read_stage_info(run: RunFolder, name: str) -> dict[str, Any]:
    path = run.stage(name) / "config.yaml"
    if not path.is_file():
        raise InputError(run.stage(name), f"stage {name} has not been trained in this run (no config.yaml)")
    return yaml.safe_load(path.read_text())


def build_from_info(info: dict[str, Any]) -> dict[str, nn.Module]:
    """Rebuild a stage's networks from the info its config.yaml holds."""
    from foscu.config import (
        AutoencoderStage,
        ControlNetStage,
        DiffusionStage,
        ImageAutoencoderStage,
        VQVAEStage,
    )

    kind = info["kind"]
    if kind == "autoencoder":  # one channel: the image VAE; one per class: the label VAE
        if info["channels"] == 1:
            return autoencoders.build_autoencoder(
                ImageAutoencoderStage.model_validate(info["section"]), info["channels"]
            )
        # label VAEs trained before `reconstruction` was refused for labels recorded it (it was never used)
        section = {k: v for k, v in info["section"].items() if k != "reconstruction"}
        return autoencoders.build_autoencoder(AutoencoderStage.model_validate(section), info["channels"])
    if kind == "vqvae":
        return autoencoders.build_vqvae(VQVAEStage.model_validate(info["section"]))
    if kind == "diffusion":
        return diffusion.build_diffusion(
            DiffusionStage.model_validate(info["section"]), info["latent_channels"]
        )
    stage = ControlNetStage.model_validate(info["section"])
    net = controlnet.build_controlnet(
        stage, info["unet"], info["latent_channels"], info["condition_channels"], info["downsamples"]
    )
    return {"controlnet": net}


def load_stage(run: RunFolder, name: str) -> tuple[dict[str, nn.Module], dict[str, Any], dict[str, Any]]:
    """A trained stage's networks (weights loaded, eval mode), its model metadata and its info."""
    if not run.model(name).is_file():
        raise InputError(
            run.stage(name), f"stage {name} has no model.safetensors: run `foscu train {name}` first"
        )
    info = read_stage_info(run, name)
    nets = build_from_info(info)
    trainable = {k: v for k, v in nets.items() if k != "discriminator"}
    meta = load_weights(run.model(name), trainable)
    for net in trainable.values():
        net.eval().requires_grad_(False)
    return trainable, meta, info


# ---------------------------------------------------------------- checks


def check_run_data(run: RunFolder, prepared: PreparedSet) -> None:
    """A run belongs to one prepared ROI and label map; a different one is refused."""
    path = run.root / "run.json"
    identity = {
        "data": str(prepared.root),
        "roi": list(prepared.roi),
        "spacing": list(prepared.spacing),
        "labels": prepared.labels,
    }
    if path.is_file():
        import json

        known = json.loads(path.read_text())
        for key in ("roi", "labels"):
            if known.get(key) != identity[key]:
                raise InputError(
                    path,
                    f"this run was made for {key} {known.get(key)}, but {prepared.root} has "
                    f"{identity[key]}: use a new --run folder",
                )
    elif distributed.current().is_main:
        write_json_atomic(path, identity)


def check_prerequisites(run: RunFolder, name: str, cfg: FoscuConfig) -> None:
    for need in required_stages(name, cfg):
        if not run.is_trained(need):
            raise InputError(
                run.stage(need),
                f"{name} needs stage {need}, which is not trained in this run: "
                f"run `foscu train {need}` first",
            )


def _divisible(roi: tuple[int, ...], factor: int, what: str, key: str) -> None:
    if any(s % factor for s in roi):
        raise InputError(key, f"{what} needs every axis divisible by {factor}, got {tuple(roi)}")


# ---------------------------------------------------------------- per-kind training recipes


def _latent_shape(autoencoder: nn.Module, channels: int, roi: tuple[int, int, int]) -> tuple[int, ...]:
    """(C, x, y, z) of the latent of one ROI: the encoder run on the meta device (shapes only, no arithmetic).

    The same code path as a real encode, so the shape is exact for any ROI and network; encoding a zero
    volume took ~10 s per paper VAE at 160 x 160 x 64 on one CPU thread.
    """
    import copy

    shadow = copy.deepcopy(autoencoder).to("meta").eval()
    with torch.no_grad():
        z, _ = autoencoders.encode(shadow, torch.zeros(1, channels, *roi, device="meta"))
    return tuple(z.shape[1:])


def _mean_foreground_dice(pred: torch.Tensor, target: torch.Tensor, labels: dict[str, int]) -> float:
    """Mean over cases of the mean foreground Dice (nnU-Net's empty-class rule), via foscu's one ``dice``."""
    from foscu.evaluation.segmentation_metrics import dice

    per_case = []
    for p, t in zip(pred.numpy(), target.numpy(), strict=True):
        scores = [v for v in dice(p, t, labels).values() if v is not None]
        per_case.append(sum(scores) / len(scores) if scores else 1.0)
    return sum(per_case) / len(per_case)


def _autoencoder_recipe(
    stage: Stage, cfg: FoscuConfig, prepared: PreparedSet, device: torch.device
) -> Recipe:
    section = getattr(cfg, stage.section)
    num_classes = len(prepared.labels)
    channels = num_classes if stage.data == "label" else 1
    if stage.kind == "vqvae":
        nets = autoencoders.build_vqvae(section)
        loss_fn = autoencoders.vqvae_loss
    else:
        nets = autoencoders.build_autoencoder(section, channels)
        kind = "ce" if stage.data == "label" else section.reconstruction
        key = "label_onehot" if stage.data == "label" else "image"
        loss_fn = partial(
            autoencoders.autoencoder_loss,
            key=key,
            kind=kind,
            kl_weight=section.kl_weight,
            adversarial_weight=section.adversarial_weight,
            dice_weight=section.dice_weight,
        )
    latent_shape = _latent_shape(nets["autoencoder"], channels, prepared.roi)
    train, val = load_split(prepared, "training"), load_split(prepared, "validation")

    def validate(eval_nets: dict[str, nn.Module]) -> dict[str, float]:
        if len(val) == 0:
            return {}
        net, scores = eval_nets["autoencoder"], []
        for i in range(0, len(val), 2):  # one batch at a time: a one-hot split would not fit at paper size
            x = (
                one_hot(val.labels[i : i + 2], num_classes)
                if stage.data == "label"
                else val.images[i : i + 2]
            )
            recon = autoencoders.decode(net, autoencoders.encode(net, x.to(device))[0]).float().cpu()
            if stage.data == "label":
                labels = val.labels[i : i + 2].long()
                scores.append(_mean_foreground_dice(recon.argmax(1), labels, prepared.labels) * len(x))
            else:
                scores.append(float((recon - x).abs().mean()) * len(x))
        return {"val_dice" if stage.data == "label" else "val_l1": sum(scores) / len(val)}

    info = {
        "channels": channels,
        "latent_channels": latent_shape[0],
        "latent_shape": list(latent_shape[1:]),
        "downsamples": _downsamples(prepared.roi, latent_shape[1:]),
    }
    trainable = ["autoencoder"]
    adversary = ["discriminator"] if "discriminator" in nets else []
    train_set = VolumeSet(train, num_classes, _patch(section.patch_size, stage, info, prepared))
    return Recipe(nets, loss_fn, train_set, validate, info, trainable, adversary)


def _patch(patch: list[int] | None, stage: Stage, info: dict, prepared: PreparedSet) -> list[int] | None:
    """Check an autoencoder's training patch against the ROI and the network's downsampling."""
    if patch is None:
        return None
    key = f"{stage.section}.patch_size"
    if len(patch) != 3 or any(p > r for p, r in zip(patch, prepared.roi, strict=True)):
        raise InputError(key, f"needs 3 sizes within the ROI {tuple(prepared.roi)}, got {patch}")
    _divisible(
        tuple(patch), 2 ** info["downsamples"], f"{stage.name} ({info['downsamples']} downsamplings)", key
    )
    return list(patch)


def _downsamples(roi: tuple[int, ...], latent: tuple[int, ...]) -> int:
    import math

    return int(round(math.log2(roi[0] / latent[0])))


def ensure_latents(run: RunFolder, encoder_stage: str, prepared: PreparedSet, seed: int) -> Path:
    """RUN/latents/<kind>.safetensors from the encoder now in the run (built once, reused by later stages)."""
    path = run.latents(LATENT_KIND[encoder_stage])
    dist = distributed.current()
    if dist.is_main and not latents.cache_is_current(path, run.model(encoder_stage)):
        nets, _, info = load_stage(run, encoder_stage)
        splits = {s: load_split(prepared, s) for s in latents.SPLITS}
        latents.build_cache(
            path,
            nets["autoencoder"],
            run.model(encoder_stage),
            splits,
            "label" if info["channels"] > 1 else "image",
            len(prepared.labels),
            dist.device,
            seed,
        )
    distributed.barrier()
    return path


def _diffusion_recipe(
    stage: Stage, cfg: FoscuConfig, prepared: PreparedSet, run: RunFolder, device: torch.device
) -> Recipe:
    section = getattr(cfg, stage.section)
    assert stage.encoder is not None  # every diffusion stage names its autoencoder in STAGES
    cache, meta = latents.read_cache(ensure_latents(run, stage.encoder, prepared, cfg.seed))
    scale = float(meta["scale_factor"])
    mean = cache["training"]["mean"]
    levels = len(section.unet.get("channels", [0, 0, 0, 0])) - 1
    _divisible(
        tuple(mean.shape[2:]),
        2**levels,
        f"{stage.name} (a {levels + 1}-level UNet on the latent grid)",
        f"{stage.section}.unet.channels",
    )
    nets = diffusion.build_diffusion(section, mean.shape[1])
    scheduler = training_scheduler(section.scheduler, section.objective)
    val_latents = cache.get("validation", {}).get("mean")

    def validate(eval_nets: dict[str, nn.Module]) -> dict[str, float]:
        if val_latents is None or len(val_latents) == 0:
            return {}
        z = (val_latents * scale).to(device)
        return {"val_loss": diffusion.validation_loss(eval_nets, z, None, scheduler, section.objective)}

    info = {
        "latent_channels": int(mean.shape[1]),
        "latent_shape": list(mean.shape[2:]),
        "encoder": stage.encoder,
        "objective": section.objective,
        "scheduler": section.scheduler.model_dump(),
    }
    loss_fn = partial(diffusion.denoising_loss, scheduler=scheduler, objective=section.objective)
    # the cache stays on the CPU: fit pins it (on CUDA) and moves each batch to the device
    train_set = LatentSet(mean, cache["training"]["sigma"], scale)
    metadata = {"scale_factor": scale, "encoder": stage.encoder}
    return Recipe(nets, loss_fn, train_set, validate, info, ["unet"], metadata=metadata)


def controlnet_batch(
    batch: dict[str, Any],
    *,
    condition: str,
    latent_shape: tuple[int, ...],
    num_classes: int,
    class_weights: dict[int, float],
) -> dict[str, Any]:
    """Add the ControlNet input (and per-voxel loss weights) to a batch holding ``labels`` (B, X, Y, Z)."""
    labels = batch["labels"]
    batch = dict(batch)
    batch["condition"] = controlnet.make_condition(
        condition, labels, batch.get("label_latent"), latent_shape, num_classes
    )
    if class_weights:
        batch["weight"] = diffusion.weight_map(labels, latent_shape, class_weights)
    return batch


def _controlnet_recipe(
    stage: Stage, cfg: FoscuConfig, prepared: PreparedSet, run: RunFolder, device: torch.device
) -> Recipe:
    section = cfg.controlnet
    ldm_nets, ldm_meta, ldm_info = load_stage(run, "image-ldm")
    vae_info = read_stage_info(run, "image-vae")
    cache, meta = latents.read_cache(ensure_latents(run, "image-vae", prepared, cfg.seed))
    scale = float(ldm_meta["scale_factor"])
    num_classes = len(prepared.labels)
    latent_shape = tuple(cache["training"]["mean"].shape[2:])
    extras: dict[str, dict[str, torch.Tensor]] = {s: {} for s in ("training", "validation")}
    label_latent_channels = 0
    for split in extras:
        extras[split]["labels"] = load_split(prepared, split).labels
    if section.condition == "label_latent":
        label_cache, label_meta = latents.read_cache(ensure_latents(run, "label-vae", prepared, cfg.seed))
        if label_meta["case_ids"] != meta["case_ids"]:
            raise InputError(
                run.latents("label"), "label and image latents cover different cases; delete RUN/latents"
            )
        label_shape = tuple(label_cache["training"]["mean"].shape[2:])
        if label_shape != latent_shape:
            raise InputError(
                "label_vae.autoencoder",
                f"label_latent conditioning needs the label latent grid "
                f"{label_shape} to equal the image latent grid {latent_shape}",
            )
        label_latent_channels = int(label_cache["training"]["mean"].shape[1])
        for split in extras:
            extras[split]["label_latent"] = label_cache[split]["mean"] * float(label_meta["scale_factor"])
    from foscu.labels import LABELS

    unknown = set(section.class_weights or {}) - set(prepared.labels)
    if unknown:
        raise InputError(
            "controlnet.class_weights", f"unknown classes {sorted(unknown)} (known: {list(LABELS)})"
        )
    class_weights = {prepared.labels[k]: w for k, w in (section.class_weights or {}).items()}
    cond_channels = controlnet.condition_channels(section.condition, label_latent_channels, num_classes)
    net = controlnet.build_controlnet(
        section,
        ldm_info["section"]["unet"],
        ldm_info["latent_channels"],
        cond_channels,
        vae_info["downsamples"],
    )
    controlnet.init_from_unet(net, ldm_nets["unet"])
    nets = {"unet": ldm_nets["unet"], "controlnet": net}
    objective = ldm_info["objective"]
    from foscu.config import SchedulerConfig

    scheduler = training_scheduler(SchedulerConfig.model_validate(ldm_info["scheduler"]), objective)
    make_batch = partial(
        controlnet_batch,
        condition=section.condition,
        latent_shape=latent_shape,
        num_classes=num_classes,
        class_weights=class_weights,
    )

    def loss_fn(nets_: dict[str, nn.Module], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return diffusion.denoising_loss(nets_, make_batch(batch), scheduler=scheduler, objective=objective)

    val_mean = cache.get("validation", {}).get("mean")

    def validate(eval_nets: dict[str, nn.Module]) -> dict[str, float]:
        if val_mean is None or len(val_mean) == 0:
            return {}
        batch = make_batch({k: v.to(device) for k, v in extras["validation"].items()})
        z = (val_mean * scale).to(device)
        return {"val_loss": diffusion.validation_loss(eval_nets, z, batch["condition"], scheduler, objective)}

    train_set = LatentSet(  # on the CPU, as in _diffusion_recipe
        cache["training"]["mean"], cache["training"]["sigma"], scale, extras["training"]
    )
    info = {
        "latent_channels": ldm_info["latent_channels"],
        "latent_shape": list(latent_shape),
        "condition": section.condition,
        "condition_channels": cond_channels,
        "downsamples": vae_info["downsamples"],
        "unet": ldm_info["section"]["unet"],
        "objective": objective,
    }
    metadata = {"scale_factor": scale, "condition": section.condition}
    return Recipe(nets, loss_fn, train_set, validate, info, ["controlnet"], metadata=metadata)


# ---------------------------------------------------------------- the one entry point


def train_stage(
    name: str,
    cfg: FoscuConfig,
    data: Path,
    run_root: Path,
    resume: bool = False,
    progress: bool = True,
    folder_name: str | None = None,
) -> FitResult:
    """Train one stage of the run (``foscu train STAGE``); ``folder_name`` lets ablations sit side by side."""
    if name not in STAGES:
        raise InputError("STAGE", f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    stage = STAGES[name]
    dist = distributed.setup()
    prepared = read_prepared(Path(data))
    run = RunFolder(run_root)
    check_prerequisites(run, name, cfg)  # refuse before anything is written into the run folder
    check_run_data(run, prepared)
    torch.manual_seed(cfg.seed)
    if stage.kind in ("autoencoder", "vqvae"):
        recipe = _autoencoder_recipe(stage, cfg, prepared, dist.device)
    elif stage.kind == "diffusion":
        recipe = _diffusion_recipe(stage, cfg, prepared, run, dist.device)
    else:
        recipe = _controlnet_recipe(stage, cfg, prepared, run, dist.device)
    folder = run.stage(folder_name or name)
    section = getattr(cfg, stage.section)
    info = {
        "stage": name,
        "kind": stage.kind,
        "section": section.model_dump(mode="json"),
        **recipe.info,
        "roi": list(prepared.roi),
        "spacing": list(prepared.spacing),
        "labels": prepared.labels,
        "provenance": provenance(cfg.seed),
    }
    if dist.is_main:
        write_text_atomic(run.root / "config.yaml", dump_config(cfg))
        write_text_atomic(folder / "config.yaml", yaml.safe_dump(info, sort_keys=False))
    train = section.train
    monitor = None
    return fit(
        folder,
        recipe.nets,
        recipe.loss_fn,
        recipe.train_set,
        train,
        trainable=recipe.trainable,
        adversary=recipe.adversary,
        validate=recipe.validate,
        monitor=monitor,
        seed=cfg.seed,
        resume=resume,
        description=folder.name,
        metadata=recipe.metadata,
        progress=progress,
    )
