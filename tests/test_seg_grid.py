import csv
import json
import shutil

import pytest

from foscu.config import load_config
from foscu.data.layout import write_dataset_json
from foscu.data.prepare import prepare_dataset, read_prepared
from foscu.segmentation.grid import run_table2, table2_markdown, table2_rows


def fake(liver):
    return {"mean": {"liver": {"dice": liver}}, "foreground_mean": {"dice": liver}}


def test_rows_improvement_in_points_and_overall_mean():
    results = {
        ("unet", "binary", "real"): fake(0.9650),
        ("unet", "binary", "real+synthetic"): fake(0.9662),
        ("vnet", "binary", "real"): fake(0.9614),
        ("vnet", "binary", "real+synthetic"): fake(0.9618),
    }
    rows = table2_rows(results, ["unet", "vnet"], ["binary"])
    by = {(r["arch"], r["class"]): r for r in rows}
    assert by[("unet", "liver")]["improvement"] == pytest.approx(0.12)  # the paper's +0.12%
    assert by[("mean", "liver")]["real"] == pytest.approx((0.9650 + 0.9614) / 2)
    assert by[("mean", "mean")]["improvement"] == pytest.approx(
        ((0.9662 + 0.9618) - (0.9650 + 0.9614)) / 2 * 100
    )
    assert len(rows) == 3 * 2  # (unet, vnet, mean) x (liver, mean)
    assert "| U-Net | Liver-Only | liver | 0.9650 | 0.9662 | +0.12% |" in table2_markdown(rows, "note")


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
    assert row["improvement"] == pytest.approx((row["real+synthetic"] - row["real"]) * 100, abs=1e-3)
    assert "seed 0 " in table["note"] and "nnU-Net" in table["note"]
    with (out / "table2.csv").open() as fh:
        assert list(csv.DictReader(fh))[0]["arch"] == "unet"
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
