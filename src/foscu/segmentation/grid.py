"""The paper's Table II: architectures x tasks x {real, real + synthetic}, Dice on the test split.

Each cell is one training run (``RUN/seg/<arch>-<task>-<data>/``), skipped when its ``metrics.json``
exists and resumed when it stopped half-way; its test predictions are scored by
``evaluate_cases`` (nnU-Net empty-class convention) into ``RUN/evaluation/seg/<name>.json``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from foscu.errors import InputError
from foscu.labels import Task, labels_for_task

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


def _cell(
    cfg: FoscuConfig,
    prepared_root: Path,
    run_folder: Path,
    arch: str,
    task: Task,
    synthetic_dir: Path | None,
    progress: bool,
) -> dict[str, Any]:
    """Train (or skip / resume), predict the test split, evaluate; returns the evaluation dict."""
    import json

    from foscu.data.prepare import read_prepared
    from foscu.engine.loop import STATE
    from foscu.evaluation.segmentation_metrics import evaluate_cases
    from foscu.segmentation.predict import predict_cases
    from foscu.segmentation.train import run_name, train_segmenter

    name = run_name(arch, task, synthetic_dir is not None)
    folder = run_folder / "seg" / name
    evaluation = run_folder / "evaluation" / "seg" / f"{name}.json"
    if evaluation.is_file() and (folder / "metrics.json").is_file():
        return json.loads(evaluation.read_text())
    if not (folder / "metrics.json").is_file():
        synthetic = [synthetic_dir] if synthetic_dir is not None else None
        train_segmenter(
            arch,
            task,
            cfg,
            prepared_root,
            run_folder,
            synthetic,
            resume=(folder / STATE).is_file(),
            progress=progress,
        )
    test = read_prepared(prepared_root).datalist["test"]
    if not test:
        raise InputError(Path(prepared_root) / "datalist.json", "test split is empty: Table II needs one")
    predictions = folder / "predictions-test"
    images = {item["case_id"]: Path(item["image"]) for item in test}
    written = predict_cases(folder, images, predictions, overwrite=True, progress=progress)
    pairs = {item["case_id"]: (written[item["case_id"]], Path(item["label"])) for item in test}
    return evaluate_cases(pairs, task, evaluation)


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


def table2_rows(
    results: dict[tuple[str, str, str], dict[str, Any]], archs: list[str], tasks: list[str]
) -> list[dict[str, Any]]:
    """One row per arch x task x class (foreground classes, then "mean"), plus "mean" over archs."""
    rows: list[dict[str, Any]] = []
    for task in tasks:
        classes = [n for n, v in labels_for_task(task).items() if v != 0] + ["mean"]  # type: ignore[arg-type]
        for arch in [*archs, "mean"]:
            for cls in classes:
                row: dict[str, Any] = {"arch": arch, "task": task, "class": cls}
                for kind in KINDS:
                    if arch == "mean":
                        values = [
                            r[kind]
                            for r in rows
                            if r["task"] == task
                            and r["class"] == cls
                            and r["arch"] != "mean"
                            and r[kind] is not None
                        ]
                        row[kind] = float(np.mean(values)) if values else None
                        continue
                    result = results.get((arch, task, kind))
                    if result is None:
                        row[kind] = None
                    elif cls == "mean":
                        row[kind] = result["foreground_mean"]["dice"]
                    else:
                        row[kind] = result["mean"][cls]["dice"]
                row["improvement_percent"] = _improvement(row["real"], row["real+synthetic"])
                row["difference_points"] = _points(row["real"], row["real+synthetic"])
                rows.append(row)
    return rows


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table2_markdown(rows: list[dict[str, Any]], note: str) -> str:
    lines = [
        "# Table II: segmentation Dice on the test split",
        "",
        "| Model | Segmentation | Class | Real | Real + Synthetic | Improvement (relative, %) | Difference (points) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        imp = "n/a" if r["improvement_percent"] is None else f"{r['improvement_percent']:+.2f}%"
        points = "n/a" if r["difference_points"] is None else f"{r['difference_points']:+.2f}"
        lines.append(
            f"| {ARCH_NAMES.get(r['arch'], r['arch'])} | {TASK_NAMES[r['task']]} | {r['class']} | "
            f"{_fmt(r['real'])} | {_fmt(r['real+synthetic'])} | {imp} | {points} |"
        )
    return "\n".join(lines + ["", note, ""])


def table2_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer,
        fieldnames=[
            "arch",
            "task",
            "class",
            "real",
            "real+synthetic",
            "improvement_percent",
            "difference_points",
        ],
    )
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buffer.getvalue()


def run_table2(
    cfg: FoscuConfig,
    prepared_root: Path,
    run_folder: Path,
    synthetic_dir: Path | None,
    archs: list[str] | None = None,
    tasks: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, predict and evaluate every selected cell; write RUN/evaluation/table2.{json,csv,md}.

    ``archs``/``tasks`` default to the config's ``segmentation.archs``/``tasks``. Without ``synthetic_dir``
    only the real column is filled.
    """
    from foscu.evaluation.segmentation_metrics import CONVENTIONS
    from foscu.runs import write_json_atomic, write_text_atomic
    from foscu.segmentation.networks import ARCHS

    archs = list(archs or cfg.segmentation.archs)
    tasks = list(tasks or cfg.segmentation.tasks)
    for arch in archs:
        if arch not in ARCHS:
            raise InputError("archs", f"unknown architecture {arch!r} (choose from {', '.join(ARCHS)})")
    for task in tasks:
        if task not in TASK_NAMES:
            raise InputError("tasks", f"unknown task {task!r} (binary or multiclass)")
    run_folder = Path(run_folder)
    results: dict[tuple[str, str, str], dict[str, Any]] = {}
    for task in tasks:
        for arch in archs:
            task = cast(Task, task)
            results[(arch, task, "real")] = _cell(cfg, prepared_root, run_folder, arch, task, None, progress)
            if synthetic_dir is not None:
                results[(arch, task, "real+synthetic")] = _cell(
                    cfg, prepared_root, run_folder, arch, task, Path(synthetic_dir), progress
                )
    rows = table2_rows(results, archs, tasks)
    note = (
        f"Dice on the prepared test split; each run trained once, seed {cfg.seed} (weights, batch order, "
        f"augmentation, synthetic draw at {cfg.segmentation.synthetic_fraction} synthetic per real case) — "
        "no repeats, so differences within run-to-run noise are not evidence. improvement_percent = (real+synthetic "
        "- real) / real x 100, relative, in percent as the paper's Table II (0.6968 -> 0.7014 is +0.66 %); "
        f"difference_points = (real+synthetic - real) x 100. {CONVENTIONS['nnunet']}"
    )
    table = {"rows": rows, "note": note, "seed": cfg.seed, "archs": archs, "tasks": tasks}
    out = run_folder / "evaluation"
    write_json_atomic(out / "table2.json", table)
    write_text_atomic(out / "table2.csv", table2_csv(rows))
    write_text_atomic(out / "table2.md", table2_markdown(rows, note))
    return table
