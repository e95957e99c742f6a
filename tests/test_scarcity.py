"""The data-scarcity curve: nested subsets, synthetic-only training, "worth about", its figure, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SEG_TWO_STEPS

from foscu.errors import InputError
from foscu.scarcity_stats import (
    MEAN,
    bootstrap_interval,
    equivalent_real_cases,
    metric,
    nested_subsets,
    paired_difference,
    worth_sentence,
)

CASES = [f"case_{i:02d}" for i in range(10)]


def test_nested_subsets_are_fixed_per_seed_and_nested():
    subsets = nested_subsets(CASES, [0, 3, 5, 10], seed=4)
    order = [str(c) for c in np.random.default_rng(4).permutation(sorted(CASES))]
    assert subsets[0] == [] and subsets[10] == order and sorted(subsets[10]) == CASES
    assert subsets[3] == order[:3] and subsets[5] == order[:5]
    assert set(subsets[3]) <= set(subsets[5]) <= set(subsets[10])
    assert (
        nested_subsets(list(reversed(CASES)), [5], seed=4)[5] == subsets[5]
    )  # the split's order is irrelevant
    assert nested_subsets(CASES, [5], seed=5)[5] != subsets[5]  # another seed, another subset


def test_counts_resolve_all_and_refuse_more_than_the_split():
    from foscu.scarcity import resolve_counts

    assert resolve_counts([10, 0, "all", 5], 21) == [0, 5, 10, 21]
    assert resolve_counts(["all", 21], 21) == [21]
    with pytest.raises(InputError, match="exceed the 21 training cases"):
        resolve_counts([5, 30], 21)


def test_metric_by_hand_follows_the_nnunet_means():
    scores = {
        "a": {"liver": 0.9, "tumor": None},
        "b": {"liver": 0.7, "tumor": 0.4},
    }
    assert metric(scores, ["a", "b"], "liver") == pytest.approx(0.8)
    assert metric(scores, ["a", "b"], MEAN) == pytest.approx((0.8 + 0.4) / 2)
    assert metric(scores, ["a", "a"], MEAN) == pytest.approx(0.9)  # tumor excluded on a: liver alone
    assert metric(scores, ["a", "b", "b"], "liver") == pytest.approx((0.9 + 0.7 + 0.7) / 3)  # repeats count


def test_paired_bootstrap_of_a_constant_shift_is_the_shift():
    real = [{f"c{i}": {"liver": 0.1 * i} for i in range(1, 6)} for _ in range(2)]
    mixed = [{c: {"liver": v["liver"] + 0.05} for c, v in seed.items()} for seed in real]
    diff = paired_difference(real, mixed, "liver", 200, seed=0)
    assert diff["mean"] == pytest.approx(0.05)
    assert diff["paired_bootstrap"] == pytest.approx([0.05, 0.05])
    assert diff["t_interval"] == pytest.approx([0.05, 0.05])
    spread = bootstrap_interval(real, "liver", 200, seed=0)  # one arm: case sampling shows
    assert spread is not None and spread[0] < 0.3 < spread[1]
    assert bootstrap_interval(real, "liver", 0, seed=0) is None


def test_equivalent_real_cases_interpolates_linearly_by_hand():
    ns, real = [5, 10, 20, 40], [0.40, 0.60, 0.70, 0.72]
    assert equivalent_real_cases(ns, real, 0.65, start=10) == ("at", pytest.approx(15.0))  # 10 + 0.5 x 10
    assert equivalent_real_cases(ns, real, 0.71, start=10) == ("at", pytest.approx(30.0))
    assert equivalent_real_cases(ns, real, 0.80, start=5) == ("above", 40.0)
    assert equivalent_real_cases(ns, real, 0.30, start=0) == ("below", 5.0)
    assert equivalent_real_cases(ns, real, 0.50, start=0) == ("at", pytest.approx(7.5))
    assert equivalent_real_cases(ns, [0.4, None, 0.7, 0.72], 0.55, start=5) == ("at", pytest.approx(12.5))


def test_worth_sentences_say_worth_never_and_no_help():
    curve = {5: 0.40, 10: 0.60, 20: 0.70, 40: 0.72}
    kind, text, value = worth_sentence(10, curve, 0.65, "mean foreground Dice", 40)
    assert (kind, value) == ("worth", pytest.approx(15.0))
    assert "at n = 10, adding synthetic pairs is worth about 15.0 real cases" in text
    kind, text, _ = worth_sentence(20, curve, 0.90, "liver Dice", 40)
    assert kind == "more_than_all" and "worth more than all 40 real cases" in text
    kind, text, _ = worth_sentence(20, {5: 0.4, 20: 0.7}, 0.90, "liver Dice", 40)
    assert "worth more than the 20 real cases" in text  # the list stops short of the whole split
    diff = {"mean": -0.05, "paired_bootstrap": [-0.08, -0.01]}
    kind, text, value = worth_sentence(10, curve, 0.55, "mean foreground Dice", 40, diff)
    assert (kind, value) == ("no_help", None)
    assert "does not help: mean foreground Dice 0.550 with them against 0.600 without" in text
    assert "-0.050, 95 % interval -0.080 to -0.010" in text
    kind, text, _ = worth_sentence(0, curve, 0.30, "liver Dice", 40)
    assert kind == "fewer_than" and "synthetic pairs alone are worth fewer than the 5 real cases" in text
    assert worth_sentence(10, {5: 0.4}, 0.7, "liver Dice", 40)[0] == "missing"


def _result(curve_points: list[dict]) -> dict:
    return {
        "n": [0, 5, 10],
        "n_training": 10,
        "seeds": [0, 1],
        "synthetic_cases": 8,
        "curve": {MEAN: curve_points, "liver": curve_points},
        "difference": {MEAN: [], "liver": []},
        "worth": {MEAN: [], "liver": []},
        "generator": "trained once on the whole training split (10 cases) of this run",
        "note": "note",
    }


def test_the_figure_is_drawn_with_missing_values():
    from foscu.figures_scarcity import figure_scarcity, scarcity_markdown

    points = [
        {"n": 0, "arm": "real+synthetic", "mean": 0.3, "t_interval": None, "bootstrap_interval": [0.2, 0.4]},
        {"n": 5, "arm": "real", "mean": None, "t_interval": None, "bootstrap_interval": None},
        {"n": 5, "arm": "real+synthetic", "mean": 0.5, "t_interval": [0.4, 0.6], "bootstrap_interval": None},
        {"n": 10, "arm": "real", "mean": 0.7, "t_interval": None, "bootstrap_interval": None},
        {"n": 10, "arm": "own-generator", "mean": 0.6, "t_interval": None, "bootstrap_interval": None},
    ]
    png = figure_scarcity(_result(points))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    text = scarcity_markdown(_result(points))
    assert "| mean foreground Dice | 5 | n/a | 0.500 [0.400, 0.600] |" in text
    assert "did not help at any n" in text


def test_training_items_at_n0_hold_no_real_case(tiny_prepared, tmp_path):
    from foscu.data.prepare import read_prepared
    from foscu.segmentation.train import training_items

    synthetic = _synthetic_copy(tiny_prepared, tmp_path / "synthetic")
    prepared = read_prepared(tiny_prepared)
    real, drawn = training_items(prepared, [synthetic], 1.0, 0, real_cases=[], synthetic_count=2)
    assert real == [] and len(drawn) == 2
    first = prepared.datalist["training"][0]["case_id"]
    real, again = training_items(prepared, [synthetic], 1.0, 0, real_cases=[first], synthetic_count=2)
    assert [r["case_id"] for r in real] == [first] and again == drawn  # the same two at every n
    with pytest.raises(InputError, match="holds 6 synthetic cases; 7 were asked for"):
        training_items(prepared, [synthetic], 1.0, 0, real_cases=[], synthetic_count=7)
    with pytest.raises(InputError, match="not in the training split"):
        training_items(prepared, [], 1.0, 0, real_cases=["nobody"])


def _synthetic_copy(prepared: Path, out: Path) -> Path:
    """The prepared cases (all six) as a stand-in sample folder (same layout and label map)."""
    from foscu.data.layout import write_dataset_json
    from foscu.data.prepare import read_prepared

    for sub in ("imagesTr", "labelsTr"):
        shutil.copytree(prepared / sub, out / sub)
    write_dataset_json(out, "synthetic", len(read_prepared(prepared).datalist["training"]))
    return out


def test_parse_run_name_reads_the_subset_count():
    from foscu.segmentation.train import parse_run_name, parse_subset_run_name, run_name

    assert run_name("unet", "multiclass", True, 3, n=0) == "unet-multiclass-real+synthetic-n0-seed3"
    assert parse_subset_run_name("seg/unet-multiclass-real-n5-seed2") == ("unet", "multiclass", False, 2, 5)
    assert parse_subset_run_name("seg/unet-multiclass-real-n5") == ("unet", "multiclass", False, None, 5)
    assert parse_run_name("seg/unet-multiclass-real-n5-seed2") == ("unet", "multiclass", False, 2)
    with pytest.raises(InputError, match="is not seg/"):
        parse_run_name("seg/unet-multiclass-n5")


def _scarcity_overrides(n: str) -> list[str]:
    return [
        *SEG_TWO_STEPS,
        f"scarcity.n={n}",
        "scarcity.seeds=1",
        "scarcity.bootstrap=20",
        "scarcity.synthetic_cases=2",
    ]


@pytest.fixture
def sampled_run(tiny_run, tmp_path):
    """A copy of the tiny run with 3 Duo-Diffusion samples in RUN/samples (the shared synthetic set)."""
    from foscu.generative.generate import generate

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    generate(run, 3, run / "samples", "ddim", 2, 0, batch_size=3, progress=False)
    return run


def test_tiny_curve_end_to_end_resumes_and_refuses_another_draw(sampled_run, tiny_prepared, capsys):
    from foscu.experiment import run_experiment
    from foscu.report import build_report

    run = sampled_run
    overrides = [*_scarcity_overrides("[0, 2]"), "scarcity.lesions_n=[2]"]
    run_experiment("tiny", tiny_prepared, run, overrides, only=["scarcity"], progress=False)
    result = json.loads((run / "evaluation" / "scarcity.json").read_text())
    cells = {(c["n"], c["arm"]): c for c in result["cells"]}
    assert sorted(cells) == [(0, "real+synthetic"), (2, "real"), (2, "real+lesions"), (2, "real+synthetic")]
    _check_lesion_arm(run, result, cells[(2, "real+lesions")], cells[(2, "real")])
    assert (
        cells[(0, "real+synthetic")]["real_cases"] == []
        and cells[(0, "real+synthetic")]["synthetic_cases"] == 2
    )
    assert cells[(2, "real")]["real_cases"] == cells[(2, "real+synthetic")]["real_cases"]
    assert len(cells[(2, "real")]["real_cases"]) == 2 and cells[(2, "real")]["synthetic_cases"] == 0
    n0 = yaml.safe_load((run / "seg" / "unet-multiclass-real+synthetic-n0" / "config.yaml").read_text())
    assert n0["training_cases"] == {"real": 0, "synthetic": 2} and n0["real_case_ids"] == []
    for c in result["cells"]:
        assert set(c["dice"]) == {"liver", "portal_vein", "hepatic_vein", "tumor"}
        assert set(c["cases"]) == {item["case_id"] for item in _test_split(tiny_prepared)}
    worth = sorted((w["n"], w["arm"]) for w in result["worth"][MEAN])
    assert (
        worth == [(0, "real+synthetic"), (2, "real+lesions"), (2, "real+synthetic")]
        and result["worth"]["liver"]
    )
    assert result["generator"].startswith("trained once on the whole training split (3 cases)")
    report = build_report(run)[1].read_text()
    assert "Data scarcity: what a synthetic pair is worth" in report and "at n = 2," in report
    assert "Data scarcity: Dice against real training cases n" in report

    model = run / "seg" / "unet-multiclass-real-n2" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    (run / "evaluation" / "scarcity.json").unlink()  # the step reruns; its finished cells do not
    run_experiment("tiny", tiny_prepared, run, overrides, only=["scarcity"], progress=False)
    assert model.stat().st_mtime_ns == stamp
    assert json.loads((run / "evaluation" / "scarcity.json").read_text())["cells"] == result["cells"]
    capsys.readouterr()
    run_experiment("tiny", tiny_prepared, run, overrides, only=["scarcity"], progress=False)
    assert "[skip] data-scarcity curve" in capsys.readouterr().err

    (run / "evaluation" / "scarcity.json").unlink()
    with pytest.raises(InputError, match="synthetic_count, synthetic_digest"):
        run_experiment(
            "tiny", tiny_prepared, run, [*overrides, "scarcity.synthetic_cases=3"], only=["scarcity"]
        )
    with pytest.raises(InputError, match="other section"):  # other training settings: retrain, never reuse
        run_experiment(
            "tiny", tiny_prepared, run, [*overrides, "segmentation.train.patience=7"], only=["scarcity"]
        )


def _check_lesion_arm(run: Path, result: dict, lesion: dict, real: dict) -> None:
    """The lesion arm trained on the real cell's n cases plus one edited copy of each, in its own stage."""
    assert lesion["real_cases"] == real["real_cases"] and lesion["synthetic_cases"] == 2
    assert lesion["folder"].endswith("unet-multiclass-real+lesions-n2")  # not the shared-synthetic cell's
    trained = yaml.safe_load((Path(lesion["folder"]) / "config.yaml").read_text())
    record = json.loads((run / "scarcity" / "lesions-n2" / "samples.json").read_text())
    assert record["sources"] == sorted(real["real_cases"])  # copies of the user's own cases only
    assert sorted(trained["synthetic_cases"]) == sorted(f"lesions-n2/{case}" for case in record["cases"])
    assert [d["arm"] for d in result["difference"][MEAN] if d["n"] == 2] == ["real+lesions", "real+synthetic"]
    assert any(w["arm"] == "real+lesions" for w in result["worth"]["tumor"])
    assert "real+lesions (n = [2])" in result["note"]


