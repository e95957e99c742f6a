"""A pretrained image autoencoder for the image-VAE stage: MAISI's, MONAI's ``AutoencoderKlMaisi``.

``image_vae.pretrained: maisi`` builds the network from MAISI's published configuration (``MAISI_PUBLISHED``),
``image_vae.maisi`` overriding any of its constructor arguments; ``weights`` loads a state dict safely (a
``.pt``/``.pth`` through ``torch.load(weights_only=True)``, or ``.safetensors``), ``freeze`` keeps it as
loaded, and ``intensity`` says how FOSCU's min-max [0, 1] images enter it. Its latents (4 channels, 4x
compression) are cached and used by the LDMs and the ControlNet as any image VAE's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi
from torch import nn

from foscu.errors import InputError

if TYPE_CHECKING:
    from foscu.config import ImageAutoencoderStage

# MAISI's image autoencoder as published: "autoencoder_def" of configs/config_network_rflow.json in NVIDIA's
# NV-Generate-CTMR (github.com/NVIDIA-Medtech/NV-Generate-CTMR; the same in MONAI tutorials
# generation/maisi/configs/config_maisi3d-rflow.json). In and out channels (1) are set by FOSCU.
MAISI_PUBLISHED: dict[str, Any] = {
    "latent_channels": 4,
    "num_channels": [64, 128, 256],
    "num_res_blocks": [2, 2, 2],
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "attention_levels": [False, False, False],
    "with_encoder_nonlocal_attn": False,
    "with_decoder_nonlocal_attn": False,
    "use_checkpointing": False,
    "use_convtranspose": False,
    "norm_float16": True,
    "num_splits": 4,
    "dim_split": 1,
}
# Two published settings only save GPU memory on 512^3 volumes and change no weight; FOSCU builds without
# them: norm_float16 casts norm outputs to float16, which a float32 convolution refuses (FOSCU encodes its
# latent cache outside autocast, and the CPU never autocasts); num_splits cuts each convolution into pieces
# along dim_split, and at FOSCU's ROIs a piece can be narrower than the 3x3x3 kernel (tiny preset: 2 voxels).
# Measured: 4 splits and 1 give the same latents and decodes to 6e-6 on a 64x64x32 volume.
FOSCU_EXECUTION: dict[str, Any] = {"norm_float16": False, "num_splits": 1}

WEIGHTS_SOURCE = (
    "NVIDIA's MAISI autoencoder, fetched by hand: models/autoencoder_v1.pt of huggingface.co/nvidia/"
    "NV-Generate-CT (CT+MR, NVIDIA Open Model License) or models/autoencoder_v2.pt of huggingface.co/nvidia/"
    "NV-Generate-MR (NVIDIA non-commercial licence); FOSCU never downloads it"
)
WRAPPER_KEYS = ("unet_state_dict", "state_dict")  # MAISI's scripts unwrap "unet_state_dict" when present
# MAISI's MR intensity: the 0.0-99.5 percentile range to [0, 1] (NV-Generate-CTMR scripts/transforms.py,
# define_fixed_intensity_transform; unclipped there, so a voxel above the 99.5th percentile exceeds 1)
PERCENTILE = 99.5


class MaisiAutoencoder(AutoencoderKlMaisi):
    """AutoencoderKlMaisi whose encoder sees ``x / intensity_scale`` and whose decoder returns ``* scale``.

    The state dict is AutoencoderKlMaisi's, key for key, so MAISI's published files load unchanged; the
    scale is not a weight (config.yaml records it). 1.0 is FOSCU's min-max convention, unchanged.
    """

    def __init__(self, intensity_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.intensity_scale = float(intensity_scale)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().encode(x / self.intensity_scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return super().decode(z) * self.intensity_scale


def network_args(stage: ImageAutoencoderStage) -> dict[str, Any]:
    """MAISI's published constructor arguments, FOSCU's execution settings, then the stage's ``maisi``."""
    return {**MAISI_PUBLISHED, **FOSCU_EXECUTION, **stage.maisi}


def build_maisi(stage: ImageAutoencoderStage, intensity_scale: float = 1.0) -> dict[str, nn.Module]:
    """{"autoencoder": MaisiAutoencoder} for one channel in and out, from ``network_args``."""
    args = network_args(stage)
    net = MaisiAutoencoder(intensity_scale, spatial_dims=3, in_channels=1, out_channels=1, **args)
    return {"autoencoder": net}


def intensity_scale(images: torch.Tensor, intensity: str) -> float:
    """The divisor that maps FOSCU's min-max images to MAISI's percentile convention (1.0 for ``minmax``).

    MAISI maps each MR volume's 0.0-99.5 percentile range to [0, 1]. A min-max volume's 0th percentile is 0,
    so that is ``x / q`` with q its 99.5th percentile. One q serves every volume (the median over the
    training images) so decoding a sampled latent, which has no source volume, uses the same one.
    """
    if intensity == "minmax" or len(images) == 0:
        return 1.0
    per_case = [float(np.percentile(v.float().numpy(), PERCENTILE)) for v in images]
    scale = float(np.median(per_case))
    if not scale > 0:
        raise InputError("image_vae.intensity", f"percentile: the training images' median {PERCENTILE}th "
                         f"percentile is {scale:.3g}; use intensity: minmax")  # fmt: skip
    return scale


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``; MAISI's wrapper key
    ``unet_state_dict``, or ``state_dict``, unwrapped); InputError for anything else."""
    if not path.is_file():
        raise InputError(path, f"no such weight file; it is {WEIGHTS_SOURCE}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise InputError(path, f"not a valid safetensors file ({type(err).__name__})") from None
    if path.suffix not in (".pt", ".pth"):
        raise InputError(path, "expected a .pt, .pth or .safetensors weight file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses any pickle that is not tensors and plain containers
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"not a plain state dict, refused ({first})") from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "holds no state dict of tensors")
    return state


def load_pretrained(net: nn.Module, path: Path) -> str:
    """Load ``path`` into ``net`` (all keys, all shapes); returns the file's sha256. Key mismatch: InputError
    naming the first missing and unexpected keys."""
    state = read_state_dict(path)
    expected = set(net.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise InputError(
            path,
            f"does not match the MAISI autoencoder built from image_vae (maisi overrides?): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}",
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise InputError(path, lines[0] if lines else "shape mismatch with image_vae's network") from None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained_nets(
    stage: ImageAutoencoderStage, training_images: torch.Tensor
) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """The image-VAE stage's MAISI network, weights loaded if given, and what its config.yaml records."""
    assert stage.intensity is not None  # resolved by the config
    scale = intensity_scale(training_images, stage.intensity)
    nets = build_maisi(stage, scale)
    info: dict[str, Any] = {"network": "AutoencoderKlMaisi", "intensity_scale": scale}
    if stage.weights is not None:
        info["weights_sha256"] = load_pretrained(nets["autoencoder"], Path(stage.weights))
    return nets, info
