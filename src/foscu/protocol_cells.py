"""One Table II cell of a protocol (foscu/protocols.py): its phases trained in order — each skipped when it
finished, resumed when it stopped, refused when it recorded other training than this run asks for.

A phase trains through ``stages.train_segmenter`` with the phase as ``plan`` and ``segmentation.train.steps``
set to the phase's budget (``protocols.budget``); its config.yaml records the plan (``plan``: protocol, steps,
budget rule, supervised classes or kept ids, how the synthetic cases were drawn).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from foscu.labels import Task
from foscu.runs import RunFolder, seg_stage
from foscu.table2_cells import check_reusable

if TYPE_CHECKING:
    from foscu.config import FoscuConfig
    from foscu.protocols import Phase


def with_steps(cfg: FoscuConfig, steps: int) -> FoscuConfig:
    """``cfg`` with ``segmentation.train.steps = steps`` (and no ``epochs``): a phase's budget."""
    seg = cfg.segmentation
    train = seg.train.model_copy(update={"steps": steps, "epochs": None})
    return cfg.model_copy(update={"segmentation": seg.model_copy(update={"train": train})})


def requested(phase: Phase, cfg: FoscuConfig) -> dict[str, Any]:
    """What a recorded phase must match to be reused: its steps, and for synthetic data the fraction, the
    draw's digest and the plan."""
    from foscu.segmentation.train import synthetic_digest

    if not phase.synthetic and phase.init_from is None:
        return {"steps": phase.steps}
    return {
        "steps": phase.steps,
        "synthetic_fraction": cfg.segmentation.synthetic_fraction,
        "synthetic_digest": synthetic_digest(phase.synthetic),
        "plan": phase.info(),
    }


def phases_of(
    cfg: FoscuConfig, prepared_root: Path, run_folder: Path, arch: str, task: Task, protocol: str,
    dirs: list[Path], seed: int, progress: bool = False,
) -> list[Phase]:  # fmt: skip
    from foscu.data.prepare import read_prepared
    from foscu.protocols import plan_cell

    prepared = read_prepared(Path(prepared_root))
    return plan_cell(cfg, RunFolder(run_folder), prepared, arch, task, protocol, dirs, seed, progress)


def stage_of(cfg: FoscuConfig, arch: str, task: Task, phase: Phase, seed: int) -> str:
    from foscu.table2 import _cell_name

    return seg_stage(_cell_name(cfg, arch, task, phase.tag, seed))


def check_cell(
    cfg: FoscuConfig, run: RunFolder, arch: str, task: Task, phases: list[Phase], seed: int
) -> None:
    """Refuse a cell whose recorded phases trained on other data or for other steps than ``phases``."""
    for phase in phases:
        stage = stage_of(cfg, arch, task, phase, seed)
        if run.config(stage).is_file():
            check_reusable(run, stage, requested(phase, cfg))


def train_cell(
    cfg: FoscuConfig, prepared_root: Path, run_folder: Path, arch: str, task: Task, protocol: str,
    dirs: list[Path], seed: int, progress: bool = True,
) -> Path:  # fmt: skip
    """Train (or skip / resume) every phase of the cell; returns the folder of the phase Table II scores."""
    from foscu import stages
    from foscu.protocols import synthetic_folders

    run = RunFolder(run_folder)
    phases = phases_of(cfg, prepared_root, run_folder, arch, task, protocol, dirs, seed, progress)
    dirs = synthetic_folders(protocol, run, dirs)  # what the cell's config.yaml records as its synthetic set
    check_cell(cfg, run, arch, task, phases, seed)
    for phase in phases:
        stage = stage_of(cfg, arch, task, phase, seed)
        if not run.metrics(stage).is_file():
            stages.train_segmenter(
                arch,
                task,
                with_steps(cfg, phase.steps),
                prepared_root,
                run_folder,
                list(dirs) if phase.synthetic else None,
                resume=run.is_stopped(stage),
                progress=progress,
                seed=seed,
                plan=phase,
            )
    return run.stage(stage_of(cfg, arch, task, phases[-1], seed))
