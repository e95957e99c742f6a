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

import torch
import torch.nn.functional as F
from torch import nn

from foscu.config import ControlNetStage
from foscu.data.loaders import one_hot
from foscu.errors import InputError


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
