"""Do the samples the memorization audit flags carry a training case's liver? A check beside the audit.

    python benchmarks/memorization_labels.py RUN

For every Duo-Diffusion sample, the liver Dice between its generated label and the label of the training
case the audit found nearest (RUN/evaluation/memorization.json), split into flagged near copies and the
rest; as the reference, the best liver Dice each held-out real case (validation + test) reaches against any
training label. A flagged sample whose liver overlaps its nearest training liver more than any new patient's
does is close to a copy in its label as well as in its image.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from foscu.data.layout import case_files
from foscu.data.nifti import read_nifti
from foscu.data.prepare import read_prepared
from foscu.labels import LIVER
from foscu.runs import RunFolder


def liver_dice(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a == LIVER, b == LIVER
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


def main(run_root: str) -> None:
    run = RunFolder(run_root)
    audit = json.loads(run.evidence("memorization").read_text())
    prepared = read_prepared(Path(json.loads(run.identity.read_text())["data"]))
    training = {i["case_id"]: read_nifti(i["label"], label=True).array for i in prepared.datalist["training"]}
    generated = case_files(run.samples, "labels")
    groups: dict[str, list[float]] = {"near copy": [], "other": []}
    for sample, row in audit["samples"].items():
        label = read_nifti(generated[sample], label=True).array
        groups["near copy" if row["near_copy"] else "other"].append(
            liver_dice(label, training[row["nearest_real_case"]])
        )
    held_out = [i["label"] for s in ("validation", "test") for i in prepared.datalist[s]]
    best = [max(liver_dice(read_nifti(p, label=True).array, t) for t in training.values()) for p in held_out]
    print("| set | n | liver Dice to the nearest training label: median | max |")
    print("|---|---|---|---|")
    for name, values in groups.items():
        if values:
            print(f"| samples, {name} | {len(values)} | {np.median(values):.3f} | {max(values):.3f} |")
    print(
        f"| held-out real cases (best over training labels) | {len(best)} | {np.median(best):.3f} | {max(best):.3f} |"
    )


if __name__ == "__main__":
    main(sys.argv[1])
