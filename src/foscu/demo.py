"""``foscu demo``: phantom -> prepare -> experiment (demo preset) -> report, on a laptop CPU.

Every step is skipped when its outputs exist, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from foscu.data.prepare import prepare_dataset, read_prepared

# the demo's data: enough phantoms for a 70/10/20 split with a real test set, small enough for 2 cores
DEMO_CASES = 30
DEMO_SHAPE = (96, 96, 40)
DEMO_SPACING = (2.5, 2.5, 4.8)
DEMO_ROI = (64, 64, 32)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(out: Path, config: str = "demo", overrides: list[str] | None = None) -> Path:
    """Run the whole protocol on the embedded phantom in ``out``; returns the report's path."""
    from foscu.data.phantom import write_phantom_set

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    raw, prepared, run = out / "phantom", out / "prepared", out / "run"

    start = time.perf_counter()
    if not (raw / "dataset.json").is_file():
        write_phantom_set(raw, DEMO_CASES, DEMO_SHAPE, DEMO_SPACING, seed=0)
    timings["phantom"] = time.perf_counter() - start

    start = time.perf_counter()
    if not (prepared / "datalist.json").is_file():
        prepare_dataset(raw, prepared, roi=DEMO_ROI, center="tumor", split=(0.7, 0.1, 0.2), seed=0)
    read_prepared(prepared)
    timings["prepare"] = time.perf_counter() - start

    from foscu.experiment import run_experiment

    report = run_experiment(config, prepared, run, overrides or [], timings=timings)
    _say(f"demo finished in {sum(timings.values()):.0f} s; report: {report}")
    return report
