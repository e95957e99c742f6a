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
    held_out = {f"h{i}": _smooth_volume(50 + i) for i in range(20)}
    rng = np.random.default_rng(9)
    copy = real["r3"] + rng.normal(0, 0.01, real["r3"].shape).astype(np.float32)
    synthetic = {"leak": copy, "novel": _smooth_volume(100)}
    audit = memorization_audit(synthetic, real, held_out)
    assert audit["samples"]["leak"]["nearest_real_case"] == "r3"
    assert audit["samples"]["leak"]["near_copy"] is True
    assert audit["samples"]["novel"]["near_copy"] is False
    assert audit["near_copies"] == 1
    assert audit["percentile"] == 99.0 and "99th percentile of held-out" in audit["method"]


def test_memorization_threshold_is_a_held_out_percentile_worked_by_hand():
    """Threshold = 99th percentile (linear) of each held-out case's nearest-training correlation."""
    a, b, c = _smooth_volume(0), _smooth_volume(1), _smooth_volume(2)
    real = {"a": a, "b": b}
    held_out = {"near_a": a + 0.3 * c, "c": c, "b_like": b + 0.5 * c}
    from foscu.evaluation.fidelity import _standardise

    def corr(x, y):
        return float(_standardise(x, 2) @ _standardise(y, 2))

    nn = sorted(max(corr(h, a), corr(h, b)) for h in held_out.values())
    expected = nn[1] + 0.98 * (nn[2] - nn[1])  # numpy's linear rule: rank 0.99 * (3 - 1) = 1.98
    audit = memorization_audit({}, real, held_out)
    assert audit["threshold"] == pytest.approx(expected)
    assert audit["held_out_nearest_training"]["max"] == pytest.approx(nn[2])
    assert memorization_audit({}, real, held_out, percentile=100)["threshold"] == pytest.approx(nn[2])


def test_one_near_duplicate_pair_of_patients_does_not_disable_the_audit():
    """Two training scans of one patient correlate ~1; the old max-of-real rule then flagged nothing."""
    real = {f"r{i}": _smooth_volume(i) for i in range(6)}
    rng = np.random.default_rng(1)
    real["r0_rescan"] = real["r0"] + rng.normal(0, 0.002, real["r0"].shape).astype(np.float32)
    held_out = {f"h{i}": _smooth_volume(200 + i) for i in range(20)}
    leak = real["r3"] + rng.normal(0, 0.05, real["r3"].shape).astype(np.float32)
    audit = memorization_audit({"leak": leak, "novel": _smooth_volume(300)}, real, held_out)
    assert audit["samples"]["leak"]["correlation"] < 0.999  # less close than the rescan pair ...
    assert audit["samples"]["leak"]["near_copy"] is True  # ... and still flagged
    assert audit["samples"]["novel"]["near_copy"] is False


def test_memorization_needs_training_and_held_out_cases():
    with pytest.raises(ValueError, match="held-out"):
        memorization_audit({"s": _smooth_volume(0)}, {"r": _smooth_volume(1)}, {})
    with pytest.raises(ValueError, match="training"):
        memorization_audit({"s": _smooth_volume(0)}, {}, {"h": _smooth_volume(1)})
    with pytest.raises(ValueError, match="percentile"):
        memorization_audit({}, {"r": _smooth_volume(1)}, {"h": _smooth_volume(2)}, percentile=0)


@pytest.mark.parametrize("side", [5, 9, 25, 50, 100])
def test_ms_ssim_fits_sides_where_monai_needs_fewer_scales(side):
    """MONAI refuses a side of fewer than kernel * (scales - 1)**2 voxels; such volumes get fewer scales."""
    v = np.random.default_rng(0).random((side, side, side)).astype(np.float32)
    assert ms_ssim(v, v) == pytest.approx(1.0, abs=1e-4)