def test_a_lesion_set_of_other_sources_is_refused(tiny_prepared, tmp_path):
    from foscu.config import load_config
    from foscu.runs import RunFolder
    from foscu.scarcity_lesions import lesion_folder, make_lesion_set

    cfg = load_config("tiny", ["scarcity.n=[1]", "scarcity.lesions_n=[1]"])
    training = [c["case_id"] for c in json.loads((tiny_prepared / "datalist.json").read_text())["training"]]
    folder = lesion_folder(cfg, RunFolder(tmp_path), 1, 0)
    folder.mkdir(parents=True)
    s = cfg.sample
    settings = {
        "n_per_case": 1,
        "method": "inpaint",
        "margin": 3,
        "seed": 0,
        "sampler": s.sampler,
        "steps": s.steps,
    }
    (folder / "samples.json").write_text(json.dumps({**settings, "sources": [training[0]], "cases": {}}))
    with pytest.raises(InputError, match="other sources"):
        make_lesion_set(cfg, tiny_prepared, RunFolder(tmp_path), [training[1]], 0, False)
    assert make_lesion_set(cfg, tiny_prepared, RunFolder(tmp_path), [training[0]], 0, False) == (folder, 0)


def _test_split(prepared: Path) -> list[dict]:
    return json.loads((prepared / "datalist.json").read_text())["test"]


