"""Are two run folders the same? Weights, evaluation files and samples, ignoring times and paths.

    python benchmarks/compare_runs.py RUN_A RUN_B

Prints, per stage, whether the model.safetensors tensors are identical; per evaluation/*.json whether the
content is equal once wall times and the runs' own paths are taken out; and how many sample volumes have
identical voxels. Exit 1 when anything differs. Used to check that a restructuring keeps `foscu demo`'s
outputs for the same seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from stage_weights import tensor_digest

from foscu.data.layout import case_files
from foscu.data.nifti import read_nifti


def _without_run(value: Any, roots: tuple[str, ...]) -> Any:
    """``value`` without wall times, with each run's own folder written as RUN."""
    if isinstance(value, dict):
        return {k: _without_run(v, roots) for k, v in value.items() if k not in ("seconds", "timings")}
    if isinstance(value, list):
        return [_without_run(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "RUN")
    return value


def main(a: Path, b: Path) -> int:
    differ = 0
    roots = (str(a.parent), str(b.parent))  # a demo writes its prepared set beside the run
    for path in sorted(a.rglob("model.safetensors")):
        other = b / path.relative_to(a)
        same = other.is_file() and tensor_digest(path) == tensor_digest(other)
        differ += not same
        print(f"{'same' if same else 'DIFFERENT'} weights {path.parent.relative_to(a).as_posix()}")
    for path in sorted((a / "evaluation").glob("*.json")):
        other = b / "evaluation" / path.name
        same = other.is_file() and _without_run(json.loads(path.read_text()), roots) == _without_run(
            json.loads(other.read_text()), roots
        )
        differ += not same
        print(f"{'same' if same else 'DIFFERENT'} evaluation/{path.name}")
    for kind in ("images", "labels"):
        mine, theirs = case_files(a / "samples", kind), case_files(b / "samples", kind)
        equal = sum(
            1
            for case, path in mine.items()
            if case in theirs
            and np.array_equal(
                read_nifti(path, label=kind == "labels").array,
                read_nifti(theirs[case], label=kind == "labels").array,
            )
        )
        differ += equal != len(mine) or len(mine) != len(theirs)
        print(f"samples/{kind}: {equal} of {len(mine)} identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
