"""The five 3D U-Nets of the paper (II-C, Table II), all from MONAI.

Output channels: multi-class -> one channel per class of the task's label map (softmax, Dice + CE);
liver-only (binary) -> ONE channel read through a sigmoid, so the paper's "Dice + binary cross-entropy"
is literal (MONAI's DiceCELoss switches to BCE for one channel). ``num_output_channels`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from foscu.config import (
    ARCHS as ARCHS,  # the architectures' one origin, also importable from here
    Arch,
    check_arch,
)
from foscu.errors import InputError
from foscu.labels import Task, labels_for_task

if TYPE_CHECKING:
    from torch import nn

    from foscu.config import SegmentationConfig

# VNet (MONAI) halves every axis four times with 2x2x2 strided convolutions.
VNET_MULTIPLE = 16
# nnU-Net: never make a feature map smaller than this along an axis it downsamples.
MIN_FEATURE_MAP = 4


def num_output_channels(task: Task) -> int:
    """1 (sigmoid, liver-only) or the number of classes (softmax, multi-class)."""
    n = len(labels_for_task(task))
    return 1 if n == 2 else n


def dynunet_plan(
    patch: Sequence[int], spacing: Sequence[float], max_levels: int
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net-style kernels and strides for a patch and its voxel spacing (DynUNet's arguments).

    Per level, an axis is downsampled (stride 2) only while its spacing is within 2x the finest current
    spacing (anisotropy: a coarse axis waits until the others catch up), its size is even, and halving it
    keeps at least ``MIN_FEATURE_MAP`` voxels. Convolutions are 3 wide except along an axis still more than
    2x coarser than the finest, where they are 1 wide. At most ``max_levels`` levels (one per channel entry).
    MONAI ships DynUNet but not this planner, hence by hand.
    """
    sizes = [int(s) for s in patch]
    spacings = [float(s) for s in spacing]
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1, 1, 1]]
    first_kernel = [3 if sp <= 2 * min(spacings) else 1 for sp in spacings]
    kernels.append(first_kernel)
    while len(strides) < max_levels:
        finest = min(spacings)
        stride = [
            2 if sp <= 2 * finest and size % 2 == 0 and size // 2 >= MIN_FEATURE_MAP else 1
            for sp, size in zip(spacings, sizes, strict=True)
        ]
        if all(s == 1 for s in stride):
            break
        sizes = [size // s for size, s in zip(sizes, stride, strict=True)]
        spacings = [sp * s for sp, s in zip(spacings, stride, strict=True)]
        finest = min(spacings)
        kernels.append([3 if sp <= 2 * finest else 1 for sp in spacings])
        strides.append(stride)
    return kernels, strides


def required_multiple(
    arch: str, seg_cfg: SegmentationConfig, patch: Sequence[int], spacing: Sequence[float]
) -> list[int]:
    """Per axis, the multiple the patch size must be for ``arch`` to map it back to itself."""
    arch = check_arch(arch)
    if arch == "vnet":
        return [VNET_MULTIPLE] * 3
    if arch == "dynunet":
        _, strides = dynunet_plan(patch, spacing, len(seg_cfg.channels))
        return [math.prod(s[axis] for s in strides) for axis in range(3)]
    return [2 ** (len(seg_cfg.channels) - 1)] * 3  # unet, resunet, wideresunet: stride 2 per level


def check_patch(
    arch: str, seg_cfg: SegmentationConfig, patch: Sequence[int], spacing: Sequence[float]
) -> None:
    """Raise InputError naming the arch, the patch and the multiple it needs when the sizes do not fit."""
    multiple = required_multiple(arch, seg_cfg, patch, spacing)
    bad = [p % m != 0 or p < m for p, m in zip(patch, multiple, strict=True)]
    if any(bad):
        raise InputError(
            "--arch",
            f"{arch} needs a patch (ROI or segmentation.patch_size) that is a multiple of {tuple(multiple)} "
            f"per axis; got {tuple(int(p) for p in patch)}",
        )


def _plain_unet(
    seg_cfg: SegmentationConfig, out_channels: int, patch: list[int], spacing: Sequence[float]
) -> nn.Module:
    from monai.networks.nets import DynUNet

    levels = len(seg_cfg.channels)
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        kernel_size=[3] * levels,
        strides=[1] + [2] * (levels - 1),
        upsample_kernel_size=[2] * (levels - 1),
        filters=list(seg_cfg.channels),
        res_block=False,
    )


