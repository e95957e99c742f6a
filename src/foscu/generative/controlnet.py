"""ControlNet on the frozen image LDM (paper eq. 2), with the label condition ``controlnet.condition`` picks:

- ``label_latent``: c_f(z_l), the label latent mean from the frozen label-VAE encoder (the paper);
- ``label_downsampled``: the one-hot label resized (nearest) to the latent grid — what MONAI's
  ControlNetLatentDiffusionInferer does; thin vessels vanish at the latent grid;
- ``label_fractions``: each class's share of every latent voxel (the one-hot averaged over the voxels a latent
  voxel covers): as cheap as ``label_downsampled``, but a vessel one voxel wide still shows as a fraction;
- ``label_fullres``: the full-resolution one-hot label through a strided conditioning embedding (as MAISI).

FOSCU calls the ControlNet directly: with its default conditioning embedding MONAI's inferer shrinks the label
to 1x1x1 and conditions on nothing, without an error.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from foscu.config import ControlNetStage, FoscuConfig
from foscu.data.loaders import LatentSet, one_hot
from foscu.engine.loop import Recipe
from foscu.errors import InputError
from foscu.generative import diffusion, latents, validation
from foscu.labels import LABELS

if TYPE_CHECKING:
    from foscu.context import StageContext


def embedding_channels(stage: ControlNetStage, downsamples: int) -> list[int]:
    """Conditioning-embedding channels: one stride-2 block per VAE downsampling for ``label_fullres``."""
    channels = list(stage.conditioning_embedding_num_channels)
    if stage.condition != "label_fullres":
        return [channels[-1]]
    if len(channels) != downsamples + 1:
        raise InputError(
            "controlnet.conditioning_embedding_num_channels",
            f"label_fullres needs {downsamples + 1} entries (the image VAE downsamples "
            f"{downsamples}x by 2), got {channels}",
        )
    return channels


def build_controlnet(
    stage: ControlNetStage, unet_cfg: dict, latent_channels: int, condition_channels: int, downsamples: int
) -> nn.Module:
    """A MONAI ControlNet shaped like the image LDM's UNet (its shared arguments taken from the UNet config)."""
    from monai.networks.nets import ControlNet

    accepted = set(inspect.signature(ControlNet.__init__).parameters)
    shared = {k: v for k, v in unet_cfg.items() if k in accepted}
    return ControlNet(
        spatial_dims=3,
        in_channels=latent_channels,
        conditioning_embedding_in_channels=condition_channels,
        conditioning_embedding_num_channels=embedding_channels(stage, downsamples),
        **shared,
    )


def init_from_unet(controlnet: nn.Module, unet: nn.Module) -> None:
    """Start the ControlNet from the trained UNet's encoder weights (the ControlNet recipe)."""
    own = controlnet.state_dict()
    shared = {k: v for k, v in unet.state_dict().items() if k in own and own[k].shape == v.shape}
    controlnet.load_state_dict(shared, strict=False)


def condition_channels(condition: str, label_latent_channels: int, num_classes: int) -> int:
    return label_latent_channels if condition == "label_latent" else num_classes


def make_condition(
    condition: str,
    labels: torch.Tensor,
    label_latent: torch.Tensor | None,
    latent_shape: tuple[int, ...],
    num_classes: int,
) -> torch.Tensor:
    """(N, X, Y, Z) labels (+ scaled label latents) -> the ControlNet input for the chosen mode."""
    if condition == "label_latent":
        if label_latent is None:
            raise ValueError("label_latent conditioning needs the label latents")
        return label_latent
    onehot = one_hot(labels, num_classes)  # (N, C, X, Y, Z)
    if condition == "label_downsampled":
        return F.interpolate(onehot, size=latent_shape, mode="nearest")
    if condition == "label_fractions":
        x, y, z = latent_shape
        return F.adaptive_avg_pool3d(onehot, (x, y, z))  # (N, C, x, y, z), sums to 1 over C
    return onehot


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
    batch["condition"] = make_condition(
        condition, labels, batch.get("label_latent"), latent_shape, num_classes
    )
    if class_weights:
        batch["weight"] = weight_map(labels, latent_shape, class_weights)
    return batch


# ---------------------------------------------------------------- the stage: recipe and rebuild


def build(info: dict[str, Any]) -> dict[str, nn.Module]:
    """Rebuild a ControlNet from its stage's config.yaml (the image LDM's UNet config is recorded there)."""
    stage = ControlNetStage.model_validate(info["section"])
    net = build_controlnet(
        stage, info["unet"], info["latent_channels"], info["condition_channels"], info["downsamples"]
    )
    return {"controlnet": net}


