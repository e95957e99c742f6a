"""label-vae, image-vae (MONAI AutoencoderKL) and the vqvae baseline (MONAI VQVAE): build + loss + codec.

label-vae encodes one-hot labels (5 channels) and decodes class logits, so its reconstruction term is the
cross-entropy against the label; image-vae reconstructs intensities with L1 or L2 (paper II-B: KL weight 1e-7),
optionally weighted 1 + ``structure_weight`` on the vessel and tumor voxels of the label the batch carries.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from foscu.config import AutoencoderStage, ImageAutoencoderStage, VQVAEStage
from foscu.data.loaders import SplitVolumes, VolumeSet, load_split, one_hot
from foscu.engine.loop import Recipe
from foscu.errors import InputError
from foscu.evaluation.reconstruction import StructureScores
from foscu.labels import HEPATIC_VEIN, PORTAL_VEIN, TUMOR

if TYPE_CHECKING:
    from foscu.context import StageContext


def build_autoencoder(stage: AutoencoderStage, channels: int) -> dict[str, nn.Module]:
    """AutoencoderKL(spatial_dims=3, **stage.autoencoder) for ``channels`` in and out."""
    from monai.networks.nets import AutoencoderKL

    return {
        "autoencoder": AutoencoderKL(
            spatial_dims=3, in_channels=channels, out_channels=channels, **stage.autoencoder
        )
    }


def build_vqvae(stage: VQVAEStage) -> dict[str, nn.Module]:
    from monai.networks.nets import VQVAE

    return {"autoencoder": VQVAE(spatial_dims=3, in_channels=1, out_channels=1, **stage.vqvae)}


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(1).mean()


def foreground_dice_loss(logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of the foreground classes, pooled over the batch (MONAI DiceLoss), averaged over classes."""
    from monai.losses import DiceLoss

    dice = DiceLoss(include_background=False, softmax=True, batch=True)
    return dice(logits.float(), onehot.float())


STRUCTURES = (PORTAL_VEIN, HEPATIC_VEIN, TUMOR)  # the thin or small structures structure_weight favours


def structure_weights(label_onehot: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, C, X, Y, Z) one-hot -> (B, 1, X, Y, Z) voxel weights: 1 + ``weight`` on vessels and tumor, else 1."""
    present = [c for c in STRUCTURES if c < label_onehot.shape[1]]  # a liver-only label map has none
    return 1.0 + weight * label_onehot[:, present].float().sum(1, keepdim=True)


def reconstruction_error(
    recon: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    dice_weight: float = 0.0,
    voxel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``ce`` (+ ``dice_weight`` x foreground Dice loss) for label logits vs one-hot, ``l1``/``l2`` for images.

    With ``voxel_weights`` (images), the weighted mean sum(w * e) / sum(w) of the voxel errors e.
    """
    if kind == "ce":
        ce = F.cross_entropy(recon.float(), target.argmax(1))
        return ce + dice_weight * foreground_dice_loss(recon, target) if dice_weight else ce
    if voxel_weights is not None:
        error = (
            (recon.float() - target.float()).abs() if kind == "l1" else (recon.float() - target.float()) ** 2
        )
        weights = voxel_weights.expand_as(error)
        return (weights * error).sum() / weights.sum()
    if kind == "l2":
        return F.mse_loss(recon.float(), target.float())
    return F.l1_loss(recon.float(), target.float())


