import json

import numpy as np
import pytest
from typer.testing import CliRunner

from foscu.cli import app
from foscu.data.nifti import write_nifti
from foscu.errors import InputError
from foscu.evaluation.segmentation_metrics import dice, evaluate_segmentation, hd95
from foscu.labels import LABELS, LIVER, LIVER_ONLY_LABELS, PORTAL_VEIN, TUMOR

SHAPE = (10, 10, 6)
SPACING = (1.0, 1.0, 2.0)
AFFINE = np.diag([*SPACING, 1.0])


def case_with_tumor():
    """Liver 8 voxels, predicted 4 of them + 2 outside; tumor one voxel, predicted 3 slices (6 mm) away;
    portal vein missed; hepatic vein absent from both."""
    gt = np.zeros(SHAPE, np.uint8)
    gt[0:4, 0:2, 0] = LIVER
    gt[8, 8, 1] = TUMOR
    gt[6:8, 0, 0] = PORTAL_VEIN
    pred = np.zeros(SHAPE, np.uint8)
    pred[0:2, 0:2, 0] = LIVER
    pred[5, 5:7, 0] = LIVER
    pred[8, 8, 4] = TUMOR
    return pred, gt


def case_tumor_free_with_false_positive():
    """Liver exact; 3 tumor voxels predicted on a tumor-free case (3 x 2 mm^3 = 0.006 mL)."""
    gt = np.zeros(SHAPE, np.uint8)
    gt[0:2, 0:2, 0:2] = LIVER
    pred = gt.copy()
    pred[5:8, 5, 5] = TUMOR
    return pred, gt


def test_dice_by_hand_with_nnunet_empty_rule():
    pred, gt = case_with_tumor()
    d = dice(pred, gt, LABELS)
    assert d["liver"] == pytest.approx(2 * 4 / (6 + 8))
    assert d["tumor"] == 0.0 and d["portal_vein"] == 0.0
    assert d["hepatic_vein"] is None  # absent from both: excluded
    assert set(d) == {"liver", "portal_vein", "hepatic_vein", "tumor"}  # background never scored


def test_false_positive_on_empty_class_is_zero_for_nnunet_forgiven_by_monai():
    pred, gt = case_tumor_free_with_false_positive()
    assert dice(pred, gt, LABELS)["tumor"] == 0.0
    assert dice(pred, gt, LABELS, empty="monai")["tumor"] is None
    assert dice(pred, gt, LABELS)["liver"] == 1.0


def test_hd95_single_voxels_uses_spacing():
    pred, gt = case_with_tumor()
    h = hd95(pred, gt, LABELS, SPACING)
    assert h["tumor"] == pytest.approx(6.0)  # 3 voxels along z at 2 mm
    assert h["portal_vein"] is None and h["hepatic_vein"] is None  # one side empty
    pred, gt = case_tumor_free_with_false_positive()
    h = hd95(pred, gt, LABELS, SPACING)
    assert h["liver"] == 0.0 and h["tumor"] is None


def test_hd95_takes_95th_percentile_of_each_direction():
    # pred: gt's two voxels (0,0,0),(1,0,0) plus one at (1,3,0): directed pred->gt distances [0, 0, 3],
    # 95th percentile (linear) = 0 + 0.9 * 3 = 2.7; gt->pred all 0. HD95 = max = 2.7 mm.
    gt = np.zeros(SHAPE, np.uint8)
    gt[0:2, 0, 0] = LIVER
    pred = gt.copy()
    pred[1, 3, 0] = LIVER
    assert hd95(pred, gt, LIVER_ONLY_LABELS, (1.0, 1.0, 1.0))["liver"] == pytest.approx(2.7)


def write_cases(root, cases):
    for case_id, (pred, gt) in cases.items():
        write_nifti(root / "pred" / f"{case_id}.nii.gz", pred, AFFINE, label=True)
        write_nifti(root / "gt" / "labelsTr" / f"{case_id}.nii.gz", gt, AFFINE, label=True)


