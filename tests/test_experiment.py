"""foscu experiment / report at the tiny preset: every table and figure filled, steps skipped on rerun."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from foscu.cli import app

runner = CliRunner()
GENERATIVE_ORDER = ("label-vae", "image-vae", "label-ldm", "image-ldm", "controlnet", "vqvae", "vqvae-ldm")
TINY_ABLATION = ("label_latent", "label_downsampled", "label_fractions")  # tiny conditions on label_fullres


def _experiment_args(prepared, run) -> list[str]:
    """The tiny experiment: one segmentation architecture, three samples per synthetic set."""
    return [
        "experiment",
        "--config",
        "tiny",
        "--data",
        str(prepared),
        "--run",
        str(run),
        "--set",
        "segmentation.archs=[unet]",
        "--set",
        "sample.n=3",
    ]


# (name, group, outputs under the run folder) of the tiny protocol: a run folder from an earlier version
# resumes only if these never change (the order also fixes what each step's seed produces)
TINY_STEPS = [
    *[(f"train {s}", "train", [f"{s}/metrics.json"]) for s in GENERATIVE_ORDER],
    *[(f"train controlnet-{c}", "train", [f"controlnet-{c}/metrics.json"]) for c in TINY_ABLATION],
    ("sample Duo-Diffusion", "sample", ["samples/samples.json"]),
    ("sample 3D-LDM w/ VAE", "sample", ["baselines/image-ldm/samples.json"]),
    ("sample 3D-LDM w/ VQ-VAE", "sample", ["baselines/vqvae-ldm/samples.json"]),
    ("reconstruct with the image VAE", "sample", ["baselines/vae-reconstruction/dataset.json"]),
    ("ladder: reconstruct the test images", "sample", ["ladder/vae/dataset.json"]),
    ("ladder: images from the real test masks", "sample", ["ladder/mask_to_image/samples.json"]),
    *[(f"sample ablation {c}", "sample", [f"ablation/{c}/samples.json"]) for c in TINY_ABLATION],
    ("Table I (2.5D Fréchet distances)", "table1", ["evaluation/table1.json"]),
    (
        "pair fidelity, diversity, memorization",
        "fidelity",
        ["evaluation/pair_fidelity.json", "evaluation/diversity.json", "evaluation/memorization.json"],
    ),
    ("fidelity ladder", "fidelity", ["evaluation/ladder.json"]),
    ("label realism", "fidelity", ["evaluation/label_realism.json"]),
    ("Table II (segmentation grid)", "table2", ["evaluation/table2.json"]),
    ("report", "report", []),
]


def test_steps_keep_their_names_groups_order_and_outputs(tiny_prepared, tmp_path):
    from foscu.config import load_config
    from foscu.experiment import Protocol

    run = tmp_path / "run"
    steps = Protocol(load_config("tiny"), tiny_prepared, run, progress=False).steps()
    got = [(s.name, s.group, [p.relative_to(run).as_posix() for p in s.outputs]) for s in steps]
    assert got == TINY_STEPS
    off = Protocol(load_config("tiny", ["experiment.ablation=false"]), tiny_prepared, run).steps()
    without = [name for name, _, _ in TINY_STEPS if not any(c in name for c in TINY_ABLATION)]
    assert [s.name for s in off] == without


@pytest.fixture(scope="module")
def experiment_run(tiny_run, tiny_prepared, tmp_path_factory):
    run = tmp_path_factory.mktemp("experiment") / "run"
    shutil.copytree(tiny_run, run)  # the seven stages are trained: the experiment must skip them
    result = runner.invoke(
        app,
        _experiment_args(tiny_prepared, run),
    )
    assert result.exit_code == 0, result.output
    return run, result.output


def test_experiment_skips_trained_stages_and_trains_the_ablation(experiment_run):
    run, output = experiment_run
    assert "[skip] train image-ldm" in output and "[step] train controlnet-label_latent" in output
    for folder in ("controlnet-label_latent", "controlnet-label_downsampled", "controlnet-label_fractions"):
        assert (run / folder / "model.safetensors").is_file()


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
    assert ladder["conditioning"]["response"]["voxels_differ"] > 0


def test_label_realism_compares_generated_with_real_training_labels(experiment_run):
    run, _ = experiment_run
    realism = json.loads((run / "evaluation" / "label_realism.json").read_text())
    assert realism["n_real"] == 3 and realism["n_generated"] == 3
    features = {r["feature"] for r in realism["features"]}
    assert {"liver_ml", "tumor_components", "organ_largest_share", "vessel_in_liver_share"} <= features
    assert realism["summary_distance"] is not None and realism["summary_distance"] >= 0


def test_report_holds_every_table_and_figure(experiment_run):
    run, _ = experiment_run
    page = (run / "report.html").read_text()
    for title in (
        "Table I",
        "Table II",
        "Pair fidelity",
        "Diversity",
        "Memorization",
        "Wall time",
        "Fidelity ladder",
        "Label realism",
        "What this run shows",
    ):
        assert title in page
    assert "not computed in this run" not in page
    assert page.count("data:image/png;base64,") >= 4
    assert "http://" not in page and "https://" not in page  # self-contained
    assert (run / "report.md").is_file()


def test_rerun_skips_every_step_and_unknown_groups_are_refused(experiment_run, tiny_prepared):
    run, _ = experiment_run
    before = (run / "evaluation" / "table1.json").stat().st_mtime_ns
    result = runner.invoke(
        app,
        [*_experiment_args(tiny_prepared, run), "--only", "table1"],
    )
    assert result.exit_code == 0 and "[skip] Table I" in result.output
    assert (run / "evaluation" / "table1.json").stat().st_mtime_ns == before
    result = runner.invoke(
        app, ["experiment", "--data", str(tiny_prepared), "--run", str(run), "--only", "tables"]
    )
    assert result.exit_code == 2 and "tables" in result.output
