"""The data-scarcity curve: a segmenter on n real cases, with and without the same synthetic pairs.

The data-sharing setting of the paper's introduction: an institution shares a generator (or its samples),
a user has few cases of their own. For each n of ``scarcity.n`` (fixed in the preset before any result)
and each seed, the segmenter (``scarcity.arch``/``task``, the ``segmentation`` settings) trains on the first
n cases of the seed's permutation of the training split (nested: the 5 cases are among the 10), alone
("real") and with the same ``scarcity.synthetic_cases`` pairs of the run's sample folder at every n
("real+synthetic"; n = 0 is synthetic-only training). The generator is the run's own, trained once on the
whole training split. Each cell is a stage folder ``RUN/seg/<arch>-<task>-<data>-n<k>[-seed<k>]/`` scored on
the test split into ``RUN/evaluation/scarcity/<name>.json``, so a rerun skips finished cells and resumes a
stopped one. The optional own-generator arm (``scarcity.own_generator_n``) is in scarcity_own.py, the
optional lesion arm (``scarcity.lesions_n``: the n cases plus lesion-edited copies of them) in
scarcity_lesions.py; the numbers in scarcity_stats.py; the table, sentences and figure in
figures_scarcity.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from foscu.config_scarcity import scarcity_seeds
from foscu.errors import InputError
from foscu.runs import RunFolder, seg_stage, write_json_atomic, write_text_atomic
from foscu.scarcity_lesions import LESION_ARM
from foscu.scarcity_stats import (
    ARMS,
    MEAN,
    CaseScores,
    case_scores,
    curve_point,
    nested_subsets,
    paired_difference,
    worth_sentence,
)

if TYPE_CHECKING:
    from foscu.config import FoscuConfig

OWN_ARM = "own-generator"
SENTENCE_METRICS = {MEAN: "mean foreground Dice", "liver": "liver Dice", "tumor": "tumor Dice"}
# what a finished cell must have trained on and with to be reused: its cases, its synthetic draw and the
# segmentation settings (a changed patience or step count retrains, never returns the old numbers)
REUSE_KEYS = ("real_case_ids", "synthetic_count", "synthetic_digest", "section")


@dataclass(frozen=True)
class Cell:
    """One segmenter of the curve: n real cases of one seed's subset, with or without the synthetic set."""

    n: int
    arm: str  # "real", "real+synthetic", "own-generator" or "real+lesions"
    seed: int
    real_cases: list[str]
    prepared: Path  # the prepared set it reads (a subset folder for the own-generator arm)
    run: Path  # the run folder it trains in
    synthetic: Path | None
    synthetic_count: int | None


def resolve_counts(requested: list[int | str], n_training: int) -> list[int]:
    """``scarcity.n`` as sorted distinct case counts ("all": the training split); more than it is refused."""
    counts = sorted({n_training if v == "all" else int(v) for v in requested})
    too_many = [n for n in counts if n > n_training]
    if too_many:
        raise InputError(
            "scarcity.n", f"{too_many} exceed the {n_training} training cases of the prepared set"
        )
    return counts


def shared_synthetic(run: RunFolder, wanted: int | None) -> tuple[Path, int]:
    """The run's sample folder (the generator trained on the whole training split) and the pair count."""
    from foscu.data.layout import list_cases
    from foscu.experiment import SAMPLES_RECORD

    folder = run.samples
    if not (folder / SAMPLES_RECORD).is_file():
        raise InputError(folder, "no finished sample folder: run the experiment's sample step first")
    available = len(list_cases(folder))
    count = available if wanted is None else wanted
    if count > available:
        raise InputError("scarcity.synthetic_cases", f"{count} asked for; {folder} holds {available} pairs")
    return folder, count


