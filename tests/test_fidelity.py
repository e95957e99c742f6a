import numpy as np
import pytest

from foscu.evaluation.fidelity import diversity, memorization_audit, ms_ssim


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


def test_memorization_flags_a_near_copy_only():
    real = {f"r{i}": _smooth_volume(i) for i in range(5)}
    rng = np.random.default_rng(9)
    copy = real["r3"] + rng.normal(0, 0.01, real["r3"].shape).astype(np.float32)
    synthetic = {"leak": copy, "novel": _smooth_volume(100)}
    audit = memorization_audit(synthetic, real)
    assert audit["samples"]["leak"]["nearest_real_case"] == "r3"
    assert audit["samples"]["leak"]["near_copy"] is True
    assert audit["samples"]["novel"]["near_copy"] is False
    assert audit["near_copies"] == 1


def test_memorization_needs_two_real_cases():
    with pytest.raises(ValueError):
        memorization_audit({"s": _smooth_volume(0)}, {"r": _smooth_volume(1)})
