"""``sample.novelty``: redraw a sampled label that is closer to a training patient than any new patient is.

Where the run's training labels are at hand (``foscu sample --run``), each sampled label's best liver
Dice against every training label (evaluation/label_overlap.py) is compared with a threshold calibrated
on the data: the most any held-out case (validation + test, never trained on) reaches against its best
training label. A sample above it is redrawn from a new label seed derived from its own (so sample i is
still the same whatever the batch), up to ``sample.novelty_tries`` draws in all; the least overlapping draw
is kept, and ``samples.json`` says per sample its best overlap, nearest training case, tries, whether it
was redrawn and whether it ended novel. The nearest case's id stays in the run's own ``samples.json``:
an exported generator carries no training labels, so its samples are not checked (recorded as such).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foscu.data.nifti import read_nifti
from foscu.engine.loop import _mix
from foscu.errors import InputError
from foscu.evaluation.label_overlap import best_overlap, held_out_threshold, liver_masks
from foscu.runs import RunFolder

REDRAW = 0x4E4F56  # a seed stream of its own for the redraws ("NOV")

# seeds -> (labels (B, X, Y, Z), each label's cleaning record or None): sampling.sample_labels
LabelSampler = Callable[[list[int]], tuple[torch.Tensor, list[dict] | None]]


def redraw_seed(seed: int, attempt: int) -> int:
    """The label seed of draw ``attempt`` (1, 2, ...) of the sample whose seed is ``seed``."""
    return _mix(seed, REDRAW, attempt)


@dataclass
class NoveltyCheck:
    """The training livers, their case ids and the held-out threshold; ``tries`` draws at most per sample."""

    training: np.ndarray  # (R, voxels) bool
    case_ids: list[str]
    threshold: float
    held_out: int
    tries: int

    def record(self) -> dict[str, Any]:
        """What ``samples.json`` records of the check itself."""
        return {
            "threshold": self.threshold,
            "rule": "redrawn when the label's best liver Dice against any training label exceeds the most any "
            "held-out (validation + test) case reaches against its best training label",
            "held_out_cases": self.held_out,
            "training_cases": len(self.case_ids),
            "tries": self.tries,
        }

    def overlap(self, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, X, Y, Z) labels -> each one's best training liver Dice and the row of that training case."""
        return best_overlap(liver_masks(labels.cpu().numpy()), self.training)

    def draw(self, sample: LabelSampler, seeds: list[int]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Labels for ``seeds``, each redrawn while above the threshold; per label its samples.json fields
        (``novelty`` and, where ``sample`` cleans, ``cleaning``)."""
        labels, cleaning = sample(seeds)
        dice, nearest = self.overlap(labels)
        records: list[dict[str, Any]] = [
            {"novelty": self._row(float(d), int(k), 1, seed)}
            for d, k, seed in zip(dice, nearest, seeds, strict=True)
        ]
        for record, c in zip(records, cleaning or [], strict=False):
            record["cleaning"] = c
        for attempt in range(1, self.tries):
            flagged = [j for j in range(len(seeds)) if dice[j] > self.threshold]
            if not flagged:
                break
            new_seeds = [redraw_seed(seeds[j], attempt) for j in flagged]
            new_labels, new_cleaning = sample(new_seeds)
            new_dice, new_nearest = self.overlap(new_labels)
            for m, j in enumerate(flagged):
                records[j]["novelty"]["tries"] = attempt + 1
                if new_dice[m] < dice[j]:  # keep the least overlapping draw
                    labels[j], dice[j] = new_labels[m].to(labels.device), new_dice[m]
                    kept = self._row(float(new_dice[m]), int(new_nearest[m]), attempt + 1, new_seeds[m])
                    records[j]["novelty"] = kept
                    if new_cleaning:
                        records[j]["cleaning"] = new_cleaning[m]
        return labels, records

    def _row(self, dice: float, nearest: int, tries: int, label_seed: int) -> dict[str, Any]:
        return {
            "best_liver_dice": round(dice, 6),
            "nearest_training_case": self.case_ids[nearest],
            "tries": tries,
            "redrawn": tries > 1,
            "label_seed": label_seed,
            "novel": dice <= self.threshold,
        }


def _labels(items: list[dict[str, str]]) -> list[np.ndarray]:
    return [read_nifti(item["label"], label=True).array for item in items]


def check_for(prepared_root: Path, tries: int) -> NoveltyCheck:
    """The check against a prepared set's training labels, calibrated on its validation + test labels."""
    from foscu.data.prepare import read_prepared

    prepared = read_prepared(prepared_root)
    training = prepared.datalist.get("training", [])
    held = [*prepared.datalist.get("validation", []), *prepared.datalist.get("test", [])]
    if not training or not held:
        raise InputError(
            prepared.root / "datalist.json",
            "sample.novelty needs training cases and held-out (validation/test) cases to calibrate on",
        )
    livers = liver_masks(_labels(training))
    threshold, _ = held_out_threshold(liver_masks(_labels(held)), livers)
    return NoveltyCheck(livers, [i["case_id"] for i in training], threshold, len(held), tries)


def run_check(run: RunFolder, tries: int) -> tuple[NoveltyCheck | None, dict[str, Any]]:
    """The check for ``run``'s prepared set (run.json's ``data``) and what samples.json records of it; an
    exported generator has no training labels: (None, a record saying so)."""
    identity = json.loads(run.identity.read_text()) if run.identity.is_file() else {}
    if "data" not in identity:
        return None, {"checked": False, "why": "no training labels at hand (an exported generator)"}
    check = check_for(Path(identity["data"]), tries)
    return check, {"checked": True, **check.record()}


def for_sampling(
    run: RunFolder, model: str, given: bool
) -> tuple[NoveltyCheck | None, dict[str, Any] | None]:
    """``run_check`` where the run's config sets ``sample.novelty`` and labels are sampled (duo, no
    ``--labels``); (None, None) otherwise."""
    from foscu.config import load_config

    if model != "duo" or given or not run.run_config.is_file():
        return None, None
    sample = load_config(str(run.run_config)).sample
    return run_check(run, sample.novelty_tries) if sample.novelty else (None, None)


def draw_labels(
    check: NoveltyCheck | None, sample: LabelSampler, seeds: list[int]
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``sample(seeds)``, near copies redrawn where ``check`` is set; each label's samples.json fields."""
    if check is not None:
        return check.draw(sample, seeds)
    labels, cleaning = sample(seeds)
    return labels, [{"cleaning": c} for c in cleaning or []]