def autoencoder_loss(
    nets: dict[str, nn.Module],
    batch: dict[str, Any],
    *,
    key: str,
    kind: str,
    kl_weight: float,
    dice_weight: float = 0.0,
    structure_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Reconstruction + kl_weight * KL (paper II-B); images: the reconstruction weighted 1 + ``structure_weight``
    on the vessel and tumor voxels of the batch's ``label_onehot`` (the same crop as its image)."""
    x = batch[key]  # (B, C, X, Y, Z)
    recon, z_mu, z_sigma = nets["autoencoder"](x)
    weights = structure_weights(batch["label_onehot"], structure_weight) if structure_weight else None
    rec = reconstruction_error(recon, x, kind, dice_weight, weights)
    kl = kl_divergence(z_mu.float(), z_sigma.float())
    return {"reconstruction": rec, "kl": kl, "loss": rec + kl_weight * kl}


def vqvae_loss(nets: dict[str, nn.Module], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """L1 reconstruction + the VQ commitment/codebook loss MONAI's VQVAE returns."""
    recon, quantization = nets["autoencoder"](batch["image"])
    rec = F.l1_loss(recon.float(), batch["image"].float())
    return {"loss": rec + quantization, "reconstruction": rec, "quantization": quantization}


def encode(autoencoder: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mean and sigma; a VQ-VAE is deterministic (sigma 0, the quantised latent as mean)."""
    net: Any = getattr(autoencoder, "module", autoencoder)  # MONAI AutoencoderKL or VQVAE
    if hasattr(net, "encode_stage_2_inputs") and not hasattr(net, "sampling"):  # VQVAE
        z = net.encode_stage_2_inputs(x)
        return z, torch.zeros_like(z)
    z_mu, z_sigma = net.encode(x)
    return z_mu, z_sigma


def decode(autoencoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Latent -> volume (label logits or image); a VQ-VAE quantises first."""
    net: Any = getattr(autoencoder, "module", autoencoder)
    if hasattr(net, "decode_stage_2_outputs"):
        return net.decode_stage_2_outputs(z)
    return net.decode(z)


# ---------------------------------------------------------------- the stages: recipe and rebuild


def build(info: dict[str, Any]) -> dict[str, nn.Module]:
    """Rebuild a VAE from its stage's config.yaml: one channel is the image VAE, one per class the label VAE."""
    section = dict(info["section"])
    if info["channels"] == 1:
        image_stage = ImageAutoencoderStage.model_validate(section)
        if image_stage.pretrained == "maisi":  # weights come from the stage's own model.safetensors
            from foscu.generative.maisi import build_maisi

            return build_maisi(image_stage, info["intensity_scale"])
        return build_autoencoder(image_stage, 1)
    section.pop("reconstruction", None)  # older label-vae folders recorded it; it never took effect
    return build_autoencoder(AutoencoderStage.model_validate(section), info["channels"])


def build_vq(info: dict[str, Any]) -> dict[str, nn.Module]:
    """Rebuild the VQ-VAE baseline from its stage's config.yaml."""
    return build_vqvae(VQVAEStage.model_validate(info["section"]))


def latent_shape(autoencoder: nn.Module, channels: int, roi: tuple[int, ...]) -> tuple[int, ...]:
    """(C, x, y, z) of the latent of one ROI: the encoder run on the meta device (shapes only, no arithmetic).

    The same code path as a real encode, so the shape is exact for any ROI and network; encoding a zero
    volume took ~10 s per paper VAE at 160 x 160 x 64 on one CPU thread.
    """
    shadow = copy.deepcopy(autoencoder).to("meta").eval()
    with torch.no_grad():
        z, _ = encode(shadow, torch.zeros(1, channels, *roi, device="meta"))
    return tuple(z.shape[1:])


def check_divisible(shape: tuple[int, ...], factor: int, what: str, key: str) -> None:
    """Refuse a grid that ``factor``-fold downsampling would not divide evenly."""
    if any(s % factor for s in shape):
        raise InputError(key, f"{what} needs every axis divisible by {factor}, got {tuple(shape)}")


def _patch(ctx: StageContext, downsamples: int) -> list[int] | None:
    """The section's training patch, checked against the ROI and the network's downsampling."""
    patch, roi = ctx.section.patch_size, ctx.prepared.roi
    if patch is None:
        return None
    key = f"{ctx.section_name}.patch_size"
    if len(patch) != 3 or any(p > r for p, r in zip(patch, roi, strict=True)):
        raise InputError(key, f"needs 3 sizes within the ROI {tuple(roi)}, got {patch}")
    check_divisible(tuple(patch), 2**downsamples, f"{ctx.name} ({downsamples} downsamplings)", key)
    return list(patch)


def _mean_foreground_dice(pred: torch.Tensor, target: torch.Tensor, labels: dict[str, int]) -> float:
    """Mean over cases of the mean foreground Dice (nnU-Net's empty-class rule), via foscu's one ``dice``."""
    from foscu.evaluation.segmentation_metrics import dice

    per_case = []
    for p, t in zip(pred.numpy(), target.numpy(), strict=True):
        scores = [v for v in dice(p, t, labels).values() if v is not None]
        per_case.append(sum(scores) / len(scores) if scores else 1.0)
    return sum(per_case) / len(per_case)


class ReconstructionScore:
    """Validation: mean foreground Dice of label reconstructions (``val_dice``), or for images the L1
    (``val_l1``) and, per structure, the contrast kept and the L1 inside it (evaluation/reconstruction.py)."""

    def __init__(self, val: SplitVolumes, data: str, labels: dict[str, int], device: torch.device) -> None:
        self.val, self.data, self.labels, self.device = val, data, labels, device

    def _input(self, i: int) -> torch.Tensor:
        if self.data == "label":
            return one_hot(self.val.labels[i : i + 2], len(self.labels))
        return self.val.images[i : i + 2]

    def __call__(self, nets: dict[str, nn.Module]) -> dict[str, float]:
        if len(self.val) == 0:
            return {}
        net, total = nets["autoencoder"], 0.0
        structures = StructureScores(self.labels)
        for i in range(
            0, len(self.val), 2
        ):  # one batch at a time: a one-hot split would not fit at paper size
            x = self._input(i)
            recon = decode(net, encode(net, x.to(self.device))[0]).float().cpu()
            if self.data == "label":
                target = self.val.labels[i : i + 2].long()
                total += _mean_foreground_dice(recon.argmax(1), target, self.labels) * len(x)
            else:
                total += float((recon - x).abs().mean()) * len(x)
                structures.add(x, recon, self.val.labels[i : i + 2])
        if self.data == "label":
            return {"val_dice": total / len(self.val)}
        return {"val_l1": total / len(self.val), **structures.result()}


def _recipe(
    ctx: StageContext,
    nets: dict[str, nn.Module],
    loss_fn: Any,
    data: str,
    recorded: dict[str, Any] | None = None,
    trainable: tuple[str, ...] = ("autoencoder",),
) -> Recipe:
    """What every autoencoder stage hands the engine, given its networks, loss, what its config.yaml records
    beyond the latent shape and what trains (nothing: a frozen pretrained autoencoder)."""
    labels = ctx.prepared.labels
    channels = len(labels) if data == "label" else 1
    shape = latent_shape(nets["autoencoder"], channels, ctx.prepared.roi)
    downsamples = int(round(math.log2(ctx.prepared.roi[0] / shape[1])))
    info = {
        "channels": channels,
        "latent_channels": shape[0],
        "latent_shape": list(shape[1:]),
        "downsamples": downsamples,
        **(recorded or {}),
    }
    validation = load_split(ctx.prepared, "validation")
    train_set = VolumeSet(load_split(ctx.prepared, "training"), len(labels), _patch(ctx, downsamples))
    validate = ReconstructionScore(validation, data, labels, ctx.device)
    best = ctx.best_by("val_dice", "max") if data == "label" else ctx.best_by("val_l1")
    return Recipe(nets, loss_fn, train_set, list(trainable), validate, info=info, **best)


def recipe(ctx: StageContext, data: str) -> Recipe:
    """label-vae (``data="label"``: one-hot in, class logits out, cross-entropy + Dice) or image-vae (L1/L2)."""
    section = ctx.section
    if getattr(section, "structure_weight", 0.0) and len(ctx.prepared.labels) <= min(STRUCTURES):
        raise InputError(
            f"{ctx.section_name}.structure_weight",
            f"{ctx.prepared.root} holds liver-only labels: no vessel or tumor voxels to weight",
        )
    recorded: dict[str, Any] = {}
    if data == "image" and section.pretrained == "maisi":  # generative/maisi.py
        from foscu.generative.maisi import pretrained_nets

        nets, recorded = pretrained_nets(section, load_split(ctx.prepared, "training").images)
    else:
        nets = build_autoencoder(section, len(ctx.prepared.labels) if data == "label" else 1)
    loss_fn = partial(
        autoencoder_loss,
        key="label_onehot" if data == "label" else "image",
        kind="ce" if data == "label" else section.reconstruction,
        kl_weight=section.kl_weight,
        dice_weight=section.dice_weight,
        structure_weight=getattr(section, "structure_weight", 0.0),  # image_vae only
    )
    frozen = data == "image" and section.freeze
    return _recipe(ctx, nets, loss_fn, data, recorded, () if frozen else ("autoencoder",))


def vqvae_recipe(ctx: StageContext) -> Recipe:
    """The VQ-VAE baseline of Table I: L1 + the VQ losses on images."""
    return _recipe(ctx, build_vqvae(ctx.section), vqvae_loss, "image")