def test_the_curve_needs_the_run_samples(tiny_run, tiny_prepared, tmp_path):
    from foscu.config import load_config
    from foscu.scarcity import run_scarcity

    cfg = load_config("tiny", _scarcity_overrides("[0]"))
    with pytest.raises(InputError, match="no finished sample folder"):
        run_scarcity(cfg, tiny_prepared, tiny_run, progress=False)


def test_the_curve_is_no_step_unless_the_config_lists_counts(tiny_prepared, tmp_path):
    from foscu.config import load_config
    from foscu.experiment import Protocol

    names = [s.name for s in Protocol(load_config("tiny"), tiny_prepared, tmp_path / "run").steps()]
    assert "data-scarcity curve" not in names
    cfg = load_config("tiny", ["scarcity.n=[0, all]"])
    steps = {s.name: s for s in Protocol(cfg, tiny_prepared, tmp_path / "run").steps()}
    assert steps["data-scarcity curve"].group == "scarcity"
    curve = load_config("scarcity")  # the proof preset with its curve
    assert curve.scarcity.n == [0, 5, 10, 21, "all"] and curve.scarcity.own_generator_n == 10
    assert curve.scarcity.lesions_n == [5, 10]
    for preset in ("tiny", "demo", "proof"):
        assert not load_config(preset).scarcity.n and load_config(preset).scarcity.own_generator_n is None
        assert not load_config(preset).scarcity.lesions_n


