"""The experiment's evidence on the tiny experiment run: Table I, pair fidelity, diversity, memorization, the
fidelity ladder and label realism."""

from __future__ import annotations

import json
import math

import pytest


def test_table1_has_every_method_and_plane(experiment_run):
    run, _ = experiment_run
    table = json.loads((run / "evaluation" / "table1.json").read_text())
    methods = [r["method"] for r in table["rows"]]
    assert methods[:3] == ["3D-LDM w/ VQ-VAE", "3D-LDM w/ VAE", "Duo-Diffusion (label_fullres)"]
    assert "VAE reconstruction (reference)" in methods
    assert {"ablation: ControlNet on label_latent", "ablation: ControlNet on label_downsampled"} <= set(
        methods
    )
    for row in table["rows"]:
        values = [row[k] for k in ("axial", "coronal", "sagittal")]
        assert all(math.isfinite(v) and v >= 0 for v in values)
        assert row["mean"] == pytest.approx(sum(values) / 3)
    assert table["metric"] == "FRD"  # the default features are radiomics-style, never called FID


def test_fidelity_diversity_memorization_and_table2(experiment_run):
    run, _ = experiment_run
    ev = run / "evaluation"
    fidelity = json.loads((ev / "pair_fidelity.json").read_text())
    assert {r["condition"] for r in fidelity["rows"]} == {
        "label_fullres",
        "label_latent",
        "label_downsampled",
        "label_fractions",
    }
    assert fidelity["best_condition"] in {r["condition"] for r in fidelity["rows"]}
    assert all(0 <= r["samples"] for r in fidelity["rows"])
    diversity = json.loads((ev / "diversity.json").read_text())
    assert [r["set"] for r in diversity["rows"]] == ["real training", "Duo-Diffusion samples"]
    memorization = json.loads((ev / "memorization.json").read_text())
    assert len(memorization["samples"]) == 3
    table2 = json.loads((ev / "table2.json").read_text())
    assert {(r["task"]) for r in table2["rows"]} == {"binary", "multiclass"}


def test_ladder_scores_each_rung_on_its_own_images(experiment_run, tiny_prepared):
    import numpy as np

    from foscu.data.nifti import read_nifti
    from foscu.data.prepare import read_prepared
    from foscu.evaluation.segmentation_metrics import evaluate_cases
    from foscu.segmentation.predict import predict_cases

    run, _ = experiment_run
    ladder = json.loads((run / "evaluation" / "ladder.json").read_text())
    rows = {r["rung"]: r for r in ladder["rows"]}
    assert list(rows) == ["real", "vae", "mask_to_image", "duo", "control"]
    test = {i["case_id"]: i for i in read_prepared(tiny_prepared).datalist["test"]}
    assert rows["real"]["n"] == rows["mask_to_image"]["n"] == rows["control"]["n"] == len(test) == 2
    assert rows["duo"]["n"] == 3 and rows["real"]["fraction liver"] in (1.0, None)
    # (c): images generated from the real test masks, scored against those very masks
    m2i = run / "ladder" / "mask_to_image"
    assert json.loads((m2i / "samples.json").read_text())["mask_to_image"]
    cases = ladder["cases"]["mask_to_image"]
    assert sorted(cases) == sorted(f"{c}_synth" for c in test)
    for case, (pred, gt) in cases.items():
        real_mask = read_nifti(test[case[: -len("_synth")]]["label"], label=True).array
        assert np.array_equal(read_nifti(gt, label=True).array, real_mask)
        assert pred.startswith(str(run / "evaluation" / "ladder" / "mask_to_image"))
    # predicting the mask-to-image images afresh reproduces rung (c); the real images give rung (a)
    segmenter = run / "seg" / ladder["segmenter"]
    images = {c: m2i / "imagesTr" / f"{c}_0000.nii.gz" for c in cases}
    fresh = predict_cases(segmenter, images, run / "check-c", progress=False)
    again = evaluate_cases({c: (fresh[c], cases[c][1]) for c in cases}, "multiclass")
    assert again["mean"]["liver"]["dice"] == rows["mask_to_image"]["dice liver"]
    # (e) pairs every (c) prediction with another case's mask
    for case, (pred, gt) in ladder["cases"]["control"].items():
        other = ladder["control_masks_from"][case]
        assert pred == cases[case][0] and other != cases[case][1] and other in [g for _, g in cases.values()]
        assert np.array_equal(read_nifti(gt, label=True).array, read_nifti(other, label=True).array)
    assert isinstance(ladder["conditioning"]["working"], bool) and ladder["conditioning"]["text"]
    per_class = ladder["conditioning"]["classes"]  # the same verdict per class
    assert set(per_class) == {"liver", "portal_vein", "hepatic_vein", "tumor"}
    assert per_class["liver"]["difference"] == ladder["conditioning"]["difference"]
    assert all(isinstance(v["working"], bool) and v["class"] == c for c, v in per_class.items())
    assert ladder["conditioning"]["response"]["voxels_differ"] > 0


def test_label_realism_compares_generated_with_real_training_labels(experiment_run):
    run, _ = experiment_run
    realism = json.loads((run / "evaluation" / "label_realism.json").read_text())
    assert realism["n_real"] == 3 and realism["n_generated"] == 3
    features = {r["feature"] for r in realism["features"]}
    assert {"liver_ml", "tumor_components", "organ_largest_share", "vessel_in_liver_share"} <= features
    assert realism["summary_distance"] is not None and realism["summary_distance"] >= 0