def cell_stage(cfg: FoscuConfig, cell: Cell) -> str:
    """The cell's stage name, train_segmenter's rule: ``seg/<arch>-<task>-<data>-n<k>[-seed<k>]``."""
    from foscu.segmentation.train import run_name

    other_seed = None if cell.seed == cfg.seed else cell.seed
    return seg_stage(run_name(cfg.scarcity.arch, cfg.scarcity.task, _tag(cell), other_seed, cell.n))


def _tag(cell: Cell) -> str:
    """The data part of the cell's stage name (the own-generator arm trains in a run folder of its own)."""
    return cell.arm if cell.arm in ("real", LESION_ARM) else "real+synthetic"


def _requested(cfg: FoscuConfig, cell: Cell) -> dict[str, Any]:
    """The real cases, pair count, synthetic digest and segmentation settings the cell trains on (as its
    config.yaml records them)."""
    from foscu.config_protocols import TABLE2_ONLY
    from foscu.data.prepare import read_prepared
    from foscu.segmentation.train import synthetic_digest, training_items

    dirs = [] if cell.synthetic is None else [cell.synthetic]
    real, drawn = training_items(
        read_prepared(cell.prepared), dirs, 0.0, cell.seed, cell.real_cases, cell.synthetic_count
    )
    return {
        "real_case_ids": [item["case_id"] for item in real],
        "synthetic_count": cell.synthetic_count,
        "synthetic_digest": synthetic_digest(drawn),
        "section": cfg.segmentation.model_dump(mode="json", exclude=set(TABLE2_ONLY)),
    }


def check_cell_reusable(run: RunFolder, stage: str, requested: dict[str, Any]) -> None:
    """Refuse to skip or resume a cell that recorded other real cases, another synthetic draw or other
    segmentation settings."""
    recorded = yaml.safe_load(run.config(stage).read_text()) or {}
    differs = [key for key in REUSE_KEYS if recorded.get(key) != requested[key]]
    if differs:
        raise InputError(
            run.config(stage),
            f"this cell trained on other {', '.join(differs)} than the curve asks for: remove "
            f"{run.stage(stage)} (and its evaluation/scarcity/ file) to retrain it, or use another run folder",
        )


def score_cell(cfg: FoscuConfig, cell: Cell, progress: bool = True) -> dict[str, Any]:
    """Train the cell (skip a finished one, resume a stopped one), predict the test split and score it."""
    from foscu.data.prepare import read_prepared
    from foscu.evaluation.segmentation_metrics import evaluate_cases
    from foscu.segmentation.predict import predict_cases
    from foscu.stages import train_segmenter

    run, stage = RunFolder(cell.run), cell_stage(cfg, cell)
    evaluation = run.evaluation / "scarcity" / f"{stage.removeprefix(seg_stage(''))}.json"
    if run.config(stage).is_file():
        check_cell_reusable(run, stage, _requested(cfg, cell))
    if evaluation.is_file() and run.is_trained(stage):
        return dict(json.loads(evaluation.read_text()))
    if not run.is_trained(stage):
        train_segmenter(
            cfg.scarcity.arch,
            cfg.scarcity.task,
            cfg,
            cell.prepared,
            cell.run,
            None if cell.synthetic is None else [cell.synthetic],
            resume=run.is_stopped(stage),
            progress=progress,
            seed=cell.seed,
            real_cases=cell.real_cases,
            synthetic_count=cell.synthetic_count,
            tag=_tag(cell),
        )
    test = read_prepared(cell.prepared).datalist["test"]
    images = {item["case_id"]: Path(item["image"]) for item in test}
    out = run.stage(stage) / "predictions-test"
    written = predict_cases(run.stage(stage), images, out, overwrite=True, progress=progress)
    pairs = {item["case_id"]: (written[item["case_id"]], Path(item["label"])) for item in test}
    return evaluate_cases(pairs, cfg.scarcity.task, evaluation)


