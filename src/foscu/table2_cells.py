"""What each Table II cell trained on: the check before a finished cell is reused, and the cell's record.

A cell (arch x task x data x seed) is cached under a folder name that names neither the synthetic set nor
the ratio. So before a real + synthetic cell that finished (or stopped half-way) is reused, the draw it
recorded in its config.yaml (``synthetic_digest``: the drawn cases' ids and file bytes) and its
``synthetic_fraction`` are compared with what this run asks for; a difference is refused, never reused.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml

from foscu.errors import InputError
from foscu.runs import RunFolder

REUSE_KEYS = ("synthetic_fraction", "synthetic_digest")


def _describe(values: dict[str, Any]) -> str:
    digest = values.get("synthetic_digest")
    drawn = f"the synthetic draw {digest[:12]}" if digest else "no recorded synthetic draw"
    text = f"synthetic_fraction {values.get('synthetic_fraction')} and {drawn}"
    if "synthetic_digest" not in values and "synthetic_fraction" not in values:
        text = "real data only"
    plan = values.get("plan") or {}
    return text + f", {values.get('steps')} steps" + (f" ({plan.get('protocol')})" if plan else "")


def _recorded(path: Path) -> dict[str, Any]:
    """A cell's config.yaml, with ``steps`` = the steps it was set to train (its section's train.steps)."""
    recorded = yaml.safe_load(path.read_text()) if path.is_file() else None
    recorded = recorded if isinstance(recorded, dict) else {}
    section = recorded.get("section", recorded.get("segmentation")) or {}
    return {**recorded, "steps": (section.get("train") or {}).get("steps")}


def check_reusable(run: RunFolder, stage: str, requested: dict[str, Any]) -> None:
    """Refuse to reuse (skip or resume) cell ``stage`` when it recorded another fraction, synthetic draw,
    step count or protocol plan than ``requested`` (the keys it holds)."""
    if not requested:
        return
    path = run.config(stage)
    recorded = _recorded(path)
    if any(recorded.get(key) != value for key, value in requested.items()):
        evaluation = run.evaluation / "seg" / f"{stage.split('/', 1)[-1]}.json"
        raise InputError(
            path,
            f"this cell trained on {_describe(recorded)}, this run asks for {_describe(requested)}: "
            f"remove {run.stage(stage)} and {evaluation} to retrain it, or use another run folder",
        )


def cell_record(run: RunFolder, stage: str, **keys: Any) -> dict[str, Any]:
    """``keys`` (arch, task, data, seed) + what the finished cell trained on and when it was best."""
    config = yaml.safe_load(run.config(stage).read_text()) or {}
    metrics = json.loads(run.metrics(stage).read_text())
    cases = config.get("training_cases") or {}
    plan = config.get("plan") or {}
    return {
        **keys,
        "folder": stage,
        "real_cases": cases.get("real"),
        "synthetic_cases": cases.get("synthetic"),
        **{key: config.get(key) if keys.get("data") != "real" else None for key in REUSE_KEYS},
        "steps": metrics.get("steps"),
        "best_step": metrics.get("best_step"),  # None: trained before metrics.json recorded it
        "stopped_early": metrics.get("stopped_early"),
        "val_dice": (metrics.get("best") or {}).get("val_dice"),  # the real validation split's, at best_step
        "budget": plan.get("budget"),  # the rule that set the steps (None: trained before budgets)
        **{k: plan[k] for k in ("supervised_classes", "kept", "synthetic_draw") if k in plan},
    }


CELL_COLUMNS = ["arch", "task", "protocol", "data", "seed", "real_cases", "synthetic_cases", "steps"]
CELL_COLUMNS += ["best_step", "stopped_early", "val_dice", "budget", "synthetic_fraction", "synthetic_digest"]


def cells_csv(cells: list[dict[str, Any]]) -> str:
    """One line per cell (arch x task x data x seed), the columns of ``CELL_COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CELL_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for cell in cells:
        writer.writerow({k: "" if cell.get(k) is None else cell[k] for k in CELL_COLUMNS})
    return buffer.getvalue()


def cells_markdown(cells: list[dict[str, Any]]) -> str:
    lines = [
        "## Training per cell",
        "",
        "| Model | Segmentation | Protocol | Data | Seed | Real cases | Synthetic cases | Steps | Best step "
        "| Stopped early | Validation Dice |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for c in cells:
        values = [c["arch"], c["task"], c.get("protocol"), c["data"], c["seed"], c["real_cases"]]
        values += [c["synthetic_cases"], c["steps"], c["best_step"]]
        values += [{True: "yes", False: "no"}.get(c["stopped_early"]), c.get("val_dice")]
        lines.append("| " + " | ".join("n/a" if v is None else str(v) for v in values) + " |")
    return "\n".join(lines)


def counts_note(cells: list[dict[str, Any]]) -> str:
    """The real and synthetic case counts the cells trained on, early stops and the shared synthetic set."""
    if not cells:
        return ""
    parts = []
    for data in dict.fromkeys(c["data"] for c in cells):
        mine = [c for c in cells if c["data"] == data]
        counts = sorted({(c["real_cases"], c["synthetic_cases"]) for c in mine}, key=str)
        if mine:
            parts.append(f"{data}: " + ", ".join(f"{r} real + {s} synthetic" for r, s in counts))
    text = "Training cases per cell (table2.json cells): " + "; ".join(parts) + "."
    mixed = [c for c in cells if c["data"] == "real+synthetic" and c["real_cases"]]
    mixed = [c for c in mixed if c["synthetic_fraction"] is not None and c["synthetic_cases"] is not None]
    for c in {(c["real_cases"], c["synthetic_cases"], c["synthetic_fraction"]): c for c in mixed}.values():
        asked = int(round(c["synthetic_fraction"] * c["real_cases"]))
        ratio = c["synthetic_cases"] / c["real_cases"]
        text += (
            f" {c['synthetic_cases']} synthetic per {c['real_cases']} real cases is {ratio:.2f} per real case"
        )
        if c["synthetic_cases"] < asked:
            text += (
                f" (synthetic_fraction {c['synthetic_fraction']} asked for {asked}; the set holds only "
                f"{c['synthetic_cases']})"
            )
        text += "."
    if mixed:
        digests = {c["synthetic_digest"] for c in mixed}
        draws = {str(c["synthetic_draw"]) for c in mixed if c.get("synthetic_draw")}
        if len(digests) == 1:
            text += (
                " Every seed trained on the same synthetic cases, so the intervals leave out the "
                "generator's sampling variance."
            )
        elif draws & {"one sample folder per seed", "disjoint draws from one pool, one per seed"}:
            text += (
                f" Each seed trained on its own synthetic cases ({', '.join(sorted(draws))}), so the "
                "intervals include the generator's sampling variance (not its training variance: one "
                "trained generator)."
            )
        else:
            text += (
                " The seeds drew different, overlapping synthetic cases from one sampled set, so the "
                "intervals hold only part of the generator's sampling variance."
            )
    stopped = sum(bool(c["stopped_early"]) for c in cells)
    return text + f" Stopped early: {stopped} of {len(cells)} cells (best step per cell: table2.md)."