def needs(cfg: FoscuConfig) -> tuple[str, ...]:
    """The image VAE's latents and the image LDM it steers; the label VAE too when it conditions on its latent."""
    base = ("image-vae", "image-ldm")
    return ("label-vae", *base) if cfg.controlnet.condition == "label_latent" else base


def _class_weights(stage: ControlNetStage, labels: dict[str, int]) -> dict[int, float]:
    """``controlnet.class_weights`` by label value; an unknown class name is refused."""
    unknown = set(stage.class_weights or {}) - set(labels)
    if unknown:
        raise InputError(
            "controlnet.class_weights", f"unknown classes {sorted(unknown)} (known: {list(LABELS)})"
        )
    return {labels[k]: w for k, w in (stage.class_weights or {}).items()}


def _label_latents(
    ctx: StageContext, image_meta: dict[str, Any], latent_shape: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """Scaled label latents per split (``label_latent`` conditioning), on the image latents' grid and cases."""
    cache, meta = latents.read_cache(ctx.latents("label-vae"))
    if meta["case_ids"] != image_meta["case_ids"]:
        raise InputError(
            ctx.run.latents("label"), "label and image latents cover different cases; delete RUN/latents"
        )
    shape = tuple(cache["training"]["mean"].shape[2:])
    if shape != latent_shape:
        raise InputError(
            "label_vae.autoencoder",
            f"label_latent conditioning needs the label latent grid {shape} to equal the image latent grid "
            f"{latent_shape}",
        )
    return {split: cache[split]["mean"] * float(meta["scale_factor"]) for split in latents.SPLITS}


class ControlNetLoss:
    """The denoising loss of the image LDM under the ControlNet, on the batch's condition (paper eq. 2)."""

    def __init__(self, make_batch: Any, scheduler: Any, objective: str) -> None:
        self.make_batch, self.scheduler, self.objective = make_batch, scheduler, objective

    def __call__(self, nets: dict[str, nn.Module], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return diffusion.denoising_loss(
            nets, self.make_batch(batch), scheduler=self.scheduler, objective=self.objective
        )


def _first(extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The first case's extras (kept as a batch of one); None for an empty split."""
    return {k: v[:1] for k, v in extras.items()} if len(extras["labels"]) else None


def recipe(ctx: StageContext) -> Recipe:
    """A ControlNet, started from the trained image LDM's encoder, steering the frozen LDM with the label."""
    stage, num_classes = ctx.section, len(ctx.prepared.labels)
    ldm_nets, ldm_meta, ldm_info = ctx.load("image-ldm")
    downsamples = ctx.info("image-vae")["downsamples"]
    cache, meta = latents.read_cache(ctx.latents("image-vae"))
    scale, latent_shape = float(ldm_meta["scale_factor"]), tuple(cache["training"]["mean"].shape[2:])
    extras = {s: {"labels": latents.cached_labels(ctx.prepared, s, meta)} for s in latents.SPLITS}
    label_latent_channels = 0
    if stage.condition == "label_latent":
        for split, label_latent in _label_latents(ctx, meta, latent_shape).items():
            extras[split]["label_latent"] = label_latent
        label_latent_channels = int(extras["training"]["label_latent"].shape[1])
    cond_channels = condition_channels(stage.condition, label_latent_channels, num_classes)
    net = build_controlnet(
        stage, ldm_info["section"]["unet"], ldm_info["latent_channels"], cond_channels, downsamples
    )
    init_from_unet(net, ldm_nets["unet"])
    objective, scheduler = ldm_info["objective"], diffusion.scheduler_of(ldm_info)
    make_batch = partial(
        controlnet_batch,
        condition=stage.condition,
        latent_shape=latent_shape,
        num_classes=num_classes,
        class_weights=_class_weights(stage, ctx.prepared.labels),
    )
    val = validation.LatentValidation(
        cache.get("validation", {}).get("mean"), scale, scheduler, objective, ctx.device, stage.val_draws
    )
    info = {
        "latent_channels": ldm_info["latent_channels"],
        "latent_shape": list(latent_shape),
        "condition": stage.condition,
        "condition_channels": cond_channels,
        "downsamples": downsamples,
        "unet": ldm_info["section"]["unet"],
        "objective": objective,
    }
    return Recipe(
        {"unet": ldm_nets["unet"], "controlnet": net},
        ControlNetLoss(make_batch, scheduler, objective),
        LatentSet(cache["training"]["mean"], cache["training"]["sigma"], scale, extras["training"]),
        ["controlnet"],
        validation.ControlNetValidation(val, make_batch, extras["validation"], _first(extras["training"])),
        **ctx.best_by("val_loss"),
        info=info,
        metadata={"scale_factor": scale, "condition": stage.condition},
    )
