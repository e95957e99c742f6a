"""The phantom's geometry: implicit ellipsoids, vessel segments rasterised by distance, vessel trees, and
smooth random fields."""

from __future__ import annotations

import numpy as np
import pytest

from foscu.data.phantom_shapes import ellipsoid, rasterise_segments, segments_tree, smooth_field


def test_ellipsoid_is_zero_at_the_centre_and_one_on_the_surface():
    centre, radii = (1.0, 2.0, 3.0), (2.0, 4.0, 1.0)
    assert ellipsoid(1.0, 2.0, 3.0, centre, radii) == 0.0
    for point in ((3.0, 2.0, 3.0), (1.0, -2.0, 3.0), (1.0, 2.0, 4.0)):  # one radius out along each axis
        assert ellipsoid(*point, centre, radii) == pytest.approx(1.0)
    assert ellipsoid(2.0, 4.0, 3.5, centre, radii) == pytest.approx(0.75)  # (1/2)^2 + (2/4)^2 + (0.5/1)^2


def test_a_tapered_segment_covers_the_voxels_within_its_radius():
    spacing, shape = np.array([1.0, 0.5, 1.0]), (14, 18, 9)
    coords = tuple(np.arange(n) * s + 0.25 for n, s in zip(shape, spacing, strict=True))  # mm, origin 0.25
    p0, p1, r0, r1 = np.array([2.0, 4.0, 4.0]), np.array([10.0, 4.0, 4.0]), 3.0, 1.0
    mask = rasterise_segments([(p0, p1, r0, r1)], coords, spacing, shape)
    x, y, z = np.meshgrid(*coords, indexing="ij")
    t = np.clip((x - 2.0) / 8.0, 0.0, 1.0)  # the nearest point of the segment, as a fraction of its length
    expected = (x - 2.0 - 8.0 * t) ** 2 + (y - 4.0) ** 2 + (z - 4.0) ** 2 <= (r0 + (r1 - r0) * t) ** 2
    assert expected.sum() > 50
    np.testing.assert_array_equal(mask, expected)
    outside = (np.array([40.0, 40.0, 40.0]), np.array([50.0, 40.0, 40.0]), 1.0, 1.0)
    assert not rasterise_segments([outside], coords, spacing, shape).any()


def test_a_vessel_tree_branches_from_its_parents_ends_and_tapers():
    segments = segments_tree(np.random.default_rng(0), np.zeros(3), np.array([2.0, 0.0, 0.0]), 40.0, 4.0, 3)
    p0, p1, r0, r1 = segments[0]
    assert np.allclose(p0, 0) and np.allclose(p1, [40.0, 0.0, 0.0]) and (r0, r1) == (4.0, pytest.approx(3.12))
    assert len(segments) > 3
    ends = {tuple(s[1]): s[3] for s in segments}
    for start, _, radius, end_radius in segments[1:]:
        assert (
            tuple(start) in ends and radius < ends[tuple(start)]
        )  # a child is thinner than its parent's end
        assert end_radius == pytest.approx(0.78 * radius)


def test_a_smooth_field_has_unit_variance_at_every_voxel_and_neighbours_that_correlate():
    fields = np.stack([smooth_field(np.random.default_rng(seed), (12, 10, 6), 4) for seed in range(1000)])
    assert fields.dtype == np.float32 and fields.shape == (1000, 12, 10, 6)
    variance = fields.var(axis=0)  # over draws, per voxel: 1 up to sampling error (sd ~0.045)
    assert 0.8 < variance.min() and variance.max() < 1.2
    assert abs(float(fields.mean())) < 0.05
    assert np.corrcoef(fields[:, :-1].ravel(), fields[:, 1:].ravel())[0, 1] > 0.8