def test_evaluate_folder_means_counts_and_false_positive_tumor(tmp_path):
    write_cases(tmp_path, {"a": case_with_tumor(), "b": case_tumor_free_with_false_positive()})
    out = tmp_path / "metrics.json"
    result = evaluate_segmentation(tmp_path / "pred", tmp_path / "gt", "multiclass", out)
    assert json.loads(out.read_text()) == result
    assert result["cases"]["a"]["liver"]["dice"] == pytest.approx(8 / 14)
    assert result["cases"]["b"]["portal_vein"] == {"dice": None, "hd95": None}
    mean = result["mean"]
    assert mean["liver"]["dice"] == pytest.approx((8 / 14 + 1) / 2) and mean["liver"]["n_valid"] == 2
    assert mean["tumor"] == {"dice": 0.0, "hd95": pytest.approx(6.0), "n_valid": 2, "n_valid_hd95": 1}
    assert mean["portal_vein"]["n_valid"] == 1
    assert mean["hepatic_vein"] == {"dice": None, "hd95": None, "n_valid": 0, "n_valid_hd95": 0}
    assert result["foreground_mean"]["dice"] == pytest.approx(((8 / 14 + 1) / 2 + 0 + 0) / 3)
    fp = result["false_positive_tumor"]
    assert fp["volume_ml"] == {"b": pytest.approx(0.006)} and fp["n_with_false_positive"] == 1
    assert "nnU-Net" in result["convention"]

    monai = evaluate_segmentation(tmp_path / "pred", tmp_path / "gt", "multiclass", empty="monai")
    assert monai["mean"]["tumor"]["n_valid"] == 1  # the false positive on b is forgiven


def test_binary_task_maps_all_foreground_to_liver(tmp_path):
    pred, gt = case_tumor_free_with_false_positive()
    gt = gt.copy()
    gt[5:8, 5, 5] = TUMOR  # ground truth multiclass; as liver-only, the predicted tumor voxels are liver
    pred = (pred != 0).astype(np.uint8)
    write_cases(tmp_path, {"b": (pred, gt)})
    result = evaluate_segmentation(tmp_path / "pred", tmp_path / "gt", "binary")
    assert result["cases"]["b"] == {"liver": {"dice": 1.0, "hd95": 0.0}}
    assert result["false_positive_tumor"] is None


def test_missing_prediction_and_foreign_values_are_refused(tmp_path):
    write_cases(tmp_path, {"a": case_with_tumor()})
    with pytest.raises(InputError, match="values \\[4\\] are not in the binary label map"):
        evaluate_segmentation(tmp_path / "pred", tmp_path / "gt", "binary")
    write_nifti(tmp_path / "gt" / "labelsTr" / "c.nii.gz", np.zeros(SHAPE, np.uint8), AFFINE, label=True)
    with pytest.raises(InputError, match=r"no prediction for ground-truth case\(s\) \['c'\]"):
        evaluate_segmentation(tmp_path / "pred", tmp_path / "gt", "multiclass")


def test_unknown_task_or_convention_is_refused_before_reading(tmp_path):
    with pytest.raises(InputError, match="--task: expected binary or multiclass, got 'liver'"):
        evaluate_segmentation(tmp_path / "none", tmp_path / "none", "liver")
    with pytest.raises(InputError, match="--empty: expected nnunet or monai, got 'sometimes'"):
        evaluate_segmentation(tmp_path / "none", tmp_path / "none", "binary", empty="sometimes")


def test_cli_evaluate_seg_writes_metrics_and_bad_input_exits_2(tmp_path):
    write_cases(tmp_path, {"a": case_with_tumor()})
    out = tmp_path / "m.json"
    args = [
        "evaluate",
        "seg",
        "--pred",
        str(tmp_path / "pred"),
        "--gt",
        str(tmp_path / "gt"),
        "--task",
        "multiclass",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["mean"]["hepatic_vein"]["n_valid"] == 0
    bad = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "x.json"), "--empty", "sometimes"])
    assert bad.exit_code == 2 and "--empty" in bad.output
    bad_task = CliRunner().invoke(app, [*args[:-4], "--task", "liver", "--out", str(tmp_path / "x.json")])
    assert bad_task.exit_code == 2 and "error: --task: expected binary or multiclass" in bad_task.output
    assert not (tmp_path / "x.json").exists()
