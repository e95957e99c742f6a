import csv
import json
import shutil

import pytest
import yaml

from foscu.config import load_config
from foscu.data.layout import write_dataset_json
from foscu.data.prepare import prepare_dataset, read_prepared
from foscu.errors import InputError
from foscu.labels import labels_for_task
from foscu.segmentation.train import run_name
from foscu.table2 import run_table2, seed_list, table2_csv, table2_markdown, table2_rows
from foscu.table2_cells import counts_note


def fake(dice, task="binary"):
    classes = [n for n, v in labels_for_task(task).items() if v != 0]
    return {"mean": {c: {"dice": dice} for c in classes}, "foreground_mean": {"dice": dice}}


# The paper's Table II: (arch, task) -> (real, real + synthetic, improvement as printed)
PAPER_TABLE2 = {
    ("unet", "binary"): (0.9650, 0.9662, 0.12),
    ("unet", "multiclass"): (0.6968, 0.7014, 0.66),
    ("resunet", "binary"): (0.9633, 0.9634, 0.01),
    ("resunet", "multiclass"): (0.6601, 0.6652, 0.77),
    ("wideresunet", "binary"): (0.9657, 0.9649, -0.08),
    ("wideresunet", "multiclass"): (0.6961, 0.7020, 0.85),
    ("dynunet", "binary"): (0.9692, 0.9701, 0.09),
    ("dynunet", "multiclass"): (0.7301, 0.7340, 0.53),
    ("vnet", "binary"): (0.9614, 0.9618, 0.04),
    ("vnet", "multiclass"): (0.6643, 0.6679, 0.54),
    ("mean", "binary"): (0.9649, 0.9653, 0.04),
    ("mean", "multiclass"): (0.6895, 0.6941, 0.67),
}


def test_improvement_is_relative_as_the_papers_table2():
    archs = ["unet", "resunet", "wideresunet", "dynunet", "vnet"]
    results = {}
    for (arch, task), (real, mixed, _) in PAPER_TABLE2.items():
        if arch != "mean":
            results[(arch, task, "real")] = [fake(real, task)]
            results[(arch, task, "real+synthetic")] = [fake(mixed, task)]
    rows = table2_rows(results, archs, ["binary", "multiclass"])
    by = {(r["arch"], r["task"]): r for r in rows if r["class"] == "mean"}
    for key, (real, mixed, printed) in PAPER_TABLE2.items():
        assert round(by[key]["improvement_percent"], 2) == printed, key  # every cell as printed
        assert by[key]["real"] == pytest.approx(real, abs=5e-5)
        assert by[key]["real+synthetic"] == pytest.approx(mixed, abs=5e-5)
        assert by[key]["difference_points"] == pytest.approx(
            (by[key]["real+synthetic"] - by[key]["real"]) * 100, abs=1e-4
        )
    assert by[("unet", "multiclass")]["improvement_percent"] == pytest.approx(
        (0.7014 - 0.6968) / 0.6968 * 100, abs=1e-4
    )
    md = table2_markdown(rows, "note")
    assert "| U-Net | Multi-Class | mix | mean | 0.6968 | 0.7014 | +0.66% | +0.46 |" in md
    assert "Improvement (relative, %)" in md and "Difference (points)" in md


def test_rows_overall_mean():
    results = {
        ("unet", "binary", "real"): [fake(0.9650)],
        ("unet", "binary", "real+synthetic"): [fake(0.9662)],
        ("vnet", "binary", "real"): [fake(0.9614)],
        ("vnet", "binary", "real+synthetic"): [fake(0.9618)],
    }
    rows = table2_rows(results, ["unet", "vnet"], ["binary"])
    by = {(r["arch"], r["class"]): r for r in rows}
    assert by[("mean", "liver")]["real"] == pytest.approx((0.9650 + 0.9614) / 2)
    real, mixed = (0.9650 + 0.9614) / 2, (0.9662 + 0.9618) / 2
    assert by[("mean", "mean")]["improvement_percent"] == pytest.approx((mixed - real) / real * 100, abs=1e-4)
    assert len(rows) == 3 * 2  # (unet, vnet, mean) x (liver, mean)
    assert (
        table2_rows(
            {("unet", "binary", "real"): [fake(0.0)], ("unet", "binary", "real+synthetic"): [fake(0.5)]},
            ["unet"],
            ["binary"],
        )[0]["improvement_percent"]
        is None
    )  # relative to 0: undefined


