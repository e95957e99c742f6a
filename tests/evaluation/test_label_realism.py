"""Label realism: shape statistics worked out by hand, and the distance between label sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foscu.evaluation.label_realism import (
    compare_labels,
    holm,
    label_features,
    label_realism,
    proportion_difference,
)
from foscu.labels import HEPATIC_VEIN, LIVER, PORTAL_VEIN, TUMOR


def _liver_case(vessel_outside: bool = False, tumors: int = 1, split_liver: bool = False) -> np.ndarray:
    label = np.zeros((40, 40, 20), dtype=np.uint8)
    label[5:25, 5:25, 2:12] = LIVER  # 20*20*10 = 4000 voxels
    if split_liver:
        label[30:36, 30:36, 14:18] = LIVER  # a second, detached piece
    label[10:20, 14:15, 6:7] = PORTAL_VEIN  # a thin vessel inside the liver
    if vessel_outside:
        label[30:38, 2:3, 18:19] = HEPATIC_VEIN  # far from any liver voxel
    else:
        label[14:15, 8:20, 8:9] = HEPATIC_VEIN
    for k in range(tumors):
        label[7 + 6 * k : 9 + 6 * k, 20:22, 3:5] = TUMOR
    return label


def test_features_by_hand():
    f = label_features(_liver_case(), spacing=(1.0, 1.0, 2.0))  # 2 uL voxels
    assert f["tumor_components"] == 1 and f["tumor_ml"] == pytest.approx(8 * 0.002)
    assert f["portal_vein_ml"] == pytest.approx(10 * 0.002)
    assert f["organ_components"] == 1 and f["organ_largest_share"] == 1.0
    assert f["vessel_in_liver_share"] == 1.0
    two = label_features(_liver_case(tumors=2, split_liver=True), spacing=(1.0, 1.0, 1.0))
    assert two["tumor_components"] == 2 and two["organ_components"] == 2
    assert two["organ_largest_share"] == pytest.approx(4000 / (4000 + 144))
    liver_voxels = 4000 - 10 - 12 - 16  # the block less the vessels and two tumors drawn over it
    assert two["liver_largest_share"] == pytest.approx(liver_voxels / (liver_voxels + 144))


def test_vessels_away_from_the_liver_are_counted_outside():
    f = label_features(_liver_case(vessel_outside=True), spacing=(1.0, 1.0, 1.0))
    assert f["vessel_in_liver_share"] == pytest.approx(10 / (10 + 8))
    empty = label_features(np.zeros((8, 8, 8), np.uint8), (1.0, 1.0, 1.0))
    assert math.isnan(empty["vessel_in_liver_share"]) and empty["organ_components"] == 0


def test_a_tumor_on_the_livers_outside_is_not_enclosed():
    inside = _liver_case()  # the tumor block [7:9, 20:22, 3:5] lies within the liver [5:25, 5:25, 2:12]
    assert label_features(inside, (1.0, 1.0, 1.0))["tumor_enclosed_share"] == 1.0
    edge = _liver_case()
    edge[edge == TUMOR] = LIVER
    edge[24:26, 10:12, 4:6] = TUMOR  # half in the liver's last row (x = 24), half outside it (x = 25)
    assert (
        label_features(edge, (1.0, 1.0, 1.0))["tumor_enclosed_share"] == 0.0
    )  # every voxel touches background
    deep = _liver_case()
    deep[deep == TUMOR] = LIVER
    deep[10:16, 10:16, 5:9] = TUMOR  # 6 x 6 x 4 inside: the vessels cross it, none of it touches background
    assert label_features(deep, (1.0, 1.0, 1.0))["tumor_enclosed_share"] == 1.0
    assert math.isnan(label_features(_liver_case(tumors=0), (1.0, 1.0, 1.0))["tumor_enclosed_share"])


def test_identical_sets_have_zero_distance_and_shifted_sets_do_not():
    real = {f"r{i}": _liver_case(tumors=i % 2) for i in range(6)}
    same = label_realism(real, dict(real), (1.0, 1.0, 1.0))
    assert same["summary_distance"] == pytest.approx(0.0)
    blobs = {f"g{i}": _liver_case(vessel_outside=True, tumors=2, split_liver=True) for i in range(4)}
    off = label_realism(real, blobs, (1.0, 1.0, 1.0))
    assert off["summary_distance"] > 0.5
    presence = {p["class"]: p for p in off["presence"] if p["min_ml"] is None}
    assert presence["tumor"]["real"] == pytest.approx(0.5) and presence["tumor"]["generated"] == 1.0
    assert presence["hepatic_vein"]["generated"] == 1.0


def test_compare_needs_both_sets():
    with pytest.raises(ValueError):
        compare_labels({}, {"g": label_features(_liver_case(), (1.0, 1.0, 1.0))})


def test_largest_tumor_volume_by_hand():
    label = _liver_case(tumors=2)
    label[30:33, 30:33, 15:18] = TUMOR  # a third tumor of 27 voxels, the largest
    f = label_features(label, spacing=(1.0, 1.0, 2.0))
    assert f["tumor_largest_ml"] == pytest.approx(27 * 0.002)
    assert label_features(_liver_case(tumors=0), (1.0, 1.0, 1.0))["tumor_largest_ml"] == 0.0


def test_tumor_presence_at_the_smallest_real_tumor_leaves_speckle_out():
    """Real: 2 of 4 hold a 2x2x2 tumor. Generated: every label holds a tumor, but in 3 of 4 it is one voxel
    of speckle: any voxel says 100 %, at the smallest real tumor's size it is 25 %."""
    real = {f"r{i}": _liver_case(tumors=i % 2) for i in range(4)}
    generated = {}
    for i in range(4):
        label = _liver_case(tumors=1 if i == 0 else 0)
        if i:
            label[12, 12, 5] = TUMOR  # a one-voxel speck
        generated[f"g{i}"] = label
    result = label_realism(real, generated, (1.0, 1.0, 1.0))
    any_voxel, sized = [p for p in result["presence"] if p["class"] == "tumor"]
    assert any_voxel["min_ml"] is None and any_voxel["generated"] == 1.0 and any_voxel["real"] == 0.5
    assert sized["min_ml"] == pytest.approx(8 * 0.001)
    assert sized["generated"] == 0.25 and sized["real"] == 0.5
    assert sized["difference"] == pytest.approx(-0.25)
    assert sized["difference_low"] < -0.25 < sized["difference_high"]


def test_newcombe_interval_against_the_published_example():
    """Newcombe (1998), Table II example (56/70 against 48/80): difference 0.2000, hybrid score
    interval 0.0524 to 0.3339."""
    d = proportion_difference(56, 70, 48, 80)
    assert d["difference"] == pytest.approx(0.2)
    assert d["low"] == pytest.approx(0.0524, abs=5e-4) and d["high"] == pytest.approx(0.3339, abs=5e-4)


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_features_that_differ_are_rejected_after_correction():
    real = {f"r{i}": _liver_case(tumors=i % 2) for i in range(12)}
    same = label_realism(real, dict(real), (1.0, 1.0, 1.0))
    assert same["features_rejected"] == 0
    blobs = {f"g{i}": _liver_case(vessel_outside=True, tumors=2, split_liver=True) for i in range(12)}
    off = label_realism(real, blobs, (1.0, 1.0, 1.0))
    rows = {r["feature"]: r for r in off["features"]}
    assert rows["organ_components"]["rejected"] and rows["organ_components"]["p_holm"] < 0.05
    assert not rows["portal_vein_ml"]["rejected"]  # the same vessel in every label
    assert off["features_rejected"] == sum(r.get("rejected", False) for r in off["features"]) > 0
