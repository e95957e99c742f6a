import pytest
import torch

from foscu.config import SegmentationConfig, load_config
from foscu.errors import InputError
from foscu.segmentation.networks import (
    ARCHS,
    build_segmenter,
    check_patch,
    count_parameters,
    dynunet_plan,
    num_output_channels,
)

TINY_ROI = (32, 32, 16)
TINY_SPACING = (7.5, 7.5, 12.0)


@pytest.fixture(scope="module")
def tiny_seg() -> SegmentationConfig:
    return load_config("tiny").segmentation


def test_output_channels_sigmoid_for_binary_softmax_for_multiclass():
    assert num_output_channels("binary") == 1
    assert num_output_channels("multiclass") == 5


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_maps_tiny_volume_to_task_channels(arch, tiny_seg):
    net = build_segmenter(arch, "multiclass", tiny_seg, TINY_ROI, TINY_SPACING).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, *TINY_ROI))
    assert tuple(out.shape) == (1, 5, *TINY_ROI)


def test_dynunet_stacks_deep_supervision_heads_in_train_mode(tiny_seg):
    net = build_segmenter("dynunet", "binary", tiny_seg, TINY_ROI, TINY_SPACING).train()
    out = net(torch.zeros(1, 1, *TINY_ROI))
    assert tuple(out.shape) == (1, 2, 1, *TINY_ROI)  # full-resolution output + one head


def test_dynunet_plan_waits_for_the_coarse_axis():
    # 3.0 mm > 2 x 0.8 mm: z is neither convolved (kernel 1) nor downsampled at first; after one level
    # x/y are 1.6 mm and z joins. Sizes 160->80->40->20->10 and 64->32->16->8->4 (>= 4 voxels).
    kernels, strides = dynunet_plan((160, 160, 64), (0.8, 0.8, 3.0), max_levels=5)
    assert kernels[0] == [3, 3, 1]
    assert strides == [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    # isotropic tiny volume: stops when z would fall below 4 voxels
    _, strides = dynunet_plan((32, 32, 16), (1.0, 1.0, 1.0), max_levels=6)
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]]


def test_paper_roi_fits_every_arch_at_paper_channels():
    seg = load_config("paper").segmentation
    for arch in ARCHS:
        check_patch(arch, seg, (160, 160, 64), (0.8, 0.8, 3.0))


@pytest.mark.parametrize(("arch", "multiple"), [("unet", 4), ("resunet", 4), ("vnet", 16)])
def test_indivisible_patch_names_arch_and_multiple(arch, multiple, tiny_seg):
    with pytest.raises(InputError) as err:
        build_segmenter(arch, "binary", tiny_seg, (32, 32, 10), TINY_SPACING)
    assert arch in str(err.value) and f"({multiple}, {multiple}, {multiple})" in str(err.value)
    assert "(32, 32, 10)" in str(err.value)


def test_wide_resunet_widens_channels(tiny_seg):
    narrow = build_segmenter("resunet", "binary", tiny_seg, TINY_ROI, TINY_SPACING)
    wide = build_segmenter("wideresunet", "binary", tiny_seg, TINY_ROI, TINY_SPACING)
    first_narrow = next(m for m in narrow.modules() if isinstance(m, torch.nn.Conv3d))
    first_wide = next(m for m in wide.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_narrow.out_channels == 4 and first_wide.out_channels == 4 * tiny_seg.widen_factor
    assert count_parameters(wide) > count_parameters(narrow)


def test_unet_has_two_convolutions_per_level(tiny_seg):
    net = build_segmenter("unet", "binary", tiny_seg, TINY_ROI, TINY_SPACING)
    first_level = net.input_block
    convs = [m for m in first_level.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 2 and all(c.kernel_size == (3, 3, 3) for c in convs)


def test_count_parameters_by_hand():
    assert count_parameters(torch.nn.Conv3d(1, 2, 3)) == 1 * 2 * 27 + 2


def test_resunet_is_built_of_residual_units(tiny_seg):
    from monai.networks.blocks import ResidualUnit

    net = build_segmenter("resunet", "binary", tiny_seg, TINY_ROI, TINY_SPACING)
    units = [m for m in net.modules() if isinstance(m, ResidualUnit)]
    # encoder levels + bottom: two convolutions each (num_res_units=2); MONAI's decoder steps add one each
    assert [len(u.conv) for u in units] == [2, 2, 2, 1, 1]


def test_unknown_arch_is_refused_with_the_choices(tiny_seg):
    with pytest.raises(InputError, match=r"--arch: unknown architecture 'transformer' \(choose from unet, "):
        build_segmenter("transformer", "binary", tiny_seg, TINY_ROI, TINY_SPACING)
