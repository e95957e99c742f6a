"""The paper's Table II: architectures x tasks x {real, real + synthetic}, Dice on the test split.

Each cell is one training run per seed (``RUN/seg/<arch>-<task>-<data>/`` for the config's seed,
``...-seed<k>/`` for the others of ``segmentation.seeds``), skipped when its ``metrics.json`` exists and
resumed when it stopped half-way — a real + synthetic cell only for the synthetic draw and fraction it
recorded, another is refused (``table2_cells.check_reusable``); its test predictions are scored by
``evaluate_cases`` (nnU-Net empty-class convention) into ``RUN/evaluation/seg/<name>.json``. With several
seeds a row holds the per-seed values, their mean and a Student-t 95 % interval over seeds.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from foscu.errors import InputError
from foscu.labels import Task, labels_for_task
from foscu.protocols import PROTOCOLS, SCORED_TAG, protocol_of
from foscu.runs import RunFolder, write_json_atomic, write_text_atomic
from foscu.table2_cells import cell_record, cells_csv, cells_markdown, counts_note
from foscu.table2_words import findings_markdown, protocol_findings, protocols_note

if TYPE_CHECKING:
    from foscu.config import FoscuConfig

KINDS = ("real", "real+synthetic")
TASK_NAMES = {"binary": "Liver-Only", "multiclass": "Multi-Class"}
ARCH_NAMES = {
    "unet": "U-Net",
    "resunet": "ResUNet",
    "wideresunet": "WideResUNet",
    "dynunet": "DynUNet",
    "vnet": "VNet",
    "mean": "Overall Mean",
}


def trained_segmenter(
    cfg: FoscuConfig,
    prepared_root: Path,
    run_folder: Path,
    arch: str,
    task: Task,
    synthetic_dir: Path | None = None,
    seed: int | None = None,
    progress: bool = True,
    protocol: str | None = None,
) -> Path:
    """The folder of one cell's scored segmenter, trained here (or resumed) unless its training finished.

    ``protocol`` (protocols.PROTOCOLS; default ``real``, or ``mix`` with ``synthetic_dir``) and ``seed``
    (default the config's) pick the cell; a cell that recorded other training is refused, not reused.
    """
    from foscu.protocol_cells import train_cell

    protocol = protocol or ("real" if synthetic_dir is None else "mix")
    dirs = [] if synthetic_dir is None else [Path(synthetic_dir)]
    seed = cfg.seed if seed is None else seed
    return train_cell(cfg, prepared_root, run_folder, arch, task, protocol, dirs, seed, progress)


def _cell_name(cfg: FoscuConfig, arch: str, task: Task, data: bool | str, seed: int | None) -> str:
    from foscu.segmentation.train import run_name

    return run_name(arch, task, data, None if seed is None or seed == cfg.seed else seed)


def _cell(
    cfg: FoscuConfig,
    prepared_root: Path,
    run_folder: Path,
    arch: str,
    task: Task,
    protocol: str,
    dirs: list[Path],
    progress: bool,
    seed: int,
) -> tuple[dict[str, Any], str]:
    """Train with ``seed`` (or skip / resume), predict the test split, evaluate; (evaluation, scored stage)."""
    import json

    from foscu.data.prepare import read_prepared
    from foscu.evaluation.segmentation_metrics import evaluate_cases
    from foscu.protocol_cells import check_cell, phases_of, stage_of, train_cell
    from foscu.segmentation.predict import predict_cases

    run = RunFolder(run_folder)
    phases = phases_of(cfg, prepared_root, run_folder, arch, task, protocol, dirs, seed, progress)
    stage = stage_of(cfg, arch, task, phases[-1], seed)
    evaluation = run.evaluation / "seg" / f"{stage.split('/', 1)[-1]}.json"
    if evaluation.is_file() and run.metrics(stage).is_file():
        check_cell(cfg, run, arch, task, phases, seed)
        return json.loads(evaluation.read_text()), stage
    folder = train_cell(cfg, prepared_root, run_folder, arch, task, protocol, dirs, seed, progress)
    test = read_prepared(prepared_root).datalist["test"]
    if not test:
        raise InputError(Path(prepared_root) / "datalist.json", "test split is empty: Table II needs one")
    images = {item["case_id"]: Path(item["image"]) for item in test}
    written = predict_cases(folder, images, folder / "predictions-test", overwrite=True, progress=progress)
    pairs = {item["case_id"]: (written[item["case_id"]], Path(item["label"])) for item in test}
    return evaluate_cases(pairs, task, evaluation), stage


def _improvement(real: float | None, mixed: float | None) -> float | None:
    """Relative improvement in percent, as the paper's Table II: (mixed - real) / real x 100.

    U-Net multi-class 0.6968 -> 0.7014 is the paper's +0.66 %. None when a side is missing or real is 0.
    """
    if real is None or mixed is None or real == 0:
        return None
    return round((mixed - real) / real * 100.0, 4)


def _points(real: float | None, mixed: float | None) -> float | None:
    """Difference in Dice percentage points, (mixed - real) x 100: an extra column beside the paper's."""
    return None if real is None or mixed is None else round((mixed - real) * 100.0, 4)


def synthetic_dirs(synthetic: Path | list[Path] | None) -> list[Path]:
    """``run_table2``'s synthetic argument as a list of folders (none, one, or one per seed)."""
    if synthetic is None:
        return []
    return [Path(synthetic)] if isinstance(synthetic, str | Path) else [Path(d) for d in synthetic]


def seed_list(cfg: FoscuConfig) -> list[int]:
    """The seeds of ``segmentation.seeds``: a count n means seed, seed + 1, ..., seed + n - 1."""
    seeds = cfg.segmentation.seeds
    return [cfg.seed + i for i in range(seeds)] if isinstance(seeds, int) else list(seeds)


def t_interval(values: list[float | None]) -> list[float] | None:
    """Two-sided 95 % Student-t interval of the mean, [low, high]; None with fewer than 2 values.

    mean +- t(0.975, n - 1) x sd / sqrt(n), sd with n - 1 degrees of freedom; None entries are left out.
    """
    from scipy import stats

    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(kept) < 2:
        return None
    half = float(stats.t.ppf(0.975, len(kept) - 1) * kept.std(ddof=1) / np.sqrt(len(kept)))
    return [float(kept.mean()) - half, float(kept.mean()) + half]


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _dice(result: dict[str, Any], cls: str) -> float | None:
    return result["foreground_mean"]["dice"] if cls == "mean" else result["mean"][cls]["dice"]


def table2_rows(
    results: dict[tuple[str, str, str], list[dict[str, Any]]],
    archs: list[str],
    tasks: list[str],
    kinds: list[str] | tuple[str, ...] = ("real+synthetic",),
) -> list[dict[str, Any]]:
    """One row per task x protocol x arch x class (foreground classes, then "mean"), plus "mean" over archs.

    ``results`` maps (arch, task, kind) to one evaluation per seed, in the same seed order for every
    cell; ``kinds`` the scored data tags of the protocols compared with real (protocols.SCORED_TAG; "real+
    synthetic" is the paper's mix). A row's ``protocol`` names it; ``real+synthetic`` holds that protocol's
    value. ``real``/``real+synthetic`` are means over seeds, ``*_ci`` their t-intervals,
    ``improvement_percent`` the relative change of the means and ``paired_improvement_percent`` the mean
    of each seed's own relative change (real and real + synthetic trained with the same seed). The
    "mean" architecture averages, per seed, the architectures' values.
    """
    rows: list[dict[str, Any]] = []
    for task, kind in [(t, k) for t in tasks for k in kinds]:
        classes = [n for n, v in labels_for_task(task).items() if v != 0] + ["mean"]  # type: ignore[arg-type]
        for arch in [*archs, "mean"]:
            for cls in classes:
                per_seed: dict[str, list[float | None]] = {}
                for column, source in zip(KINDS, ("real", kind), strict=True):
                    if arch == "mean":
                        others = [
                            r[f"{column}_per_seed"]
                            for r in rows
                            if (r["task"], r["class"], r["protocol"]) == (task, cls, protocol_of(kind))
                            and r["arch"] != "mean"
                        ]
                        per_seed[column] = [
                            _mean(list(seed_values)) for seed_values in zip(*others, strict=True)
                        ]
                    else:
                        per_seed[column] = [_dice(r, cls) for r in results.get((arch, task, source), [])]
                real, mixed = _mean(per_seed["real"]), _mean(per_seed["real+synthetic"])
                paired = [
                    _improvement(a, b)
                    for a, b in zip(per_seed["real"], per_seed["real+synthetic"], strict=False)
                ]
                rows.append(
                    {
                        "arch": arch,
                        "task": task,
                        "protocol": protocol_of(kind),
                        "class": cls,
                        "real": real,
                        "real+synthetic": mixed,
                        "improvement_percent": _improvement(real, mixed),
                        "difference_points": _points(real, mixed),
                        "real_ci": t_interval(per_seed["real"]),
                        "real+synthetic_ci": t_interval(per_seed["real+synthetic"]),
                        "paired_improvement_percent": _mean(paired),
                        "paired_improvement_ci": t_interval(paired),
                        "real_per_seed": per_seed["real"],
                        "real+synthetic_per_seed": per_seed["real+synthetic"],
                    }
                )
    return rows


def _half_width(interval: list[float] | None) -> float | None:
    return None if interval is None else (interval[1] - interval[0]) / 2


def _pm(
    value: float | None, interval: list[float] | None, digits: int = 4, sign: str = "", unit: str = ""
) -> str:
    """``0.6968 ± 0.0123`` (mean ± half-width of its interval); the value alone without an interval."""
    if value is None:
        return "n/a"
    text = f"{value:{sign}.{digits}f}{unit}"
    half = _half_width(interval)
    return text if half is None else f"{text} ± {half:.{digits}f}"


def table2_markdown(rows: list[dict[str, Any]], note: str, cells: list[dict[str, Any]] | None = None) -> str:
    lines = [
        "# Table II: segmentation Dice on the test split",
        "",
        "| Model | Segmentation | Protocol | Class | Real | Real + Synthetic | Improvement (relative, %) "
        "| Difference (points) | Paired improvement (relative, %) | Paired, 95 % over cases within seeds |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        imp = "n/a" if r["improvement_percent"] is None else f"{r['improvement_percent']:+.2f}%"
        points = "n/a" if r["difference_points"] is None else f"{r['difference_points']:+.2f}"
        paired = _pm(r["paired_improvement_percent"], r["paired_improvement_ci"], 2, "+", "%")
        boot = r.get("paired_bootstrap_ci")
        cases = "n/a" if boot is None else f"{boot[0]:+.2f} to {boot[1]:+.2f}%"
        lines.append(
            f"| {ARCH_NAMES.get(r['arch'], r['arch'])} | {TASK_NAMES[r['task']]} | {r['protocol']} | {r['class']} | "
            f"{_pm(r['real'], r['real_ci'])} | {_pm(r['real+synthetic'], r['real+synthetic_ci'])} | {imp} | "
            f"{points} | {paired} | {cases} |"
        )
    return "\n".join(lines + ["", note, ""] + ([cells_markdown(cells), ""] if cells else []))


CSV_COLUMNS = [
    "arch",
    "task",
    "protocol",
    "class",
    "real",
    "real_half_width",
    "real+synthetic",
    "real+synthetic_half_width",
    "improvement_percent",
    "difference_points",
    "paired_improvement_percent",
    "paired_improvement_half_width",
    "paired_bootstrap_low",
    "paired_bootstrap_high",
    "real_per_seed",
    "real+synthetic_per_seed",
]


def table2_csv(rows: list[dict[str, Any]]) -> str:
    """One line per row: means, the 95 % interval half-widths, per-seed values joined by ``;``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for r in rows:
        line = {k: r[k] for k in CSV_COLUMNS if k in r}
        for key in ("real", "real+synthetic", "paired_improvement"):
            line[f"{key}_half_width"] = _half_width(r[f"{key}_ci"])
        boot = r.get("paired_bootstrap_ci")
        line["paired_bootstrap_low"], line["paired_bootstrap_high"] = boot if boot else (None, None)
        for key in ("real_per_seed", "real+synthetic_per_seed"):
            line[key] = ";".join("" if v is None else str(v) for v in r[key])
        writer.writerow({k: "" if v is None else v for k, v in line.items()})
    return buffer.getvalue()


def _note(seeds: list[int], cells: list[dict[str, Any]]) -> str:
    """What table2's numbers are: the seeds, the interval, the improvement's unit, the Dice convention,
    the real and synthetic cases the cells trained on."""
    from foscu.evaluation.segmentation_metrics import CONVENTIONS

    seeded = "(weights, batch order, augmentation and the synthetic draw)"
    relative = (
        "improvement_percent = (real+synthetic - real) / real x 100, relative, in percent as the paper's "
        "Table II (0.6968 -> 0.7014 is +0.66 %)"
    )
    if len(seeds) == 1:
        return (
            f"Dice on the prepared test split; each run trained once, seed {seeds[0]} {seeded} — no repeats, "
            f"so differences within run-to-run noise are not evidence. {relative}; difference_points = "
            f"(real+synthetic - real) x 100. {CONVENTIONS['nnunet']} {counts_note(cells)}"
        )
    return (
        f"Dice on the prepared test split; each cell trained {len(seeds)} times, seeds {seeds} {seeded}, "
        "on the same split and test cases. real and real+synthetic are means over seeds; *_ci and the ± of "
        "table2.md/csv are two-sided 95 % Student-t intervals over seeds, mean ± t(0.975, n-1) x sd / sqrt(n) "
        "(sd with n-1), i.e. run-to-run training noise only, not case sampling. "
        f"{relative}, on the seed means; paired_improvement_percent is the mean over seeds of each seed's "
        "relative improvement (real and real+synthetic trained with the same seed), with its t-interval and, "
        "beside it, a paired bootstrap over the test cases within seeds (each resample draws the test cases "
        "once and scores every seed of both arms on them; percentile 95 %): the t-interval leaves out case "
        "sampling, the bootstrap leaves out seed-to-seed spread beyond the seeds run; "
        f"difference_points = (real+synthetic - real) x 100 on the means. {CONVENTIONS['nnunet']} "
        + counts_note(cells)
    )


def run_table2(
    cfg: FoscuConfig,
    prepared_root: Path,
    run_folder: Path,
    synthetic_dir: Path | list[Path] | None,
    archs: list[str] | None = None,
    tasks: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, predict and evaluate every selected cell; write RUN/evaluation/table2.{json,csv,md}.

    One row per protocol of ``segmentation.protocols`` (protocols.py) beside real, per arch x task x class.
    ``archs``/``tasks`` default to the config's ``segmentation.archs``/``tasks``. Without ``synthetic_dir``
    only the real column is filled; a list gives one folder per seed (``segmentation.synthetic_per_seed``).
    """
    from foscu.config import check_arch
    from foscu.labels import check_task
    from foscu.table2_bootstrap import add_case_bootstrap  # it imports scarcity_stats, which imports this

    archs = [check_arch(a, "archs") for a in archs or cfg.segmentation.archs]
    tasks = [check_task(t, "tasks") for t in tasks or cfg.segmentation.tasks]
    run_folder = Path(run_folder)
    seeds = seed_list(cfg)
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    cells: list[dict[str, Any]] = []
    dirs = synthetic_dirs(synthetic_dir)
    protocols = [
        p for p in cfg.segmentation.protocols if dirs or not PROTOCOLS[p].synthetic or PROTOCOLS[p].source
    ]
    for task in tasks:
        for arch in archs:
            task = cast(Task, task)
            for protocol in protocols:
                kind = SCORED_TAG[protocol]
                results[(arch, task, kind)] = []
                for seed in seeds:
                    result, stage = _cell(
                        cfg, prepared_root, run_folder, arch, task, protocol, dirs, progress, seed
                    )
                    results[(arch, task, kind)].append(result)
                    keys = {"arch": arch, "task": task, "data": kind, "protocol": protocol, "seed": seed}
                    cells.append(cell_record(RunFolder(run_folder), stage, **keys))
    kinds = [SCORED_TAG[p] for p in protocols if p != "real"] or ["real+synthetic"]
    rows = table2_rows(results, archs, tasks, kinds)
    add_case_bootstrap(rows, results, kinds, cfg.evaluation.bootstrap, cfg.seed)
    findings = protocol_findings(rows, cells)
    table = {
        "rows": rows,
        "note": _note(seeds, cells) + " " + protocols_note(cfg, protocols, cells),
        "protocols": protocols,
        "budget": cfg.segmentation.budget,
        "findings": findings,
        "seed": cfg.seed,
        "seeds": seeds,
        "interval": None if len(seeds) < 2 else "Student-t 95 % over seeds",
        "case_bootstrap": {"resamples": cfg.evaluation.bootstrap, "seed": cfg.seed},
        "archs": archs,
        "tasks": tasks,
        "cells": cells,
    }
    out = RunFolder(run_folder).evaluation
    write_json_atomic(RunFolder(run_folder).evidence("table2"), table)
    write_text_atomic(out / "table2.csv", table2_csv(rows))
    write_text_atomic(out / "table2_cells.csv", cells_csv(cells))
    markdown = table2_markdown(rows, str(table["note"]), cells)
    write_text_atomic(out / "table2.md", markdown + "\n" + findings_markdown(findings))
    return table
