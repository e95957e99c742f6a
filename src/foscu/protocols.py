"""PROTOCOLS: how a Table II row's segmenter uses synthetic pairs, in one table (as stages.STAGES for stages).

A protocol turns (the real training split, a synthetic draw, the real-only segmenter of the same
arch x task x seed — the *judge*) into the phases its segmenter trains through; each phase is one stage
folder ``seg/<arch>-<task>-<tag>[-seed<k>]`` and the last one is the cell Table II scores on the test split.

| protocol            | trains on                                                                 |
|---------------------|---------------------------------------------------------------------------|
| `real`              | the real training split only                                              |
| `mix` (the paper)   | real + ``synthetic_fraction`` synthetic cases per real case               |
| `pretrain-finetune` | the synthetic cases only, then the real split from those weights          |
| `class-masked`      | as mix; a synthetic case supervises only the classes its image carries    |
| `filtered`          | as mix, less the pairs the judge does not find and the near copies        |
| `lesions`           | real + real cases with tumors edited in (RUN/lesions), not the Duo pairs  |

A synthetic set is any folder in nnU-Net layout with FOSCU's label map (``foscu sample`` output, a lesion
synthesis, another institution's samples). Every choice a protocol makes from data (``auto`` classes, filter
thresholds) reads the judge's *validation* Dice (protocol_judge.py), never the test split.

A new protocol: a builder ``(Inputs) -> list[Phase]`` and one row in ``PROTOCOLS`` (its name added to
config_protocols.ProtocolName, its phases' tags to ``DATA_TAGS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foscu import protocol_judge as judge_
from foscu.errors import InputError
from foscu.labels import Task
from foscu.runs import RunFolder, seg_stage

if TYPE_CHECKING:
    from foscu.config import FoscuConfig
    from foscu.data.prepare import PreparedSet


@dataclass
class Phase:
    """One training run of a protocol: what it trains on, how long, and what its config.yaml records."""

    tag: str  # the data part of its stage name
    real: list[dict[str, str]]
    synthetic: list[dict[str, str]]
    steps: int
    budget: str  # the rule that set ``steps``, in words
    class_mask: list[float] | None = None  # (C,) the classes a synthetic case supervises; None: all
    init_from: str | None = None  # the stage whose weights it starts from
    record: dict[str, Any] = field(default_factory=dict)  # what it chose (classes, kept ids, thresholds)
    protocol: str = ""

    def info(self) -> dict[str, Any]:
        """The cell's ``plan`` entry in config.yaml: Table II compares it before reusing the cell."""
        head = {"protocol": self.protocol, "steps": self.steps, "budget": self.budget}
        return {**head, "init_from": self.init_from, **self.record}


@dataclass
class Inputs:
    """What a protocol's builder sees for one cell."""

    cfg: FoscuConfig
    run: RunFolder
    task: Task
    stage: Callable[[str], str]  # a data tag -> the stage of this arch x task x seed with that tag
    real: list[dict[str, str]]
    drawn: list[dict[str, str]]  # the seed's synthetic draw (synthetic_fraction of the real count)
    progress: bool = False

    @property
    def judge(self) -> str:
        """The real-only stage of the same arch x task x seed."""
        return self.stage("real")


@dataclass(frozen=True)
class ProtocolSpec:
    describe: str  # what the segmenter trains on, for the note and docs
    build: Callable[[Inputs], list[Phase]]
    synthetic: bool = True  # needs a synthetic set
    # the synthetic folders it draws from instead of Table II's (the run's Duo samples); None: those
    source: Callable[[RunFolder], list[Path]] | None = None


LESIONS = "lesions"  # RUN/lesions: the experiment's lesion synthesis on the real training cases


def lesion_folders(run: RunFolder) -> list[Path]:
    """The run's lesion-synthesised set (``foscu lesions --run RUN --out RUN/lesions``), refused if absent."""
    from foscu.experiment import SAMPLES_RECORD

    folder = run.root / LESIONS
    if not (folder / SAMPLES_RECORD).is_file():
        raise InputError(folder, "no finished lesion synthesis: run the experiment's lesion step first")
    return [folder]