def test_grid_writes_table2_on_tiny_data_and_skips_done_runs(tiny_phantom, tmp_path):
    prepared = tmp_path / "prepared"
    prepare_dataset(tiny_phantom, prepared, roi=(32, 32, 16), progress=False)
    synthetic = tmp_path / "synthetic"  # stands in for `foscu sample` output: same layout and label map
    for sub in ("imagesTr", "labelsTr"):
        shutil.copytree(prepared / sub, synthetic / sub)
    write_dataset_json(synthetic, "synthetic", len(read_prepared(prepared).datalist["training"]))
    cfg = load_config("tiny", ["segmentation.train.steps=2", "segmentation.train.val_every=2"])

    table = run_table2(
        cfg, prepared, tmp_path / "run", synthetic, archs=["unet"], tasks=["binary"], progress=False
    )
    out = tmp_path / "run" / "evaluation"
    assert json.loads((out / "table2.json").read_text()) == table
    assert [(r["arch"], r["class"]) for r in table["rows"]] == [
        ("unet", "liver"),
        ("unet", "mean"),
        ("mean", "liver"),
        ("mean", "mean"),
    ]
    row = table["rows"][0]
    assert 0 <= row["real"] <= 1 and 0 <= row["real+synthetic"] <= 1
    assert row["improvement_percent"] == pytest.approx(
        (row["real+synthetic"] - row["real"]) / row["real"] * 100, abs=1e-3
    )
    assert "seed 0 " in table["note"] and "nnU-Net" in table["note"]
    with (out / "table2.csv").open() as fh:
        first = list(csv.DictReader(fh))[0]
    assert first["arch"] == "unet" and float(first["improvement_percent"]) == row["improvement_percent"]
    assert "relative" in table["note"]
    assert "| U-Net | Liver-Only | mix | liver |" in (out / "table2.md").read_text()
    for name in ("unet-binary-real", "unet-binary-real+synthetic"):
        assert (out / "seg" / f"{name}.json").is_file()
    # each cell records what it trained on (the cases of its training list) and when it was best
    n_real = len(read_prepared(prepared).datalist["training"])
    real_cell, mixed_cell = table["cells"]
    assert (real_cell["data"], real_cell["real_cases"], real_cell["synthetic_cases"]) == ("real", n_real, 0)
    assert (mixed_cell["data"], mixed_cell["real_cases"]) == ("real+synthetic", n_real)
    assert mixed_cell["synthetic_cases"] == n_real  # fraction 1.0 of n_real; the set holds that many
    recorded = yaml.safe_load(
        (tmp_path / "run" / "seg" / "unet-binary-real+synthetic" / "config.yaml").read_text()
    )
    assert len(recorded["synthetic_cases"]) == n_real
    # equal real exposure (the default budget): the mixed arm, half synthetic, trains twice the real arm's steps
    assert [(c["protocol"], c["steps"], c["best_step"]) for c in table["cells"]] == [
        ("real", 2, 2),
        ("mix", 4, 4),
    ]
    assert all(c["stopped_early"] is False for c in table["cells"])
    assert table["cells"][1]["budget"].startswith("equal_real_exposure: 2 x")
    assert "equal_real_exposure" in table["note"]
    assert f"{n_real} real + {n_real} synthetic" in table["note"]
    assert f"{n_real} real + 0 synthetic" in table["note"] and "1.00 per real case" in table["note"]
    assert "same synthetic cases" in table["note"] and "Stopped early: 0 of 2 cells" in table["note"]
    assert "## Training per cell" in (out / "table2.md").read_text()
    with (out / "table2_cells.csv").open() as fh:
        lines = list(csv.DictReader(fh))
    assert [(c["data"], c["best_step"], c["stopped_early"]) for c in lines] == [
        ("real", "2", "False"),
        ("real+synthetic", "4", "False"),
    ]
    assert lines[0]["synthetic_digest"] == "" and len(lines[1]["synthetic_digest"]) == 64

    done = [
        tmp_path / "run" / "seg" / "unet-binary-real" / "metrics.json",
        out / "seg" / "unet-binary-real.json",
    ]
    stamps = [path.stat().st_mtime_ns for path in done]
    again = run_table2(
        cfg, prepared, tmp_path / "run", synthetic, archs=["unet"], tasks=["binary"], progress=False
    )
    assert again == table
    assert [
        path.stat().st_mtime_ns for path in done
    ] == stamps  # finished runs are neither retrained nor rescored