def cell_record(cfg: FoscuConfig, cell: Cell, evaluation: dict[str, Any]) -> dict[str, Any]:
    """What one cell trained on, how long, and its test Dice (class means, foreground mean, per case)."""
    run, stage = RunFolder(cell.run), cell_stage(cfg, cell)
    metrics = json.loads(run.metrics(stage).read_text())
    config = yaml.safe_load(run.config(stage).read_text()) or {}
    return {
        "n": cell.n,
        "arm": cell.arm,
        "seed": cell.seed,
        "folder": str(run.stage(stage)),
        "real_cases": config.get("real_case_ids"),
        "synthetic_cases": (config.get("training_cases") or {}).get("synthetic"),
        "steps": metrics.get("steps"),
        "best_step": metrics.get("best_step"),
        "stopped_early": metrics.get("stopped_early"),
        "dice": {c: v["dice"] for c, v in evaluation["mean"].items()},
        "foreground_mean": evaluation["foreground_mean"]["dice"],
        "cases": case_scores(evaluation),
    }


def summarise(
    cells: list[dict[str, Any]],
    counts: list[int],
    seeds: list[int],
    n_training: int,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Per metric (each class and the foreground mean): the curve's points, the paired differences at each
    n, and the "worth about" sentences for the mean foreground and liver Dice."""
    by: dict[tuple[int, str], list[CaseScores]] = {}
    for c in cells:
        by.setdefault((c["n"], c["arm"]), []).append(c["cases"])
    classes = list(cells[0]["dice"]) if cells else []
    curve: dict[str, list[dict[str, Any]]] = {}
    difference: dict[str, list[dict[str, Any]]] = {}
    worth: dict[str, list[dict[str, Any]]] = {}
    for name in [MEAN, *classes]:
        curve[name] = [
            {"n": n, "arm": arm, **curve_point(scores, name, resamples, seed)}
            for (n, arm), scores in sorted(by.items())
        ]
        difference[name] = [
            {"n": n, "arm": arm, **paired_difference(by[(n, "real")], by[(n, arm)], name, resamples, seed)}
            for (n, arm) in sorted(by)
            if arm != "real" and (n, "real") in by and len(by[(n, "real")]) == len(by[(n, arm)])
        ]
        if name not in SENTENCE_METRICS:
            continue
        real = {p["n"]: p["mean"] for p in curve[name] if p["arm"] == "real"}
        worth[name] = []
        for p in sorted((p for p in curve[name] if p["arm"] != "real"), key=lambda p: p["arm"] == OWN_ARM):
            diff = next((d for d in difference[name] if (d["n"], d["arm"]) == (p["n"], p["arm"])), None)
            kind, text, value = worth_sentence(
                p["n"], real, p["mean"], SENTENCE_METRICS[name], n_training, diff
            )
            if p["arm"] == OWN_ARM:
                text = f"with a generator trained on its {p['n']} cases only: {text}"
            elif p["arm"] == LESION_ARM:
                text = f"with lesion-edited copies of the same {p['n']} cases in place of the shared pairs: {text}"
            worth[name].append(
                {"n": p["n"], "arm": p["arm"], "kind": kind, "equivalent_n": value, "sentence": text}
            )
    return {"curve": curve, "difference": difference, "worth": worth}


def _note(
    cfg: FoscuConfig,
    n_training: int,
    counts: list[int],
    seeds: list[int],
    count: int,
    samples: Path,
) -> str:
    sc, train = cfg.scarcity, cfg.segmentation.train
    own, resamples = sc.own_generator_n, sc.bootstrap
    length = f"{train.steps} steps" if train.epochs is None else f"{train.epochs} epochs"
    return (
        f"Segmenters trained on n of the {n_training} real training cases (n = {counts}; each seed's nested "
        f"subsets of the training split), alone (real) and with the same {count} synthetic pairs at every n "
        f"(real+synthetic; n = 0: synthetic pairs only), seeds {seeds}, scored on the same test split. The "
        f"generator is this run's, trained once on the whole training split ({n_training} cases; its "
        f"samples: {samples}): the data-sharing setting, a shared generator and a user with n cases of their "
        "own. Means over seeds; t_interval: two-sided 95 % Student-t over seeds; bootstrap_interval and "
        f"paired_bootstrap: 95 % percentile intervals over {resamples} resamples of the test cases within "
        "seeds (each seed scored on the same resampled cases; a difference pairs the two arms case by case). "
        "'Worth about': the n at which the real-only curve, linear between measured points, reaches the "
        f"mixed arm's Dice. Every cell trains the same {length} (a fixed budget: an arm with synthetic "
        "cases sees fewer real patches than real-only at the same n)."
        + (
            f" real+lesions (n = {sc.lesions_n}): the n cases plus {cfg.segmentation.lesions.n_per_case} "
            "lesion-edited copies of each (tumors inserted, moved or resized inside the liver, sizes and "
            "counts from the whole training split's tumors; the image generated by this run's generator "
            "only around each edit, the real scan elsewhere; RUN/scarcity/lesions-n<k>[-seed<k>]/)."
            if sc.lesions_n
            else ""
        )
        + (
            f" own-generator: the generator trained again on the first seed's {own} cases only "
            "(RUN/scarcity/own-generator-n<k>/), the same pair count sampled from it; every seed trains on "
            "those same cases (the user has only them), so its pairing with real-only by seed is by seed "
            "number, not by cases, except for the first seed."
            if own is not None
            else ""
        )
    )


def run_scarcity(
    cfg: FoscuConfig, prepared_root: Path, run_root: Path, progress: bool = True
) -> dict[str, Any]:
    """Train, predict and score every cell of the curve; write RUN/evaluation/scarcity.{json,md}."""
    from foscu.data.prepare import read_prepared
    from foscu.figures_scarcity import scarcity_markdown
    from foscu.scarcity_lesions import lesion_cells
    from foscu.scarcity_own import own_generator_cells

    sc, run = cfg.scarcity, RunFolder(run_root)
    prepared = read_prepared(Path(prepared_root))
    training = [item["case_id"] for item in prepared.datalist["training"]]
    if not prepared.datalist["test"]:
        raise InputError(Path(prepared_root) / "datalist.json", "test split is empty: the curve needs one")
    counts = resolve_counts(list(sc.n), len(training))
    seeds = scarcity_seeds(cfg.seed, sc.seeds)
    samples, count = shared_synthetic(run, sc.synthetic_cases)
    subsets = {seed: nested_subsets(training, counts, seed) for seed in seeds}
    cells = [
        Cell(
            n,
            arm,
            seed,
            subsets[seed][n],
            Path(prepared_root),
            run.root,
            None if arm == "real" else samples,
            None if arm == "real" else count,
        )
        for n in counts
        for arm in ARMS
        if not (n == 0 and arm == "real")
        for seed in seeds
    ]
    cells += lesion_cells(cfg, Path(prepared_root), run, subsets, progress)
    if sc.own_generator_n is not None:
        cells += own_generator_cells(
            cfg, Path(prepared_root), run, subsets[seeds[0]][sc.own_generator_n], count, progress
        )
    records = [cell_record(cfg, c, score_cell(cfg, c, progress)) for c in cells]
    result = {
        "note": _note(cfg, len(training), counts, seeds, count, samples),
        "generator": f"trained once on the whole training split ({len(training)} cases) of this run",
        "n_training": len(training),
        "n_requested": list(sc.n),
        "n": counts,
        "seeds": seeds,
        "arch": sc.arch,
        "task": sc.task,
        "synthetic": str(samples),
        "synthetic_cases": count,
        "own_generator_n": sc.own_generator_n,
        "lesions_n": list(sc.lesions_n),
        "cells": records,
        **summarise(records, counts, seeds, len(training), sc.bootstrap, cfg.seed),
    }
    write_json_atomic(run.evidence("scarcity"), result)
    write_text_atomic(run.evaluation / "scarcity.md", scarcity_markdown(result))
    return result
