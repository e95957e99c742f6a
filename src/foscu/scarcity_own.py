"""The curve's own-generator arm: the user who has nothing but their own few scans.

At ``scarcity.own_generator_n`` = n, the generator is trained on those n real cases only (the first seed's
subset of the curve): a prepared subset folder ``RUN/scarcity/own-generator-n<k>/prepared/`` (prepare's
layout and datalist format; its training split holds the n cases, its validation and test splits are the
full set's), a run of its own ``.../run/`` with Duo-Diffusion's generative stages at the config's settings,
the same pair count sampled into ``.../run/samples/``, and a mixed segmenter per seed on the n cases plus
those pairs. Every part is a stage or folder that a rerun skips once finished.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from foscu.errors import InputError
from foscu.runs import RunFolder, atomic_folder, write_json_atomic

if TYPE_CHECKING:
    from foscu.config import FoscuConfig
    from foscu.scarcity import Cell

SUBSET_RECORD = "subset.json"  # written last in a subset folder: which cases, from which prepared set


def own_folder(run: RunFolder, n: int) -> Path:
    """``RUN/scarcity/own-generator-n<k>/``: the arm's prepared subset and its own run."""
    return run.root / "scarcity" / f"own-generator-n{n}"


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


def write_subset_prepared(prepared_root: Path, training_ids: list[str], out: Path) -> Path:
    """A prepared set whose training split holds only ``training_ids`` (validation and test unchanged).

    Written whole or not at all; an existing folder is reused when it records the same cases of the same
    set, refused otherwise.
    """
    from foscu.data.layout import case_entry, image_path, label_path

    prepared_root, out = Path(prepared_root), Path(out)
    wanted = {"source": str(prepared_root.resolve()), "training": sorted(training_ids)}
    record = out / SUBSET_RECORD
    if record.is_file():
        if json.loads(record.read_text()) != wanted:
            raise InputError(record, f"holds another subset than {wanted}: remove {out} to rebuild it")
        return out
    datalist = json.loads((prepared_root / "datalist.json").read_text())
    known = {item["case_id"] for item in datalist.get("training", [])}
    if not set(training_ids) <= known:
        missing = sorted(set(training_ids) - known)
        raise InputError(
            prepared_root / "datalist.json", f"case(s) {missing[:5]} are not in the training split"
        )
    splits = {
        "training": [c for c in datalist["training"] if c["case_id"] in set(training_ids)],
        "validation": datalist.get("validation", []),
        "test": datalist.get("test", []),
    }
    with atomic_folder(out, overwrite=True) as tmp:
        for items in splits.values():
            for item in items:
                case = item["case_id"]
                _link_or_copy(prepared_root / item["image"], image_path(tmp, case))
                _link_or_copy(prepared_root / item["label"], label_path(tmp, case))
        meta = json.loads((prepared_root / "dataset.json").read_text())
        meta["numTraining"] = sum(len(v) for v in splits.values())
        write_json_atomic(tmp / "dataset.json", meta)
        write_json_atomic(
            tmp / "datalist.json", {k: [case_entry(c["case_id"]) for c in v] for k, v in splits.items()}
        )
        if (prepared_root / "preparation.json").is_file():
            shutil.copyfile(prepared_root / "preparation.json", tmp / "preparation.json")
        write_json_atomic(tmp / SUBSET_RECORD, wanted)
    return out


def train_own_generator(
    cfg: FoscuConfig, subset: Path, own_run: Path, count: int, progress: bool = True
) -> Path:
    """Duo-Diffusion's generative stages on the subset (each skipped once trained, resumed when stopped),
    then ``count`` pairs sampled with the config's sampler and seed; returns the sample folder."""
    from foscu.experiment import BASELINE_STAGES, GENERATIVE_STAGES, SAMPLES_RECORD
    from foscu.generative.generate import generate
    from foscu.stages import train_stage

    run = RunFolder(own_run)
    for stage in (s for s in GENERATIVE_STAGES if s not in BASELINE_STAGES):
        if not run.is_trained(stage):
            train_stage(stage, cfg, subset, run.root, resume=run.is_stopped(stage), progress=progress)
    if not (run.samples / SAMPLES_RECORD).is_file():
        if run.samples.exists():  # half-written by an interrupted call (samples.json marks it done)
            shutil.rmtree(run.samples)
        s = cfg.sample
        generate(
            run.root,
            count,
            run.samples,
            s.sampler,
            s.steps,
            cfg.seed,
            batch_size=s.batch_size,
            progress=progress,
        )
    return run.samples


def own_generator_cells(
    cfg: FoscuConfig, prepared_root: Path, run: RunFolder, cases: list[str], count: int, progress: bool = True
) -> list[Cell]:
    """The arm's cells, one per seed, after its generator is trained and sampled: the n ``cases`` (the
    first seed's subset, for every seed: the user has only those) plus ``count`` of its own pairs."""
    from foscu.config_scarcity import scarcity_seeds
    from foscu.scarcity import OWN_ARM, Cell

    folder = own_folder(run, len(cases))
    subset = write_subset_prepared(prepared_root, cases, folder / "prepared")
    samples = train_own_generator(cfg, subset, folder / "run", count, progress)
    return [
        Cell(len(cases), OWN_ARM, seed, list(cases), subset, folder / "run", samples, count)
        for seed in scarcity_seeds(cfg.seed, cfg.scarcity.seeds)
    ]
