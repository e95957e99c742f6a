"""What the real-only segmenter (the *judge*) says about a synthetic set: the input of the class-masked and
filtered protocols (foscu/protocols.py).

- ``validation_dice``: the judge's per-class Dice on the real **validation** split at its best step (its
  metrics.jsonl line of ``best_step``), the yardstick the protocols' ``auto`` choices compare with. The
  test split is never read here: its evaluation (RUN/evaluation/seg/<name>.json) is Table II's result.
- ``pair_fidelity``: the judge's Dice per synthetic case and class against the label the image was generated
  from, computed once per judge and synthetic draw (RUN/evaluation/protocols/<judge>/fidelity-<digest>.json).
- ``near_copies``: the synthetic cases the memorization audit (RUN/evaluation/memorization.json) flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from foscu.errors import InputError
from foscu.labels import Task, labels_for_task
from foscu.runs import RunFolder, write_json_atomic


def foreground(task: Task) -> list[str]:
    return [n for n, v in labels_for_task(task).items() if v != 0]


def bare_id(case_id: str) -> str:
    """``<folder>/<case>`` (synthetic_items) -> ``<case>``: the same cases under another folder name match."""
    return case_id.rsplit("/", 1)[-1]


def validation_dice(run: RunFolder, judge: str, task: Task) -> dict[str, float]:
    """The judge's validation Dice per foreground class at the step its weights are from."""
    metrics_path = run.metrics(judge)
    if not metrics_path.is_file():
        raise InputError(
            run.stage(judge), "the real-only segmenter is not trained: Table II trains real first"
        )
    best_step = json.loads(metrics_path.read_text()).get("best_step")
    log = run.stage(judge) / "metrics.jsonl"
    lines = (
        [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    )
    at_best = [line for line in lines if line.get("step") == best_step]
    if not at_best:
        raise InputError(log, f"no validation logged at the best step {best_step}")
    row = at_best[-1]
    return {c: float(row[f"val_dice_{c}"]) for c in foreground(task) if f"val_dice_{c}" in row}


def pair_fidelity(
    run: RunFolder, judge: str, items: list[dict[str, str]], task: Task, progress: bool = False
) -> dict[str, dict[str, float | None]]:
    """Bare case id -> class -> the judge's Dice on the synthetic image against its own label (None where
    the class is in neither); cached per judge and synthetic draw."""
    from foscu.segmentation.train import synthetic_digest

    digest = synthetic_digest(items)
    name = judge.split("/", 1)[-1]
    out = run.evaluation / "protocols" / name / f"fidelity-{digest[:16]}.json"
    if out.is_file():
        cached = json.loads(out.read_text())
        if cached.get("synthetic_digest") == digest:
            return dict(cached["cases"])
    if not items:
        return {}
    from foscu.evaluation.segmentation_metrics import evaluate_cases
    from foscu.segmentation.predict import predict_cases

    ids = {bare_id(item["case_id"]): item for item in items}
    folder = run.evaluation / "protocols" / name / f"predictions-{digest[:16]}"
    images = {case: Path(item["image"]) for case, item in ids.items()}
    written = predict_cases(run.stage(judge), images, folder, overwrite=True, progress=progress)
    pairs = {case: (written[case], Path(item["label"])) for case, item in ids.items()}
    result = evaluate_cases(pairs, task)
    cases = {case: {c: scores["dice"] for c, scores in per.items()} for case, per in result["cases"].items()}
    write_json_atomic(out, {"judge": judge, "synthetic_digest": digest, "cases": cases})
    return cases


def mean_fidelity(cases: dict[str, dict[str, float | None]], task: Task) -> dict[str, float | None]:
    """Per class, the mean over cases of the pair fidelity (cases where the class is in neither left out)."""
    means: dict[str, float | None] = {}
    for c in foreground(task):
        values = [v[c] for v in cases.values() if v.get(c) is not None]
        means[c] = sum(values) / len(values) if values else None  # type: ignore[arg-type]
    return means


def near_copies(run: RunFolder, items: list[dict[str, str]]) -> tuple[set[str], str]:
    """Bare ids of the drawn cases the memorization audit flags, and where that came from in words.

    The audit covers the run's own samples (RUN/samples); a set from elsewhere (lesion synthesis, another
    run) has none, and that is said rather than guessed.
    """
    audit = run.evidence("memorization")
    from_samples = [i for i in items if Path(i["image"]).resolve().is_relative_to(run.samples.resolve())]
    if not from_samples:
        return set(), "no memorization audit covers this synthetic set (it is not RUN/samples)"
    if not audit.is_file():
        return set(), f"no memorization audit yet ({audit} missing): near copies not checked"
    flagged = json.loads(audit.read_text()).get("samples", {})
    hits = {
        bare_id(i["case_id"]) for i in from_samples if flagged.get(bare_id(i["case_id"]), {}).get("near_copy")
    }
    return hits, f"near copies from {audit.name}"


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in values.items())
