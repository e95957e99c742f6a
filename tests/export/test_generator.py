"""``foscu export generator`` and ``foscu sample --generator``: a self-contained folder without training data,
a model card from the run's evidence, and samples equal to the run's own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from foscu.cli import app
from foscu.errors import InputError
from foscu.export.generator import export_generator, find_leaks, open_generator

runner = CliRunner()
SAMPLING_STAGES = ["label-vae", "label-ldm", "image-vae", "image-ldm", "controlnet"]


def _case_ids(prepared: Path) -> list[str]:
    datalist = json.loads((prepared / "datalist.json").read_text())
    return [item["case_id"] for split in datalist.values() for item in split]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_export_holds_the_sampling_stages_and_no_training_data(experiment_run, tiny_prepared, tmp_path):
    run, _ = experiment_run
    out = tmp_path / "shared" / "generator"
    result = runner.invoke(app, ["export", "generator", "--run", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = ["README.md", "configs/config.yaml", "configs/generator.json", "configs/metadata.json"]
    expected += ["docs/README.md"]
    expected += [f"models/{s}/{f}" for s in SAMPLING_STAGES for f in ("config.yaml", "model.safetensors")]
    assert _files(out) == sorted(expected)
    for stage in SAMPLING_STAGES:  # the weights and configs are the run's own, byte for byte
        for name in ("config.yaml", "model.safetensors"):
            assert (out / "models" / stage / name).read_bytes() == (run / stage / name).read_bytes()
    # no case id, no data or run path in any byte of any file
    needles = _case_ids(tiny_prepared) + [str(tiny_prepared), str(tiny_prepared.resolve()), str(run)]
    assert len(needles) == 6 + 3
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [n for n in needles if n.encode() in data], path
    # the evidence files the card is made from do name cases: the scan above is not vacuous
    assert any(c.encode() in (run / "evaluation" / "memorization.json").read_bytes() for c in needles)


def test_the_card_reports_counts_evidence_and_the_novelty_finding(experiment_run, tiny_prepared, tmp_path):
    from monai.bundle.utils import DEFAULT_METADATA

    run, _ = experiment_run
    out = tmp_path / "generator"
    export_generator(run, out)
    card = (out / "docs" / "README.md").read_text()
    assert (out / "README.md").read_text() == card
    datalist = json.loads((tiny_prepared / "datalist.json").read_text())
    assert f"Training split: {len(datalist['training'])} cases" in card
    mem = json.loads((run / "evaluation" / "memorization.json").read_text())
    finding = f"found {mem['near_copies']} near copies among {len(mem['samples'])} samples"
    assert finding in card and f"{mem['threshold']:.4f}" in card
    assert "No novelty check was run at export" in card
    ladder = json.loads((run / "evaluation" / "ladder.json").read_text())
    assert all(f"| {row['rung']} | {row['description']} |" in card for row in ladder["rows"])
    assert "Label realism (" in card and "Intended use" in card and "not for diagnosis" in card.lower()
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert set(DEFAULT_METADATA) <= set(meta)  # MONAI Bundle's metadata keys
    assert meta["network_data_format"]["outputs"]["label"]["spatial_shape"] == [32, 32, 16]
    record = json.loads((out / "configs" / "generator.json").read_text())
    assert record["trained_on"] == {k: len(v) for k, v in datalist.items()}
    assert record["stages"] == SAMPLING_STAGES and record["novelty"]["checked"] is True


def test_without_evidence_the_card_says_what_was_not_run(tiny_run, tmp_path):
    record = export_generator(tiny_run, tmp_path / "generator")
    card = (tmp_path / "generator" / "README.md").read_text()
    assert record["novelty"]["checked"] is False
    assert "No novelty check was run: not at export" in card
    for name in ("Fidelity ladder", "Label realism", "Memorization audit"):
        assert f"{name}: not run." in card


def _volumes(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*Tr/*.nii.gz"))}


def test_sampling_from_the_export_equals_sampling_from_the_run(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    export_generator(run, tmp_path / "generator")
    shared = shutil.move(tmp_path / "generator", tmp_path / "elsewhere" / "generator")
    shutil.rmtree(run)  # the collaborator has no run folder (and no data)
    args = ["--n", "2", "--sampler", "ddim", "--steps", "2", "--seed", "3"]
    mine = runner.invoke(app, ["sample", "--run", str(tiny_run), "--out", str(tmp_path / "a"), *args])
    theirs = runner.invoke(app, ["sample", "--generator", str(shared), "--out", str(tmp_path / "b"), *args])
    assert mine.exit_code == 0 and theirs.exit_code == 0, theirs.output
    a, b = _volumes(tmp_path / "a"), _volumes(tmp_path / "b")
    assert len(a) == 4 and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # the sampling defaults come from the export's configs/config.yaml: its sampler when none is given
    cfg = yaml.safe_load((Path(shared) / "configs" / "config.yaml").read_text())
    default = runner.invoke(app, ["sample", "--generator", str(shared), "--out", str(tmp_path / "c")])
    assert default.exit_code == 0, default.output
    assert json.loads((tmp_path / "c" / "samples.json").read_text())["sampler"] == cfg["sample"]["sampler"]


@pytest.mark.parametrize(
    "args, problem",
    [
        ([], "give exactly one"),
        (["--run", "R", "--generator", "G"], "give exactly one"),
        (["--generator", "."], "not an exported generator"),
    ],
)
def test_sample_takes_exactly_one_source(tmp_path, args, problem):
    result = runner.invoke(app, ["sample", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2 and problem in result.stderr
    assert not (tmp_path / "x").exists()


def test_an_export_that_would_leak_a_case_id_is_refused_whole(tiny_run, tiny_prepared, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    case = _case_ids(tiny_prepared)[0]
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("preset: tiny", f"preset: {case}"))
    with pytest.raises(InputError, match=f"configs/config.yaml: {case}"):
        export_generator(run, tmp_path / "generator")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no folder, no .tmp-* left


def test_an_untrained_stage_or_a_missing_prepared_set_is_refused(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    shutil.rmtree(run / "controlnet")
    with pytest.raises(InputError, match="controlnet is not trained"):
        export_generator(run, tmp_path / "out")
    identity = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**identity, "data": str(tmp_path / "gone")}))
    with pytest.raises(InputError, match="prepared set it was trained on is not readable"):
        export_generator(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="not an exported generator"):
        open_generator(run)


def test_find_leaks_reads_text_and_safetensors_headers_but_not_tensor_bytes(tmp_path):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "card.md").write_text("trained on case_0001 and case_00012\n")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"), metadata={"note": "/data/x"})
    found = find_leaks(tmp_path, ["case_0001", "case_0002", "/data/x"])
    assert found == ["a.safetensors: /data/x", "card.md: case_0001"]  # case_00012 is another id
    weights = torch.frombuffer(bytearray(b"case_0002"[:8]), dtype=torch.float32).clone()
    save_file({"w": weights}, str(tmp_path / "b.safetensors"))
    assert b"case_000" in (tmp_path / "b.safetensors").read_bytes()
    assert find_leaks(tmp_path, ["case_000"]) == []