def synthetic_folders(protocol: str, run: RunFolder, dirs: list[Path]) -> list[Path]:
    """The folders protocol ``protocol`` draws its synthetic cases from: its own ``source``, else ``dirs``."""
    source = PROTOCOLS[protocol].source
    return source(run) if source is not None else dirs


def budget(cfg: FoscuConfig, n_real: int, n_synthetic: int) -> tuple[int, str]:
    """The steps an arm with ``n_real`` real and ``n_synthetic`` synthetic cases trains, and the rule.

    equal_real_exposure: ``ceil(train.steps x (n_real + n_synthetic) / n_real)``, so with batches drawn
    uniformly over the arm's cases it sees the real arm's ``train.steps x batch`` real patches (42 real + 36
    synthetic at 800 real-arm steps: 1486); a synthetic-only phase trains ``train.steps``.
    """
    seg = cfg.segmentation
    train = seg.train
    base = train.steps if train.epochs is None else train.epochs * max(1, n_real // train.batch_size)
    if seg.budget == "converge":
        if train.patience is None:
            raise InputError("segmentation.budget", "converge stops early: set segmentation.train.patience")
        return seg.converge_steps, (
            f"converge: until {train.patience} epochs without a better real validation Dice, "
            f"at most {seg.converge_steps} steps"
        )
    if seg.budget == "fixed" or not n_synthetic or not n_real:
        return base, f"{seg.budget}: train.steps = {base}"
    steps = math.ceil(base * (n_real + n_synthetic) / n_real)
    return steps, (
        f"equal_real_exposure: {base} x ({n_real} + {n_synthetic}) / {n_real} = {steps} steps, "
        f"the real patches of {base} real-only steps"
    )


def _real(x: Inputs) -> list[Phase]:
    return [Phase("real", x.real, [], *budget(x.cfg, len(x.real), 0))]


def _mix(x: Inputs) -> list[Phase]:
    return [Phase("real+synthetic", x.real, x.drawn, *budget(x.cfg, len(x.real), len(x.drawn)))]


def _pretrain_finetune(x: Inputs) -> list[Phase]:
    """Synthetic only (best weights by real validation Dice), then the real split from those weights."""
    steps, rule = budget(x.cfg, 0, len(x.drawn))
    own = x.cfg.segmentation.pretrain_finetune.pretrain_steps
    if own is not None and x.cfg.segmentation.budget != "converge":
        steps, rule = own, f"pretrain_finetune.pretrain_steps = {own}"
    pretrain = Phase("synthetic", [], x.drawn, steps, rule)
    finetune = Phase("finetune", x.real, [], *budget(x.cfg, len(x.real), 0), init_from=x.stage("synthetic"))
    return [pretrain, finetune]


def class_mask(task: Task, supervised: list[str]) -> list[float]:
    """(C,) 1 for the classes a synthetic case supervises; background always (multi-class)."""
    classes = judge_.foreground(task)
    return ([1.0] if task == "multiclass" else []) + [float(c in supervised) for c in classes]


def _check_classes(names: list[str] | dict[str, float], task: Task, key: str) -> None:
    unknown = sorted(set(names) - set(judge_.foreground(task)))
    if unknown:
        raise InputError(key, f"{unknown} are not foreground classes of {task}: {judge_.foreground(task)}")


def supervised_classes(x: Inputs) -> tuple[list[str], dict[str, Any]]:
    """class-masked's classes: the user's list, or ``auto`` from pair fidelity against validation Dice."""
    settings = x.cfg.segmentation.class_masked
    if settings.classes != "auto":
        _check_classes(settings.classes, x.task, "segmentation.class_masked.classes")
        return list(settings.classes), {"classes_rule": "listed in segmentation.class_masked.classes"}
    val = judge_.validation_dice(x.run, x.judge, x.task)
    pair = judge_.mean_fidelity(judge_.pair_fidelity(x.run, x.judge, x.drawn, x.task, x.progress), x.task)
    ratio = settings.auto_ratio
    chosen = [c for c in val if pair.get(c) is not None and val[c] > 0 and pair[c] >= ratio * val[c]]  # type: ignore[operator]
    rule = (
        f"auto: mean pair fidelity >= {ratio} x the real-only segmenter's validation Dice "
        f"(pair fidelity {judge_.describe(pair)}; validation {judge_.describe(val)})"
    )
    return chosen, {"classes_rule": rule, "pair_fidelity": pair, "validation_dice": val}


def _class_masked(x: Inputs) -> list[Phase]:
    classes, record = supervised_classes(x)
    phase = Phase("masked", x.real, x.drawn, *budget(x.cfg, len(x.real), len(x.drawn)))
    phase.class_mask, phase.record = class_mask(x.task, classes), {"supervised_classes": classes, **record}
    return [phase]


def kept_pairs(x: Inputs) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """filtered's pairs: the draw less pairs below a class threshold and the audit's near copies."""
    settings = x.cfg.segmentation.filtered
    if settings.min_dice == "auto":
        val = judge_.validation_dice(x.run, x.judge, x.task)
        thresholds = {c: settings.auto_ratio * v for c, v in val.items()}
        rule = f"auto: {settings.auto_ratio} x the real-only segmenter's validation Dice per class"
    else:
        _check_classes(settings.min_dice, x.task, "segmentation.filtered.min_dice")
        thresholds, rule = dict(settings.min_dice), "listed in segmentation.filtered.min_dice"
    fidelity = judge_.pair_fidelity(x.run, x.judge, x.drawn, x.task, x.progress)
    copies, copies_rule = judge_.near_copies(x.run, x.drawn) if settings.drop_near_copies else (set(), "off")
    kept, dropped = [], {}
    for item in x.drawn:
        case = judge_.bare_id(item["case_id"])
        low = [c for c, t in thresholds.items() if (fidelity[case].get(c) or 0.0) < t]
        low = [c for c in low if fidelity[case].get(c) is not None]  # absent from label and prediction: kept
        why = [f"{c} Dice {fidelity[case][c]:.3f} < {thresholds[c]:.3f}" for c in low]
        why += ["near copy"] if case in copies else []
        if why:
            dropped[case] = "; ".join(why)
        else:
            kept.append(item)
    record = {
        "thresholds": thresholds,
        "threshold_rule": rule,
        "near_copies": copies_rule,
        "kept": [judge_.bare_id(i["case_id"]) for i in kept],
        "dropped": dropped,
    }
    return kept, record


def _lesions(x: Inputs) -> list[Phase]:
    return [Phase("real+lesions", x.real, x.drawn, *budget(x.cfg, len(x.real), len(x.drawn)))]


def _filtered(x: Inputs) -> list[Phase]:
    kept, record = kept_pairs(x)
    phase = Phase("filtered", x.real, kept, *budget(x.cfg, len(x.real), len(kept)))
    phase.record = record
    return [phase]


PROTOCOLS: dict[str, ProtocolSpec] = {
    "real": ProtocolSpec("the real training split only", _real, synthetic=False),
    "mix": ProtocolSpec("real + synthetic_fraction synthetic cases per real case (the paper)", _mix),
    "pretrain-finetune": ProtocolSpec(
        "synthetic cases only, then the real split from those weights", _pretrain_finetune
    ),
    "class-masked": ProtocolSpec(
        "real + synthetic, a synthetic case supervising only the classes its image carries", _class_masked
    ),
    "filtered": ProtocolSpec(
        "real + the synthetic pairs the real-only segmenter finds in their image, near copies out", _filtered
    ),
    "lesions": ProtocolSpec(
        "real + synthetic_fraction real training cases per real case with tumors inserted, moved or resized "
        "inside the liver and the image generated only around each edit (RUN/lesions, not the Duo pairs)",
        _lesions,
        source=lesion_folders,
    ),
}
# every tag a protocol's phases are named by (segmentation.train.parse_run_name accepts these)
DATA_TAGS = ("real", "real+synthetic", "synthetic", "finetune", "masked", "filtered", "real+lesions")
SCORED_TAG = {"real": "real", "mix": "real+synthetic", "pretrain-finetune": "finetune"}
SCORED_TAG |= {"class-masked": "masked", "filtered": "filtered", "lesions": "real+lesions"}


def protocol_of(kind: str) -> str:
    """The protocol whose scored phase has data tag ``kind`` (``real+synthetic`` -> ``mix``)."""
    return {tag: name for name, tag in SCORED_TAG.items()}[kind]


def synthetic_draw(
    cfg: FoscuConfig, prepared: PreparedSet, dirs: list[Path], seed: int
) -> tuple[list[dict[str, str]], str]:
    """The synthetic cases the cell of ``seed`` draws, and how, in words.

    Shared (``synthetic_per_seed: false``): the seeded draw of ``synthetic_fraction`` x n_real from all the
    folders, as before protocols. Per seed: one folder per seed of ``segmentation.seeds`` (the i-th seed
    draws from the i-th folder), or one pool cut into disjoint per-seed draws (shuffled by the config seed).
    """
    import numpy as np

    from foscu.segmentation.train import synthetic_items, training_items
    from foscu.table2 import seed_list

    seg, n_real = cfg.segmentation, len(prepared.datalist["training"])
    if not seg.synthetic_per_seed:
        return training_items(prepared, dirs, seg.synthetic_fraction, seed)[1], "one set shared by the seeds"
    seeds = seed_list(cfg)
    index = seeds.index(seed)
    if len(dirs) == len(seeds) and len(dirs) > 1:
        drawn = training_items(prepared, [dirs[index]], seg.synthetic_fraction, seed)[1]
        return drawn, "one sample folder per seed"
    if len(dirs) != 1:
        raise InputError("--synthetic", f"synthetic_per_seed: one folder per seed ({len(seeds)}) or one pool")
    pool = synthetic_items(dirs, prepared.roi)
    n = int(round(seg.synthetic_fraction * n_real))
    if n * len(seeds) > len(pool):
        raise InputError(
            dirs[0],
            f"synthetic_per_seed: {len(seeds)} seeds x {n} cases need {n * len(seeds)}, pool holds {len(pool)}",
        )
    order = np.random.default_rng(cfg.seed).permutation(len(pool))[index * n : (index + 1) * n]
    return [pool[i] for i in sorted(order)], "disjoint draws from one pool, one per seed"


def plan_cell(
    cfg: FoscuConfig,
    run: RunFolder,
    prepared: PreparedSet,
    arch: str,
    task: Task,
    protocol: str,
    dirs: list[Path],
    seed: int,
    progress: bool = False,
) -> list[Phase]:
    """The phases of protocol ``protocol``'s cell (arch x task x seed), resolved from the data."""
    from foscu.table2 import _cell_name

    spec = PROTOCOLS[protocol]
    dirs = synthetic_folders(protocol, run, dirs)
    if spec.synthetic and not dirs:
        raise InputError("--synthetic", f"protocol {protocol} needs a synthetic set")
    drawn, how = synthetic_draw(cfg, prepared, dirs, seed) if spec.synthetic else ([], "")
    real = list(prepared.datalist["training"])
    stage = lambda tag: seg_stage(_cell_name(cfg, arch, task, tag, seed))  # noqa: E731
    phases = spec.build(Inputs(cfg, run, task, stage, real, drawn, progress))
    for phase in phases:
        phase.protocol = protocol
        phase.record = {**phase.record, **({"synthetic_draw": how} if phase.synthetic else {})}
    return phases
