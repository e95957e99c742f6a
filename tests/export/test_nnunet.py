"""``foscu export nnunet``: real + synthetic cases as an nnU-Net v2 raw set whose validation folds hold real
cases only, read back with nnU-Net's own tools where nnunetv2 is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from foscu.cli import app
from foscu.errors import InputError
from foscu.export.nnunet import cross_validation_splits, dataset_name, export_nnunet

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three Duo-Diffusion pairs of the tiny run (nnU-Net layout)."""
    from foscu.generative.generate import generate

    out = tmp_path_factory.mktemp("synthetic") / "synthetic"
    return generate(tiny_run, 3, out, sampler="ddim", steps=2, progress=False)


def _datalist(prepared: Path) -> dict[str, list[str]]:
    found = json.loads((prepared / "datalist.json").read_text())
    return {split: [item["case_id"] for item in items] for split, items in found.items()}


def _names(folder: Path, suffix: str) -> list[str]:
    return sorted(p.name.removesuffix(suffix) for p in folder.glob(f"*{suffix}"))


def test_the_dataset_holds_real_and_synthetic_training_cases_and_real_test_cases(
    tiny_prepared, synthetic, tmp_path
):
    args = ["export", "nnunet", "--data", str(tiny_prepared), "--synthetic", str(synthetic)]
    args += ["--id", "7", "--name", "LiverSynth", "--out", str(tmp_path / "raw"), "--folds", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "nnUNet_preprocessed/Dataset007_LiverSynth/" in result.stderr
    assert (
        "nnUNetv2_plan_and_preprocess -d 7" in result.stderr
        and "nnUNetv2_train 7 3d_fullres 0" in result.stderr
    )
    root = tmp_path / "raw" / "Dataset007_LiverSynth"
    ids = _datalist(tiny_prepared)
    real = sorted(ids["training"] + ids["validation"])
    fake = [f"syn1_synth_{i:04d}" for i in range(3)]
    assert (
        _names(root / "imagesTr", "_0000.nii.gz")
        == _names(root / "labelsTr", ".nii.gz")
        == sorted(real + fake)
    )
    assert _names(root / "imagesTs", "_0000.nii.gz") == _names(root / "labelsTs", ".nii.gz") == ids["test"]
    meta = json.loads((root / "dataset.json").read_text())
    assert (
        meta["numTraining"] == len(real) + 3
        and meta["labels"] == json.loads((tiny_prepared / "dataset.json").read_text())["labels"]
    )
    splits = json.loads((root / "splits_final.json").read_text())
    assert len(splits) == 2
    assert sorted(c for fold in splits for c in fold["val"]) == real  # the folds partition the real cases
    for fold in splits:
        assert not set(fold["val"]) & set(fake) and set(fake) <= set(fold["train"])
        assert sorted(fold["train"]) == sorted(set(real + fake) - set(fold["val"]))


def test_folds_are_the_same_for_the_same_seed_and_refuse_too_few_cases():
    real = [f"case_{i}" for i in range(11)]
    a = cross_validation_splits(real, ["syn1_a"], 5, seed=0)
    assert a == cross_validation_splits(real, ["syn1_a"], 5, seed=0)
    assert a != cross_validation_splits(real, ["syn1_a"], 5, seed=1)
    assert sorted(len(f["val"]) for f in a) == [2, 2, 2, 2, 3]
    with pytest.raises(InputError, match="5 folds need at least 5 real cases"):
        cross_validation_splits(real[:4], [], 5, seed=0)


def test_synthetic_fraction_draws_that_many_per_real_case(tiny_prepared, synthetic, tmp_path):
    n_real = sum(len(_datalist(tiny_prepared)[s]) for s in ("training", "validation"))
    assert n_real == 4
    record = export_nnunet(tiny_prepared, [synthetic], tmp_path, 8, "Half", synthetic_fraction=0.5, folds=2)
    assert len(record["synthetic_cases"]) == 2
    again = export_nnunet(
        tiny_prepared, [synthetic], tmp_path / "b", 8, "Half", synthetic_fraction=0.5, folds=2
    )
    assert again["synthetic_cases"] == record["synthetic_cases"]
    none = export_nnunet(
        tiny_prepared, [synthetic], tmp_path / "c", 8, "Half", synthetic_fraction=0.0, folds=2
    )
    assert none["synthetic_cases"] == []


def test_two_synthetic_sets_get_distinct_names(tiny_prepared, synthetic, tmp_path):
    record = export_nnunet(tiny_prepared, [synthetic, synthetic], tmp_path, 9, "Two", folds=2)
    assert len(record["synthetic_cases"]) == len(set(record["synthetic_cases"])) == 6


def test_preprocessed_option_writes_the_splits_where_nnunet_reads_them(tiny_prepared, synthetic, tmp_path):
    pre = tmp_path / "preprocessed"
    export_nnunet(tiny_prepared, [synthetic], tmp_path / "raw", 12, "Pre", folds=2, preprocessed=pre)
    written = pre / "Dataset012_Pre" / "splits_final.json"
    assert written.read_text() == (tmp_path / "raw" / "Dataset012_Pre" / "splits_final.json").read_text()
    with pytest.raises(InputError, match="exists: remove it or leave out --preprocessed"):
        export_nnunet(tiny_prepared, [synthetic], tmp_path / "raw2", 12, "Pre", folds=2, preprocessed=pre)
    assert not (tmp_path / "raw2" / "Dataset012_Pre").exists()


def test_bad_input_is_refused_before_anything_is_written(tiny_prepared, synthetic, tmp_path):
    with pytest.raises(InputError, match="ids are 1 to 999"):
        dataset_name(1000, "X")
    with pytest.raises(InputError, match="letters, digits"):
        dataset_name(1, "my data")
    assert dataset_name(3, "Liver") == "Dataset003_Liver"
    (tmp_path / "raw" / "Dataset007_Other").mkdir(parents=True)
    with pytest.raises(InputError, match="holds this id already"):
        export_nnunet(tiny_prepared, [synthetic], tmp_path / "raw", 7, "Mine", folds=2)
    binary = shutil.copytree(synthetic, tmp_path / "binary")
    meta = json.loads((binary / "dataset.json").read_text())
    (binary / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "liver": 1}}))
    result = runner.invoke(
        app,
        ["export", "nnunet", "--data", str(tiny_prepared), "--synthetic", str(binary), "--id", "5", "--name",
         "B", "--out", str(tmp_path / "raw")],
    )  # fmt: skip
    assert result.exit_code == 2 and "differs from the real one" in result.stderr
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset007_Other"]


