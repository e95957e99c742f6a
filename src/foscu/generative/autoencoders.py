"""label-vae, image-vae (MONAI AutoencoderKL) and the vqvae baseline (MONAI VQVAE): build + loss + codec.

label-vae encodes one-hot labels (5 channels) and decodes class logits, so its reconstruction term is the
cross-entropy against the label; image-vae reconstructs intensities with L1 or L2 (paper II-B: KL weight 1e-7).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foscu.config import AutoencoderStage, VQVAEStage


def build_autoencoder(stage: AutoencoderStage, channels: int) -> dict[str, nn.Module]:
    """AutoencoderKL(spatial_dims=3, **stage.autoencoder) (+ a PatchDiscriminator if adversarial)."""
    from monai.networks.nets import AutoencoderKL, PatchDiscriminator

    nets: dict[str, nn.Module] = {
        "autoencoder": AutoencoderKL(
            spatial_dims=3, in_channels=channels, out_channels=channels, **stage.autoencoder
        )
    }
    if stage.adversarial_weight > 0:
        nets["discriminator"] = PatchDiscriminator(
            spatial_dims=3, in_channels=channels, **stage.discriminator
        )
    return nets


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


def reconstruction_error(
    recon: torch.Tensor, target: torch.Tensor, kind: str, dice_weight: float = 0.0
) -> torch.Tensor:
    """``ce`` (+ ``dice_weight`` x foreground Dice loss) for label logits vs one-hot, ``l1``/``l2`` for images."""
    if kind == "ce":
        ce = F.cross_entropy(recon.float(), target.argmax(1))
        return ce + dice_weight * foreground_dice_loss(recon, target) if dice_weight else ce
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
    adversarial_weight: float = 0.0,
    dice_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Reconstruction + kl_weight * KL (+ least-squares patch-adversarial terms when weighted)."""
    x = batch[key]  # (B, C, X, Y, Z)
    recon, z_mu, z_sigma = nets["autoencoder"](x)
    rec = reconstruction_error(recon, x, kind, dice_weight)
    kl = kl_divergence(z_mu.float(), z_sigma.float())
    out = {"reconstruction": rec, "kl": kl}
    loss = rec + kl_weight * kl
    if adversarial_weight > 0 and "discriminator" in nets:
        from monai.losses import PatchAdversarialLoss

        adversarial = PatchAdversarialLoss(criterion="least_squares")
        generator = adversarial(
            nets["discriminator"](recon.contiguous().float())[-1],
            target_is_real=True,
            for_discriminator=False,
        )
        loss = loss + adversarial_weight * generator
        fake = adversarial(
            nets["discriminator"](recon.detach().contiguous().float())[-1],
            target_is_real=False,
            for_discriminator=True,
        )
        real = adversarial(
            nets["discriminator"](x.contiguous().float())[-1], target_is_real=True, for_discriminator=True
        )
        out["adversary_loss"] = adversarial_weight * 0.5 * (fake + real)
        out["generator_adversarial"] = generator
    out["loss"] = loss
    return out


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
