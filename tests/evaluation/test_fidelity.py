import numpy as np
import pytest

from foscu.evaluation.fidelity import diversity, ms_ssim


def _smooth_volume(seed, shape=(32, 32, 16)):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.random(shape), 2.0)
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


def test_ms_ssim_identity_and_difference():
    a, b = _smooth_volume(0), _smooth_volume(1)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-4)
    assert ms_ssim(a, b) < 0.9


def test_diversity_detects_mode_collapse():
    same = [_smooth_volume(0)] * 4
    varied = [_smooth_volume(i) for i in range(4)]
    collapsed = diversity(same)
    diverse = diversity(varied)
    assert collapsed["ms_ssim_mean"] == pytest.approx(1.0, abs=1e-4)
    assert diverse["ms_ssim_mean"] < collapsed["ms_ssim_mean"] - 0.1
    assert diverse["pairs"] == 6


@pytest.mark.parametrize("side", [5, 9, 25, 50, 100])
def test_ms_ssim_fits_sides_where_monai_needs_fewer_scales(side):
    """MONAI refuses a side of fewer than kernel * (scales - 1)**2 voxels; such volumes get fewer scales."""
    v = np.random.default_rng(0).random((side, side, side)).astype(np.float32)
    assert ms_ssim(v, v) == pytest.approx(1.0, abs=1e-4)
