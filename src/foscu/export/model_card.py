"""The model card of an exported generator: what it was trained on, its evidence and its intended use.

A run's evidence files name cases (per-case Dice, each sample's nearest training case), so only summaries
over cases are taken over: counts, means, thresholds. Real-label statistics (median liver volume, ...) are
left out too: with a handful of training cases a median is one patient's value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from foscu.evaluation.ladder import CLASSES
from foscu.runs import RunFolder


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _ladder(found: dict[str, Any]) -> dict[str, Any]:
    keep = ("rung", "description", "n", *(f"dice {c}" for c in CLASSES), "dice mean")
    return {
        "rows": [{k: row.get(k) for k in keep} for row in found["rows"]],
        "conditioning": found["conditioning"]["text"],
        "where_lost": found["where_lost"],
    }


def _label_realism(found: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary_distance": found["summary_distance"],
        "n_real": found["n_real"],
        "n_generated": found["n_generated"],
        "features": [
            {"feature": f["feature"], "distance": f["distance"], "generated median": f["generated median"]}
            for f in found["features"]
        ],
        "presence": found["presence"],
        "note": found["note"],
    }


def _memorization(found: dict[str, Any]) -> dict[str, Any]:
    return {
        "samples": len(found["samples"]),
        "near_copies": found["near_copies"],
        "threshold": found["threshold"],
        "percentile": found["percentile"],
        "held_out_cases": found["held_out_nearest_training"]["n"],
        "synthetic_max_correlation": found["synthetic_nearest_real"]["max"],
        "method": found["method"],
        "calibration": found.get("calibration", "held-out real images"),
        "label_near_copies": found.get("labels", {}).get("near_copies"),
    }


def read_evidence(run: RunFolder) -> dict[str, dict[str, Any] | None]:
    """The run's fidelity ladder, label realism and memorization audit as summaries (None: not run)."""
    readers = {"ladder": _ladder, "label_realism": _label_realism, "memorization": _memorization}
    out: dict[str, dict[str, Any] | None] = {}
    for name, summarise in readers.items():
        found = _load(run.evidence(name))
        out[name] = summarise(found) if found else None
    return out


def novelty(evidence: dict[str, Any]) -> dict[str, Any]:
    """What is known about whether samples copy training patients (no novelty check runs at export)."""
    mem = evidence["memorization"]
    if mem is None:
        return {
            "checked": False,
            "text": "No novelty check was run: not at export, and the run holds no memorization audit "
            "(evaluation/memorization.json). Nothing in this folder shows whether its samples copy "
            "training patients.",
        }
    return {
        "checked": True,
        "near_copies": mem["near_copies"],
        "samples": mem["samples"],
        "threshold": mem["threshold"],
        "text": f"No novelty check was run at export; the run's memorization audit found {mem['near_copies']} "
        f"near copies among {mem['samples']} samples (correlation with the nearest training image above "
        f"{mem['threshold']:.4f}, the {mem['percentile']:g}th percentile of {mem['held_out_cases']} "
        f"held-out cases: {mem['calibration']})"
        + (
            f"; {mem['label_near_copies']} whose liver overlaps a training liver more than any held-out "
            "case's does."
            if mem["label_near_copies"] is not None
            else "."
        ),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "–" if value is None else str(value)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows] + [""]


def _evidence_lines(evidence: dict[str, Any]) -> list[str]:
    lines = ["## Evidence (from the run's evaluation, before export)", ""]
    ladder, realism, mem = evidence["ladder"], evidence["label_realism"], evidence["memorization"]
    if ladder:
        lines += ["### Fidelity ladder (Dice of a real-trained segmenter, real test split)", ""]
        lines += _table(ladder["rows"]) + [ladder["conditioning"], "", ladder["where_lost"], ""]
    else:
        lines += ["Fidelity ladder: not run.", ""]
    if realism:
        lines += [
            f"### Label realism ({realism['n_generated']} generated against {realism['n_real']} real labels)",
            "",
            f"Summary distance {_fmt(realism['summary_distance'])} (0 = like the real labels). "
            f"{realism['note']}. Real-label statistics are left out (a median over few patients is one "
            "patient's value).",
            "",
        ]
        lines += _table(realism["features"]) + _table(realism["presence"])
    else:
        lines += ["Label realism: not run.", ""]
    if mem:
        lines += [
            "### Memorization audit",
            "",
            f"{mem['near_copies']} near copies among {mem['samples']} samples at threshold "
            f"{mem['threshold']:.4f} ({mem['method']}; highest sample correlation "
            f"{_fmt(mem['synthetic_max_correlation'])}).",
            "",
        ]
    else:
        lines += ["Memorization audit: not run.", ""]
    return lines


def model_card(record: dict[str, Any]) -> str:
    """docs/README.md (and README.md) of an export from its configs/generator.json record."""
    trained, ev = record["trained_on"], record["evidence"]
    labels = ", ".join(f"{v} {k}" for k, v in record["labels"].items())
    lines = [
        "# FOSCU generator (Duo-Diffusion): synthetic hepatic MRI with labels",
        "",
        "Exported by `foscu export generator`. Sample from it on any machine with FOSCU installed:",
        "",
        "    foscu sample --generator THIS_FOLDER --out synthetic --n 20",
        "",
        "(`--labels MASKS` generates images for given label volumes instead).",
        "",
        "## What it was trained on",
        "",
        f"- Training split: {trained['training']} cases; validation split: {trained['validation']} (scored it "
        f"during training); test split: {trained['test']} (held out, used only by the evidence below).",
        "- No training data is in this folder: no images, labels, latents, case ids or data paths.",
        f"- Grid: ROI {' x '.join(map(str, record['roi']))} voxels at "
        f"{' x '.join(map(str, record['spacing']))} mm; images min-max scaled to [0, 1].",
        f"- Label map: {labels}.",
        f"- Stages: {', '.join(record['stages'])} (FOSCU {record['foscu_version']}).",
        "",
        "## Novelty",
        "",
        record["novelty"]["text"],
        "",
        *_evidence_lines(ev),
        "## Intended use",
        "",
        "Research: synthetic (image, label) pairs to train and test liver segmenters (liver, portal and "
        "hepatic veins, tumor) on this grid and label map, and to share a generator where scans cannot be "
        "shared. Not for diagnosis or any clinical decision. Check the samples against your own data "
        "(`foscu evaluate fid`, a segmenter's Dice) before relying on them. The memorization audit is a "
        "correlation check, not a privacy guarantee: the networks were not trained with differential "
        "privacy. Licence and authorship: to be set by the sharing institution (no LICENSE is written).",
        "",
        "## Layout (MONAI Bundle where it fits)",
        "",
        "- `configs/metadata.json`: MONAI Bundle metadata (versions, task, outputs). It has no `schema` URL "
        "(MONAI's check downloads it) and describes the sampled outputs, not one network's input.",
        "- `configs/generator.json`: grid, label map, stages, case counts and evidence summaries.",
        "- `configs/config.yaml`: the FOSCU config of the run (sampling defaults), not a MONAI config.",
        "- `models/<stage>/config.yaml` + `model.safetensors`: one folder per stage, as in a FOSCU run, "
        "instead of MONAI's single `models/model.pt`.",
        "- No `configs/inference.json`: sampling runs through `foscu sample --generator`, not "
        "`monai.bundle run`.",
        "- `docs/README.md` and `README.md`: this card.",
        "",
    ]
    return "\n".join(lines)
