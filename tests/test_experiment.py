"""foscu experiment at the tiny preset: its steps in order, trained stages skipped, every table and figure in the
report, steps skipped on rerun."""

from __future__ import annotations

from conftest import experiment_args
from typer.testing import CliRunner

from foscu.cli import app

runner = CliRunner()
GENERATIVE_ORDER = ("label-vae", "image-vae", "label-ldm", "image-ldm", "controlnet", "vqvae", "vqvae-ldm")
TINY_ABLATION = ("label_latent", "label_downsampled", "label_fractions")  # tiny conditions on label_fullres


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


def test_experiment_skips_trained_stages_and_trains_the_ablation(experiment_run):
    run, output = experiment_run
    assert "[skip] train image-ldm" in output and "[step] train controlnet-label_latent" in output
    for folder in ("controlnet-label_latent", "controlnet-label_downsampled", "controlnet-label_fractions"):
        assert (run / folder / "model.safetensors").is_file()


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
        [*experiment_args(tiny_prepared, run), "--only", "table1"],
    )
    assert result.exit_code == 0 and "[skip] Table I" in result.output
    assert (run / "evaluation" / "table1.json").stat().st_mtime_ns == before
    result = runner.invoke(
        app, ["experiment", "--data", str(tiny_prepared), "--run", str(run), "--only", "tables"]
    )
    assert result.exit_code == 2 and "tables" in result.output


def test_per_seed_synthetic_sets_make_the_experiment_sample_one_pool_for_every_seed(tiny_prepared, tmp_path):
    """synthetic_per_seed draws disjoint per-seed sets from the run's one sample folder: the experiment must
    sample enough for all of them (else Table II would stop at 'pool holds ...' after hours of training)."""
    from foscu.config import load_config
    from foscu.experiment import Protocol

    shared = ["sample.n=2", "segmentation.seeds=3", "segmentation.synthetic_fraction=1.0"]
    assert Protocol(load_config("tiny", shared), tiny_prepared, tmp_path / "a").n_samples == 2
    per_seed = Protocol(
        load_config("tiny", [*shared, "segmentation.synthetic_per_seed=true"]), tiny_prepared, tmp_path / "b"
    )
    assert per_seed.n_samples == 3 * 3  # 3 training cases x fraction 1.0, for each of 3 seeds