# ---------------------------------------------------------------- nnU-Net itself reads the export


def _nnunet_module(name: str) -> None:
    pytest.importorskip(name, reason="nnunetv2 not installed (pip install -c <torch pin> .[nnunet])")


def test_nnunet_finds_the_dataset_by_id_and_loads_its_splits(tiny_prepared, synthetic, tmp_path):
    _nnunet_module("nnunetv2.utilities.dataset_name_id_conversion")
    record = export_nnunet(tiny_prepared, [synthetic], tmp_path / "raw", 7, "Liver", folds=2)
    code = (
        "from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name\n"
        "from batchgenerators.utilities.file_and_folder_operations import load_json\n"
        "import os, json\n"
        "name = maybe_convert_to_dataset_name(7)\n"
        "splits = load_json(os.path.join(os.environ['nnUNet_raw'], name, 'splits_final.json'))\n"
        "print(json.dumps([name, [s['val'] for s in splits]]))\n"
    )  # the id lookup and the JSON reader nnUNetTrainer.do_split uses, in a process of its own (env paths)
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    name, val = json.loads(done.stdout.strip().splitlines()[-1])
    assert name == "Dataset007_Liver"
    assert sorted(c for fold in val for c in fold) == record["real_cases"]
    assert not {c for fold in val for c in fold} & set(record["synthetic_cases"])


@pytest.mark.slow  # the check spawns a worker process that imports nnU-Net (a few seconds)
def test_nnunet_integrity_check_passes_on_the_export(tiny_prepared, synthetic, tmp_path):
    _nnunet_module("nnunetv2.experiment_planning.verify_dataset_integrity")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    export_nnunet(tiny_prepared, [synthetic], tmp_path, 7, "Liver", folds=2)
    verify_dataset_integrity(str(tmp_path / "Dataset007_Liver"), num_processes=1)
