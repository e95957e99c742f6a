"""Radiomics-style features of 2D slices (the FRD feature set), worked by hand on slices simple enough."""

from __future__ import annotations

import math

import numpy as np

from foscu.evaluation.radiomics import radiomics_features


def _parts(features: np.ndarray) -> dict[str, np.ndarray]:
    """(30,) -> first-order (10), co-occurrence at distance 1 and 2 (4 each), gradient (3), LBP histogram (9)."""
    return {
        "first": features[:10],
        "glcm1": features[10:14],
        "glcm2": features[14:18],
        "gradient": features[18:21],
        "lbp": features[21:],
    }


def test_a_constant_slice_by_hand():
    features = radiomics_features(np.full((1, 8, 8), 0.5))
    assert features.shape == (1, 30)
    f = _parts(features[0])
    # mean, std, 5 percentiles, skewness and excess kurtosis (0 without spread), entropy of one bin
    np.testing.assert_allclose(f["first"], [0.5, 0, 0.5, 0.5, 0.5, 0.5, 0.5, 0, 0, 0], atol=1e-12)
    # contrast, homogeneity, energy, correlation (1: a uniform slice correlates perfectly)
    np.testing.assert_allclose(f["glcm1"], [0, 1, 1, 1])
    np.testing.assert_allclose(f["glcm2"], [0, 1, 1, 1])
    np.testing.assert_allclose(f["gradient"], [0, 0, 0])
    np.testing.assert_allclose(f["lbp"], [0] * 8 + [1])  # every neighbour >= the centre


def test_a_checkerboard_by_hand():
    board = (np.indices((8, 8)).sum(0) % 2).astype(float)
    f = _parts(radiomics_features(board[None])[0])
    # 32 zeros and 32 ones: percentiles 10/25/50/75/90 interpolate to 0, 0, 0.5, 1, 1; kurtosis 1 - 3
    np.testing.assert_allclose(f["first"], [0.5, 0.5, 0, 0, 0.5, 1, 1, 0, -2, 1], atol=1e-12)
    # gray levels 0 and 15: side neighbours always differ (contrast 225, correlation -1), diagonal ones never
    # (contrast 0, correlation 1); the four directions averaged. The 49 diagonal pairs are 25 of one colour and
    # 24 of the other, the side pairs half (0, 15) and half (15, 0). At distance 2 every neighbour is alike.
    homogeneity = (2 / 226 + 2) / 4
    energy = (2 * math.sqrt(0.5) + 2 * math.hypot(25, 24) / 49) / 4
    np.testing.assert_allclose(f["glcm1"], [112.5, homogeneity, energy, 0.0], atol=1e-12)
    np.testing.assert_allclose(f["glcm2"], [0, 1, math.sqrt(0.5), 1], atol=1e-12)
    # a 1 has its 4 diagonal neighbours >= it, a 0 all 8: half the inner pixels each
    np.testing.assert_allclose(f["lbp"], [0, 0, 0, 0, 0.5, 0, 0, 0, 0.5])


def test_a_slice_dark_on_the_left_and_bright_on_the_right_by_hand():
    half = np.zeros((1, 4, 4))
    half[:, :, 2:] = 1.0
    f = _parts(radiomics_features(half)[0])
    # along a row, and along both diagonals: pairs (0, 0), (0, 15), (15, 15) alike often, counted both ways
    # (the co-occurrence matrix is symmetric): p(0, 0) = p(15, 15) = 1/3, p(0, 15) = p(15, 0) = 1/6, whose
    # correlation is 1/3. Down a column every pair is alike: contrast 0, homogeneity 1, energy sqrt(1/2).
    across = [2 / 6 * 225, 2 / 3 + 2 / 6 / 226, math.sqrt(2 / 9 + 2 / 36), 1 / 3]
    down = [0, 1, math.sqrt(0.5), 1]
    np.testing.assert_allclose(f["glcm1"], (3 * np.array(across) + down) / 4, atol=1e-12)


def test_a_ramp_has_its_slope_as_gradient_and_values_are_clipped_to_the_unit_range():
    ramp = np.tile(np.arange(8) * 0.1, (6, 1))[None]  # 0 .. 0.7 along the columns
    np.testing.assert_allclose(_parts(radiomics_features(ramp)[0])["gradient"], [0.1, 0, 0.1], atol=1e-12)
    np.testing.assert_array_equal(
        radiomics_features(ramp * 10 - 3), radiomics_features(np.clip(ramp * 10 - 3, 0, 1))
    )
    assert radiomics_features(np.random.default_rng(0).random((3, 5, 7))).shape == (3, 30)


def test_features_of_each_slice_are_its_own():
    rng = np.random.default_rng(1)
    slices = rng.random((3, 9, 9))
    together = radiomics_features(slices)
    for i in range(3):
        np.testing.assert_allclose(together[i], radiomics_features(slices[i : i + 1])[0], rtol=1e-12)
    assert np.isfinite(together).all()