T_975_2 = 4.3027  # Student t, 97.5th percentile, 2 degrees of freedom (any t table)


def test_seeds_are_a_count_from_the_config_seed_or_a_list():
    assert seed_list(load_config("tiny")) == [0]  # default: one seed, today's behaviour
    assert seed_list(load_config("tiny", ["seed=5", "segmentation.seeds=3"])) == [5, 6, 7]
    assert seed_list(load_config("tiny", ["segmentation.seeds=[4, 0, 9]"])) == [4, 0, 9]
    for bad in ("0", "[]", "[1, 1]", "[-2]"):
        with pytest.raises(InputError, match="segmentation.seeds"):
            load_config("tiny", [f"segmentation.seeds={bad}"])


def test_three_seeds_mean_t_interval_and_paired_improvement_by_hand():
    real, mixed = [0.80, 0.84, 0.88], [0.82, 0.85, 0.91]
    results = {
        ("unet", "binary", "real"): [fake(v) for v in real],
        ("unet", "binary", "real+synthetic"): [fake(v) for v in mixed],
        ("vnet", "binary", "real"): [fake(v) for v in (0.70, 0.74, 0.72)],
        ("vnet", "binary", "real+synthetic"): [fake(v) for v in (0.71, 0.75, 0.73)],
    }
    rows = table2_rows(results, ["unet", "vnet"], ["binary"])
    row = next(r for r in rows if r["arch"] == "unet" and r["class"] == "liver")
    assert row["real_per_seed"] == real and row["real+synthetic_per_seed"] == mixed
    # real: mean 0.84, sd 0.04, half-width 4.3027 x 0.04 / sqrt(3) = 0.09937
    assert row["real"] == pytest.approx(0.84)
    assert row["real_ci"] == pytest.approx([0.84 - 0.09937, 0.84 + 0.09937], abs=1e-4)
    # real + synthetic: mean 0.86, sd sqrt((0.04^2 + 0.01^2 + 0.05^2) / 2) = 0.045826, half-width 0.11384
    assert row["real+synthetic"] == pytest.approx(0.86)
    half = T_975_2 * 0.045826 / 3**0.5
    assert row["real+synthetic_ci"] == pytest.approx([0.86 - half, 0.86 + half], abs=1e-4)
    # relative improvement of the means: (0.86 - 0.84) / 0.84 x 100 = 2.381 %
    assert row["improvement_percent"] == pytest.approx(2.381, abs=1e-3)
    # paired: 2.5 %, 1.1905 %, 3.4091 % -> mean 2.3665 %, sd 1.11531, half-width 2.7706
    assert row["paired_improvement_percent"] == pytest.approx(2.3665, abs=1e-4)
    assert row["paired_improvement_ci"] == pytest.approx([2.3665 - 2.7706, 2.3665 + 2.7706], abs=1e-3)
    overall = next(r for r in rows if r["arch"] == "mean" and r["class"] == "liver")
    assert overall["real_per_seed"] == pytest.approx([0.75, 0.79, 0.80])  # per seed, mean over archs
    assert overall["real"] == pytest.approx(0.78)
    md = table2_markdown(rows, "note")
    assert (
        "| U-Net | Liver-Only | mix | liver | 0.8400 ± 0.0994 | 0.8600 ± 0.1138 | +2.38% | +2.00 | +2.37% ± 2.77 |"
        in md
    )
    first = list(csv.DictReader(table2_csv(rows).splitlines()))[0]
    assert float(first["real_half_width"]) == pytest.approx(0.09937, abs=1e-4)
    assert first["real_per_seed"] == "0.8;0.84;0.88"
    single = table2_rows({k: v[:1] for k, v in results.items()}, ["unet", "vnet"], ["binary"])[0]
    assert single["real_ci"] is None and single["paired_improvement_ci"] is None  # one seed: no interval