def test_the_subset_prepared_set_holds_only_its_training_cases(tiny_prepared, tmp_path):
    from foscu.data.prepare import read_prepared
    from foscu.scarcity_own import write_subset_prepared

    full = read_prepared(tiny_prepared)
    chosen = [full.datalist["training"][1]["case_id"]]
    out = write_subset_prepared(tiny_prepared, chosen, tmp_path / "subset")
    subset = read_prepared(out)
    assert [c["case_id"] for c in subset.datalist["training"]] == chosen
    for split in ("validation", "test"):
        assert [c["case_id"] for c in subset.datalist[split]] == [c["case_id"] for c in full.datalist[split]]
    assert all(
        Path(c["image"]).is_file() and Path(c["label"]).is_file() for s in subset.datalist.values() for c in s
    )
    assert (subset.roi, subset.labels) == (full.roi, full.labels)
    assert write_subset_prepared(tiny_prepared, chosen, out) == out  # the same subset: reused
    with pytest.raises(InputError, match="holds another subset"):
        write_subset_prepared(tiny_prepared, [full.datalist["training"][0]["case_id"]], out)


def test_the_own_generator_arm_trains_its_generator_on_the_n_cases(sampled_run, tiny_prepared):
    from foscu.experiment import run_experiment

    run = sampled_run
    overrides = [*_scarcity_overrides("[2]"), "scarcity.own_generator_n=2"]
    run_experiment("tiny", tiny_prepared, run, overrides, only=["scarcity"], progress=False)
    result = json.loads((run / "evaluation" / "scarcity.json").read_text())
    own = [c for c in result["cells"] if c["arm"] == "own-generator"]
    mixed = [c for c in result["cells"] if c["arm"] == "real+synthetic"]
    assert len(own) == 1 and own[0]["real_cases"] == mixed[0]["real_cases"] and own[0]["synthetic_cases"] == 2
    folder = run / "scarcity" / "own-generator-n2"
    subset = json.loads((folder / "prepared" / "datalist.json").read_text())
    assert sorted(c["case_id"] for c in subset["training"]) == sorted(own[0]["real_cases"])
    identity = json.loads((folder / "run" / "run.json").read_text())
    assert identity["data"] == str(folder / "prepared")  # its generator saw the subset only
    assert (folder / "run" / "controlnet" / "model.safetensors").is_file()
    assert len(list((folder / "run" / "samples" / "imagesTr").glob("*.nii.gz"))) == 2
    assert any(w["arm"] == "own-generator" for w in result["worth"][MEAN])


def test_lesions_n_must_be_counts_of_the_curve():
    from foscu.config import load_config

    with pytest.raises(InputError, match="lesions_n"):
        load_config("tiny", ["scarcity.n=[0, 5]", "scarcity.lesions_n=[10]"])
    with pytest.raises(InputError, match="lesions_n"):
        load_config("tiny", ["scarcity.n=[0, 5]", "scarcity.lesions_n=[0]"])
