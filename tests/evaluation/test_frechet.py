"""Fréchet distances between feature sets: by hand, against scipy's sqrtm route, and the real set's Gaussian
fitted once."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from foscu.evaluation.frechet import _RealGaussian, frechet_distance


def scipy_frechet(a: np.ndarray, b: np.ndarray, eps: float) -> float:
    """Independent reference: pytorch-fid's route, sqrtm of the covariance product with an eps offset."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    offset = np.eye(len(cov_a)) * eps
    covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset)).real
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def test_frechet_distance_one_dimensional_by_hand() -> None:
    # a = {0, 2}: mean 1, variance 2; b = {1, 5}: mean 3, variance 8.
    # d^2 = (1 - 3)^2 + 2 + 8 - 2 * sqrt(2 * 8) = 4 + 10 - 8 = 6
    assert frechet_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [5.0]])) == pytest.approx(
        6.0, abs=1e-12
    )


def test_frechet_distance_matches_scipy_full_rank() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    b = rng.normal(size=(250, 6)) @ rng.normal(size=(6, 6)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b, eps=0.0), rel=1e-8)


def test_frechet_distance_matches_scipy_rank_deficient() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 64))  # n < d: both covariances singular
    b = rng.normal(size=(30, 64)) + 0.2
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a, b, eps=1e-10), rel=1e-5)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_shift_is_its_squared_length() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 5))
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0])  # |shift|^2 = 1 + 4 + 0.25 = 5.25
    assert frechet_distance(a, a + shift) == pytest.approx(5.25, rel=1e-9)


def test_frechet_distance_refuses_mismatched_features() -> None:
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_real_gaussian_matches_frechet_distance() -> None:
    rng = np.random.default_rng(3)
    for n_real, n_fake, d in ((40, 30, 5), (6, 4, 20)):  # full rank, then fewer samples than dimensions
        a = rng.normal(size=(n_real, d))
        b = rng.normal(0.5, 2.0, size=(n_fake, d))
        # 1e-8: with scipy 1.17's sqrtm the rank-deficient case (6 x 20) differs by 1.5e-9 relative
        assert _RealGaussian(a).distance(b) == pytest.approx(frechet_distance(a, b), rel=1e-8)
        assert _RealGaussian(a).distance(a) == pytest.approx(0.0, abs=1e-9)