def test_grid_trains_every_seed_into_its_own_folder(tiny_prepared, tmp_path, monkeypatch):
    from foscu import stages
    from foscu.evaluation import segmentation_metrics
    from foscu.segmentation import predict

    trained, predicted = [], []

    def fake_train(arch, task, cfg, prepared_root, run_folder, synthetic=None, **kwargs):
        trained.append((bool(synthetic), kwargs["seed"]))
        name = run_name(arch, task, bool(synthetic), None if kwargs["seed"] == cfg.seed else kwargs["seed"])
        folder = run_folder / "seg" / name  # what a finished stage leaves: its config and its summary
        folder.mkdir(parents=True)
        cases = {"real": 3, "synthetic": 3 if synthetic else 0}
        (folder / "config.yaml").write_text(yaml.safe_dump({"training_cases": cases}))
        (folder / "metrics.json").write_text(json.dumps({"steps": 8, "best_step": 4, "stopped_early": True}))

    def fake_predict(folder, images, out, overwrite, progress):
        predicted.append(folder.name)
        return {case: out / f"{case}.nii.gz" for case in images}

    def fake_evaluate(pairs, task, out):
        synthetic, seed = trained[-1]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        return fake(0.5 + 0.1 * seed + (0.05 if synthetic else 0.0), task)

    monkeypatch.setattr(stages, "train_segmenter", fake_train)
    monkeypatch.setattr(predict, "predict_cases", fake_predict)
    monkeypatch.setattr(segmentation_metrics, "evaluate_cases", fake_evaluate)
    cfg = load_config("tiny", ["segmentation.seeds=3"])
    run = tmp_path / "run"
    synthetic = tmp_path / "synthetic"
    for sub in ("imagesTr", "labelsTr"):
        shutil.copytree(tiny_prepared / sub, synthetic / sub)
    write_dataset_json(synthetic, "synthetic", len(read_prepared(tiny_prepared).datalist["training"]))
    table = run_table2(cfg, tiny_prepared, run, synthetic, ["unet"], ["binary"], progress=False)

    assert trained == [(False, 0), (False, 1), (False, 2), (True, 0), (True, 1), (True, 2)]
    names = ["unet-binary-real", "unet-binary-real-seed1", "unet-binary-real-seed2"]
    names += [n.replace("real", "real+synthetic", 1) for n in names]
    assert predicted == names  # the config's seed keeps today's folder: the experiment's segmenter
    assert sorted(p.name for p in (run / "evaluation" / "seg").iterdir()) == sorted(
        f"{n}.json" for n in names
    )
    row = table["rows"][0]
    assert row["real_per_seed"] == pytest.approx([0.5, 0.6, 0.7])
    assert row["real+synthetic_per_seed"] == pytest.approx([0.55, 0.65, 0.75])
    assert table["seeds"] == [0, 1, 2] and table["interval"] == "Student-t 95 % over seeds"
    assert "3 times" in table["note"] and "Student-t" in table["note"]
    assert "±" in (run / "evaluation" / "table2.md").read_text()
    assert [(c["data"], c["seed"], c["best_step"]) for c in table["cells"]][2:4] == [
        ("real", 2, 4),
        ("real+synthetic", 0, 4),
    ]
    assert "3 real + 3 synthetic" in table["note"] and "Stopped early: 6 of 6 cells" in table["note"]