def _residual_unet(channels: list[int], out_channels: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        channels=channels,
        strides=[2] * (len(channels) - 1),
        num_res_units=2,
    )


def _resunet(
    seg_cfg: SegmentationConfig, out_channels: int, patch: list[int], spacing: Sequence[float]
) -> nn.Module:
    return _residual_unet(list(seg_cfg.channels), out_channels)


def _wideresunet(
    seg_cfg: SegmentationConfig, out_channels: int, patch: list[int], spacing: Sequence[float]
) -> nn.Module:
    return _residual_unet([c * seg_cfg.widen_factor for c in seg_cfg.channels], out_channels)


def _dynunet(
    seg_cfg: SegmentationConfig, out_channels: int, patch: list[int], spacing: Sequence[float]
) -> nn.Module:
    from monai.networks.nets import DynUNet

    kernels, strides = dynunet_plan(patch, spacing, len(seg_cfg.channels))
    levels = len(strides)
    # deep supervision heads: one per decoder level below the top, at most two (nnU-Net uses all but
    # the two lowest; at tiny depths this leaves one)
    heads = max(1, min(2, levels - 2))
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(seg_cfg.channels)[:levels],
        res_block=False,
        deep_supervision=levels > 2,
        deep_supr_num=heads,
    )


def _vnet(
    seg_cfg: SegmentationConfig, out_channels: int, patch: list[int], spacing: Sequence[float]
) -> nn.Module:
    from monai.networks.nets import VNet

    return VNet(spatial_dims=3, in_channels=1, out_channels=out_channels, act=("prelu", {}))


_BUILDERS: dict[Arch, Callable[[SegmentationConfig, int, list[int], Sequence[float]], nn.Module]] = {
    "unet": _plain_unet,
    "resunet": _resunet,
    "wideresunet": _wideresunet,
    "dynunet": _dynunet,
    "vnet": _vnet,
}


def build_segmenter(
    arch: str, task: Task, seg_cfg: SegmentationConfig, roi: Sequence[int], spacing: Sequence[float]
) -> nn.Module:
    """One of the paper's five 3D U-Nets for ``task``, sized for the patch (``patch_size`` or ``roi``).

    - unet: the classic 3D U-Net of the paper's Fig. 3 — TWO 3x3x3 convolution-norm-activation blocks per
      level, skip concatenation, transposed-convolution upsampling — as MONAI ``DynUNet`` with
      ``res_block=False``, isotropic 3x3x3 kernels and stride 2 at every level (the first convolution of
      a level is strided instead of a max-pool, as nnU-Net's plain U-Net). MONAI's ``UNet`` with
      ``num_res_units=2`` has one strided convolution per level and ``BasicUNet`` a fixed depth of five,
      so neither matches a configurable ``channels`` list.
    - resunet: MONAI ``UNet`` with ``num_res_units=2`` (residual units, PReLU, instance norm).
    - wideresunet: the same residual UNet with every channel count times ``seg_cfg.widen_factor``.
    - dynunet: MONAI ``DynUNet`` with kernels/strides from :func:`dynunet_plan` (patch + spacing) and deep
      supervision; in train mode its output is (B, 1 + heads, C, X, Y, Z).
    - vnet: MONAI ``VNet`` with PReLU activations (fixed 16..256 channels; needs multiples of 16).
    """
    patch = list(seg_cfg.patch_size or roi)
    if len(patch) != 3:
        raise InputError("segmentation.patch_size", f"expected 3 sizes, got {patch}")
    check_patch(arch, seg_cfg, patch, spacing)
    if len(seg_cfg.channels) < 2:
        raise InputError("segmentation.channels", f"need at least two levels, got {list(seg_cfg.channels)}")
    return _BUILDERS[check_arch(arch)](seg_cfg, num_output_channels(task), patch, spacing)


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters of a network."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
