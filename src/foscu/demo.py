"""``foscu demo``: phantom -> prepare -> experiment (demo preset) -> report, on a laptop CPU.

Every step is skipped when its outputs exist, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from foscu.data.prepare import prepare_dataset, read_prepared
from foscu.errors import InputError

# the demo's data: enough phantoms for a 70/10/20 split with a real test set, small enough for 2 cores
DEMO_CASES = 30
MIN_CASES = 6  # the fewest that leave every split of the 70/10/20 split at least one case
DEMO_SHAPE = (96, 96, 40)
DEMO_SPACING = (2.5, 2.5, 4.8)
DEMO_ROI = (64, 64, 32)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(
    out: Path,
    config: str = "demo",
    overrides: list[str] | None = None,
    cases: int | None = None,
    shape: tuple[int, int, int] = DEMO_SHAPE,
    spacing: tuple[float, float, float] = DEMO_SPACING,
    roi: tuple[int, int, int] = DEMO_ROI,
    progress: bool = True,
) -> Path:
    """Run the whole protocol on the embedded phantom in ``out``; returns the report's path.

    ``cases`` phantom cases (None: ``DEMO_CASES``, at least ``MIN_CASES``).
    """
    from foscu.data.phantom import write_phantom_set
    from foscu.experiment import run_experiment

    cases = DEMO_CASES if cases is None else cases
    if cases < MIN_CASES:
        raise InputError("--cases", f"the 70/10/20 split needs at least {MIN_CASES} cases, got {cases}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    raw, prepared, run = out / "phantom", out / "prepared", out / "run"

    start = time.perf_counter()
    if not (raw / "dataset.json").is_file():
        write_phantom_set(raw, cases, shape, spacing, seed=0, progress=progress)
        timings["phantom"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    if not (prepared / "datalist.json").is_file():
        prepare_dataset(
            raw, prepared, roi=roi, center="tumor", split=(0.7, 0.1, 0.2), seed=0, progress=progress
        )
        timings["prepare"] = round(time.perf_counter() - start, 1)
    read_prepared(prepared)

    start = time.perf_counter()
    report = run_experiment(config, prepared, run, overrides or [], timings=timings, progress=progress)
    _say(f"demo finished in {time.perf_counter() - start + sum(timings.values()):.0f} s; report: {report}")
    return report