def _tiny_table2_run(tiny_phantom, tmp_path):
    prepared = tmp_path / "prepared"
    prepare_dataset(tiny_phantom, prepared, roi=(32, 32, 16), progress=False)
    synthetic = tmp_path / "synthetic"
    for sub in ("imagesTr", "labelsTr"):
        shutil.copytree(prepared / sub, synthetic / sub)
    write_dataset_json(synthetic, "synthetic", len(read_prepared(prepared).datalist["training"]))
    overrides = ["segmentation.train.steps=2", "segmentation.train.val_every=2"]
    run = tmp_path / "run"
    table = run_table2(load_config("tiny", overrides), prepared, run, synthetic, ["unet"], ["binary"], False)
    return prepared, synthetic, run, overrides, table


def test_a_rerun_with_another_ratio_or_synthetic_set_is_refused_never_reused(tiny_phantom, tmp_path):
    prepared, synthetic, run, overrides, table = _tiny_table2_run(tiny_phantom, tmp_path)
    mixed = run / "seg" / "unet-binary-real+synthetic"
    written = [mixed / "model.safetensors", mixed / "metrics.json", mixed / "config.yaml"]
    stamps = [path.stat().st_mtime_ns for path in written]

    def again(extra, source):
        cfg = load_config("tiny", overrides + extra)
        return run_table2(cfg, prepared, run, source, ["unet"], ["binary"], progress=False)

    with pytest.raises(InputError, match="synthetic_fraction 1.0 .* synthetic_fraction 0.5") as err:
        again(["segmentation.synthetic_fraction=0.5"], synthetic)
    assert err.value.path == str(mixed / "config.yaml") and "remove" in err.value.problem

    moved = tmp_path / "moved"
    shutil.copytree(synthetic, moved)
    assert again([], moved) == table  # the same cases under another folder name: the same cell, reused

    resampled = tmp_path / "resampled"  # the same layout and case ids, the images sampled anew
    shutil.copytree(synthetic, resampled)
    cases = sorted((resampled / "imagesTr").iterdir())
    for case in cases[:-1]:
        shutil.copy(cases[-1], case)
    with pytest.raises(InputError, match="synthetic draw"):
        again([], resampled)

    assert (mixed / "train_state.pt").is_file()
    (mixed / "metrics.json").unlink()  # a cell that stopped half-way is not resumed on another set either
    with pytest.raises(InputError, match="synthetic draw"):
        again([], resampled)
    assert not (mixed / "metrics.json").exists()
    assert [path.stat().st_mtime_ns for path in written[::2]] == stamps[::2]  # nothing rewritten


def test_counts_note_gives_the_real_counts_and_a_capped_ratio():
    # the proof's case: synthetic_fraction 1.0 asks for round(1.0 x 42) = 42, the set holds 36 -> 0.86
    def cell(data, seed, synthetic, digest):
        return {
            "data": data,
            "seed": seed,
            "real_cases": 42,
            "synthetic_cases": synthetic,
            "synthetic_fraction": 1.0 if synthetic else None,
            "synthetic_digest": digest,
            "stopped_early": seed == 1,
        }

    cells = [cell("real", s, 0, None) for s in (0, 1)] + [cell("real+synthetic", s, 36, "a") for s in (0, 1)]
    note = counts_note(cells)
    assert "real: 42 real + 0 synthetic; real+synthetic: 42 real + 36 synthetic." in note
    assert "0.86 per real case (synthetic_fraction 1.0 asked for 42; the set holds only 36)" in note
    assert "same synthetic cases" in note and "Stopped early: 2 of 4 cells" in note
    cells[3]["synthetic_digest"] = "b"
    assert "different, overlapping synthetic cases" in counts_note(cells)
    assert "include the generator's sampling variance" not in counts_note(cells)
    for c in cells[2:]:
        c["synthetic_draw"] = "one sample folder per seed"
    assert "include the generator's sampling variance" in counts_note(cells)
