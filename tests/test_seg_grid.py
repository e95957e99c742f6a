import csv
import json
import shutil

import pytest

from foscu.config import load_config
from foscu.data.layout import write_dataset_json
from foscu.data.prepare import prepare_dataset, read_prepared
from foscu.labels import labels_for_task
from foscu.segmentation.grid import run_table2, table2_markdown, table2_rows


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
            results[(arch, task, "real")] = fake(real, task)
            results[(arch, task, "real+synthetic")] = fake(mixed, task)
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
    assert "| U-Net | Multi-Class | mean | 0.6968 | 0.7014 | +0.66% | +0.46 |" in md
    assert "Improvement (relative, %)" in md and "Difference (points)" in md


def test_rows_overall_mean():
    results = {
        ("unet", "binary", "real"): fake(0.9650),
        ("unet", "binary", "real+synthetic"): fake(0.9662),
        ("vnet", "binary", "real"): fake(0.9614),
        ("vnet", "binary", "real+synthetic"): fake(0.9618),
    }
    rows = table2_rows(results, ["unet", "vnet"], ["binary"])
    by = {(r["arch"], r["class"]): r for r in rows}
    assert by[("mean", "liver")]["real"] == pytest.approx((0.9650 + 0.9614) / 2)
    real, mixed = (0.9650 + 0.9614) / 2, (0.9662 + 0.9618) / 2
    assert by[("mean", "mean")]["improvement_percent"] == pytest.approx((mixed - real) / real * 100, abs=1e-4)
    assert len(rows) == 3 * 2  # (unet, vnet, mean) x (liver, mean)
    assert (
        table2_rows(
            {("unet", "binary", "real"): fake(0.0), ("unet", "binary", "real+synthetic"): fake(0.5)},
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
    assert "| U-Net | Liver-Only | liver |" in (out / "table2.md").read_text()
    for name in ("unet-binary-real", "unet-binary-real+synthetic"):
        assert (out / "seg" / f"{name}.json").is_file()

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
