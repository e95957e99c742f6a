"""The 2D feature networks of the 2.5D Fréchet distances: layouts, weight files, devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from foscu.errors import InputError


def random_weights(name: str, path: Path) -> Path:
    import torch

    from foscu.evaluation.feature_nets import NETWORKS

    torch.manual_seed(0)
    torch.save(NETWORKS[name][0]().state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("name", "n_params", "key", "shape"),
    [  # parameter counts worked out by hand from the published layouts (see the test docstring)
        ("inception", 23_850_960, "Mixed_7c.branch3x3dbl_3b.conv.weight", (384, 384, 3, 1)),
        ("radimagenet", 23_534_592, "layer4.0.downsample.0.bias", (2048,)),
    ],
)
def test_feature_net_loads_weights_file_and_gives_2048_features(
    tmp_path: Path, name: str, n_params: int, key: str, shape: tuple
) -> None:
    """Inception-v3 without aux head: torchvision's 27,161,264 minus the aux head 3,326,696, plus 8 classes
    x 2049 for the 1008-class fc. RadImageNet: ResNet-50 without fc (23,508,032) plus 26,560 conv biases."""
    import torch

    from foscu.evaluation.feature_nets import load_feature_net

    net, used = load_feature_net(name, random_weights(name, tmp_path / "w.pth"))
    assert used == tmp_path / "w.pth"
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert tuple(net.state_dict()[key].shape) == shape
    with torch.inference_mode():
        features = net(torch.rand(2, 1, 32, 16))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


def test_missing_weights_say_which_file_goes_where(tmp_path: Path) -> None:
    import torch

    from foscu.evaluation.feature_nets import INCEPTION_URL, load_feature_net

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(InputError) as caught:
            load_feature_net("inception")
    finally:
        torch.hub.set_dir(previous)
    message = str(caught.value)
    expected = tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert message.startswith(f"{expected}: inception weights not found") and INCEPTION_URL in message
    assert "\n" not in message
    with pytest.raises(InputError, match="RadImageNet-ResNet50_notop.pth"):
        load_feature_net("radimagenet", tmp_path / "absent.pth")


def test_weights_of_the_wrong_network_are_refused(tmp_path: Path) -> None:
    from foscu.evaluation.feature_nets import load_feature_net

    wrong = random_weights("radimagenet", tmp_path / "resnet.pth")
    with pytest.raises(InputError, match="does not fit the inception network: missing"):
        load_feature_net("inception", wrong)


def test_inception_average_pool_ignores_padding_like_the_tf_graph() -> None:
    import torch

    from foscu.evaluation.feature_nets import _avg_pool_3x3

    # count_include_pad=False: a constant image stays constant at the border (torchvision's corner: 4/9)
    assert torch.equal(_avg_pool_3x3(torch.ones(1, 1, 4, 4)), torch.ones(1, 1, 4, 4))


def test_feature_net_loads_onto_the_requested_device(tmp_path: Path) -> None:
    from foscu.evaluation.feature_nets import load_feature_net

    weights = random_weights("radimagenet", tmp_path / "resnet.pth")
    net, _ = load_feature_net("radimagenet", weights, device="meta")  # "meta" stands in for a GPU here
    assert {p.device.type for p in net.parameters()} == {"meta"}
    assert {b.device.type for b in net.buffers()} == {"meta"}
