"""The fidelity ladder's arithmetic: control pairs, rows as fractions of (a), the conditioning verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from foscu.data.nifti import write_nifti
from foscu.evaluation import ladder
from foscu.evaluation.segmentation_metrics import evaluate_cases
from foscu.labels import LIVER, TUMOR


def test_control_pairs_never_keep_a_case_with_its_own_mask():
    pairs = {c: (Path(f"pred/{c}"), Path(f"gt/{c}")) for c in ("a", "b", "c")}
    control = ladder.control_pairs(pairs)
    assert set(control) == set(pairs)
    for case, (pred, gt) in control.items():
        assert pred == pairs[case][0] and gt != pairs[case][1]
    assert sorted(gt for _, gt in control.values()) == sorted(gt for _, gt in pairs.values())
    with pytest.raises(ValueError):
        ladder.control_pairs({"a": pairs["a"]})


def _cases(tmp: Path, n: int = 4) -> dict[str, tuple[Path, Path]]:
    """Cases whose livers sit in different places; the 'prediction' is each case's own mask."""
    out = {}
    affine = np.eye(4)
    for i in range(n):
        label = np.zeros((24, 24, 8), np.uint8)
        label[2 + 5 * i : 8 + 5 * i, 4:14, 1:7] = LIVER
        if i % 2:
            label[3 + 5 * i : 5 + 5 * i, 6:8, 2:4] = TUMOR
        gt = tmp / "gt" / f"c{i}.nii.gz"
        gt.parent.mkdir(parents=True, exist_ok=True)
        write_nifti(gt, label, affine, label=True)
        out[f"c{i}"] = (gt, gt)
    return out


def test_perfect_conditioning_is_recognised_and_control_is_low(tmp_path):
    pairs = _cases(tmp_path)
    good = evaluate_cases(pairs, "multiclass")
    control = evaluate_cases(ladder.control_pairs(pairs), "multiclass")
    rows = ladder.ladder_rows({"real": good, "mask_to_image": good, "control": control})
    assert [r["rung"] for r in rows] == ["real", "mask_to_image", "control"]
    assert rows[1]["fraction liver"] == pytest.approx(1.0) and rows[1]["n"] == 4
    assert rows[2]["dice liver"] < 0.5 and rows[2]["fraction liver"] == pytest.approx(rows[2]["dice liver"])
    verdict = ladder.conditioning_verdict(good, control)
    assert verdict["working"] and "works" in verdict["text"]
    # a generator that ignores its mask scores the same against its own and another case's mask
    ignored = ladder.conditioning_verdict(control, control)
    assert not ignored["working"] and "NOT working" in ignored["text"]


def test_where_lost_names_the_biggest_drop():
    rows = [
        {"rung": "real", "dice liver": 0.9},
        {"rung": "vae", "dice liver": 0.88},
        {"rung": "mask_to_image", "dice liver": 0.4},
        {"rung": "duo", "dice liver": 0.35},
    ]
    assert "ControlNet" in ladder.where_lost(rows)
    rows[2]["dice liver"], rows[3]["dice liver"] = 0.85, 0.3
    assert "label model" in ladder.where_lost(rows)


def test_paired_difference_interval_brackets_the_mean():
    a = {str(i): 0.8 + 0.01 * i for i in range(10)}
    b = {str(i): 0.3 for i in range(10)}
    d = ladder.paired_difference(a, b)
    assert d["low"] <= d["mean"] <= d["high"] and d["mean"] == pytest.approx(0.545) and d["n"] == 10
