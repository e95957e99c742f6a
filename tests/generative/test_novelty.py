"""sample.novelty: a sampled label that copies a training liver is redrawn, and samples.json says so."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import run_with_sample_settings

from foscu.data.prepare import read_prepared
from foscu.generative import generate, novelty, sampling
from foscu.labels import LIVER
from foscu.runs import RunFolder


def _check(threshold: float = 0.5, tries: int = 3) -> novelty.NoveltyCheck:
    training = np.zeros((2, 4, 4, 2), np.uint8)
    training[0, :2] = LIVER  # the left half
    training[1, 2:, :2] = LIVER  # a quarter
    livers = novelty.liver_masks(training)
    return novelty.NoveltyCheck(livers, ["train_a", "train_b"], threshold, 3, tries), training


def _novel() -> torch.Tensor:
    label = torch.zeros(4, 4, 2, dtype=torch.uint8)
    label[:, 3] = LIVER  # overlaps neither training liver much
    return label


def test_a_copied_label_is_redrawn_from_a_seed_of_its_own_and_recorded():
    check, training = _check()
    copied_seed = 11

    def sample(seeds):
        return torch.stack(
            [torch.from_numpy(training[0]) if s == copied_seed else _novel() for s in seeds]
        ), None

    labels, records = check.draw(sample, [5, copied_seed])
    assert torch.equal(labels[1], _novel()) and torch.equal(labels[0], _novel())
    assert records[0]["novelty"]["tries"] == 1 and not records[0]["novelty"]["redrawn"]
    redrawn = records[1]["novelty"]
    assert redrawn["redrawn"] and redrawn["tries"] == 2 and redrawn["novel"]
    assert redrawn["label_seed"] == novelty.redraw_seed(copied_seed, 1) != copied_seed
    assert redrawn["best_liver_dice"] < check.threshold and "cleaning" not in records[1]


def test_a_sample_that_stays_a_copy_keeps_its_least_overlapping_draw_and_says_it_is_not_novel():
    check, training = _check(tries=3)
    right_half = training[0][::-1].copy()  # Dice 0 with train_a, 2 x 8 / (16 + 8) = 0.667 with train_b
    draws = iter([(training[0], 1), (right_half, 2), (training[1], 3)])  # (label, cleaning record)

    def sample(seeds):
        label, number = next(draws)
        return torch.from_numpy(label)[None], [{"draw": number}]

    labels, records = check.draw(sample, [3])
    row = records[0]["novelty"]
    assert row["tries"] == 3 and not row["novel"] and row["redrawn"]
    assert row["best_liver_dice"] == pytest.approx(2 / 3) and row["nearest_training_case"] == "train_b"
    assert row["label_seed"] == novelty.redraw_seed(3, 1)
    assert torch.equal(labels[0], torch.from_numpy(right_half)) and records[0]["cleaning"] == {"draw": 2}


@pytest.fixture
def novelty_run(tiny_run: Path, tmp_path: Path) -> Path:
    return run_with_sample_settings(tiny_run, tmp_path, novelty=True, novelty_tries=3)


def test_sampling_redraws_the_sample_whose_label_is_a_training_label(novelty_run, tmp_path, monkeypatch):
    run = RunFolder(novelty_run)
    prepared = read_prepared(Path(json.loads(run.identity.read_text())["data"]))
    first = prepared.datalist["training"][0]
    copy = np.asarray(nib.load(first["label"]).dataobj).astype(np.uint8)
    copied_seed = sampling._mix(7, 1)  # sample 1's seed (generate's seed 7)
    real = sampling.sample_labels

    def copying(pipe, seeds, sampler, steps):
        labels, records = real(pipe, seeds, sampler, steps)
        for j, s in enumerate(seeds):
            if s == copied_seed:
                labels[j] = torch.from_numpy(copy).to(labels)
        return labels, records

    monkeypatch.setattr(sampling, "sample_labels", copying)
    out = generate.generate(novelty_run, 3, tmp_path / "out", "ddim", 2, seed=7, progress=False)
    record = json.loads((out / "samples.json").read_text())
    assert record["novelty"]["checked"] and record["novelty"]["tries"] == 3
    assert 0 < record["novelty"]["threshold"] < 1 and record["novelty"]["held_out_cases"] == 3
    row = record["cases"]["synth_0001"]["novelty"]
    assert row["redrawn"] and row["tries"] == 2 and row["novel"]
    written = np.asarray(nib.load(out / "labelsTr" / "synth_0001.nii.gz").dataobj)
    assert not np.array_equal(written, copy)
    for other in ("synth_0000", "synth_0002"):  # the untrained tiny LDM draws no copies
        assert not record["cases"][other]["novelty"]["redrawn"]


def test_an_exported_generator_is_not_checked_and_says_so(tmp_path):
    run = RunFolder(tmp_path / "gen")
    run.root.mkdir()
    run.identity.write_text(json.dumps({"roi": [8, 8, 4]}))
    check, record = novelty.run_check(run, 3)
    assert check is None and record == {
        "checked": False,
        "why": "no training labels at hand (an exported generator)",
    }
