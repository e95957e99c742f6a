"""``foscu seg train``: one 3D U-Net on real (or real + synthetic) data through THE training engine.

Paper II-C / III-B: Dice + binary cross-entropy (liver-only) or Dice + categorical cross-entropy
(multi-class), AdamW lr 1e-4, early stopping with patience 10 epochs on validation Dice, best weights kept.
Patches are drawn at random for training; validation runs sliding windows over whole validation volumes
and scores them with the same Dice convention as ``foscu evaluate seg`` (nnU-Net's).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foscu.engine.loop import Recipe
from foscu.errors import InputError
from foscu.labels import LABELS, TASKS, Task
from foscu.runs import seg_stage
from foscu.segmentation.predict import NET

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from foscu.context import StageContext
    from foscu.data.prepare import PreparedSet


def run_name(
    arch: str, task: Task, synthetic: bool | str, seed: int | None = None, n: int | None = None
) -> str:
    """``<arch>-<task>-<data>[-n<k>][-seed<k>]``: the folder under RUN/seg/.

    ``synthetic``: False -> ``real``, True -> ``real+synthetic``, or a protocol phase's data tag
    (protocols.DATA_TAGS). ``seed`` only for a run trained with another seed than the config's (Table II's
    extra seeds); ``n`` only for a run on a subset of ``n`` real training cases (the data-scarcity curve).
    """
    data = synthetic if isinstance(synthetic, str) else ("real+synthetic" if synthetic else "real")
    name = f"{arch}-{task}-{data}"
    name = name if n is None else f"{name}-n{n}"
    return name if seed is None else f"{name}-seed{seed}"


class SegmentationLoss:
    """Dice + BCE on one sigmoid channel (liver-only) or Dice + CE on softmax classes (multi-class).

    A deep-supervised output (B, heads, C, X, Y, Z) — DynUNet in train mode — is scored per head with
    nnU-Net's weights 1, 1/2, 1/4 ... normalised to sum to 1.
    """

    def __init__(self, task: Task, batch_dice: bool = False) -> None:
        from monai.losses import DiceCELoss

        from foscu.segmentation.protocol_loss import MaskedDiceCELoss

        if task == "binary":
            self.loss = DiceCELoss(sigmoid=True, batch=batch_dice)
        else:
            self.loss = DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, batch=batch_dice)
        self.masked = MaskedDiceCELoss(task, batch_dice)  # items with a class_mask (class-masked protocol)

    def __call__(self, nets: dict[str, nn.Module], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = nets[NET](batch["image"])  # (B, C, X, Y, Z) or (B, heads, C, X, Y, Z)
        label, mask = batch["label"], batch.get("class_mask")  # (B, 1, X, Y, Z), (B, C) or None

        def loss(out: torch.Tensor) -> torch.Tensor:
            return self.loss(out, label) if mask is None else self.masked(out, label, mask)

        if logits.dim() == 6:
            weights = [0.5**i for i in range(logits.shape[1])]
            total = sum(weights)
            losses = [w / total * loss(logits[:, i]) for i, w in enumerate(weights)]
            return {"loss": sum(losses[1:], losses[0]), "loss_full_resolution": loss(logits[:, 0]).detach()}
        return {"loss": loss(logits)}


class Validator:
    """Sliding-window Dice on the validation volumes: ``val_dice`` (foreground mean) + one per class."""

    def __init__(self, items: list[dict[str, str]], task: Task, patch: list[int], sw_batch_size: int) -> None:
        from foscu.data.transforms import SeededDataset, eval_transforms

        dataset = SeededDataset(items, eval_transforms(task))
        self.cases = [dataset[i] for i in range(len(dataset))]  # small: the validation split, in memory
        self.task, self.patch, self.sw_batch_size = task, patch, sw_batch_size

    def __call__(self, nets: dict[str, nn.Module]) -> dict[str, float]:
        from foscu.evaluation.segmentation_metrics import dice
        from foscu.labels import labels_for_task
        from foscu.segmentation.predict import logits_to_labels, sliding_window_logits

        net = nets[NET]
        device = next(net.parameters()).device
        labels = labels_for_task(self.task)
        per_class: dict[str, list[float]] = {}
        for case in self.cases:
            logits = sliding_window_logits(
                net, case["image"][None].to(device), self.patch, self.sw_batch_size
            )
            pred = logits_to_labels(logits.float(), self.task)
            scores = dice(pred, case["label"][0].numpy().astype(np.uint8), labels)
            for name, value in scores.items():
                if value is not None:
                    per_class.setdefault(name, []).append(value)
        means = {name: float(np.mean(v)) for name, v in per_class.items()}
        out = {f"val_dice_{name}": value for name, value in means.items()}
        out["val_dice"] = float(np.mean(list(means.values()))) if means else float("nan")
        return out


def synthetic_items(dirs: list[Path], roi: tuple[int, ...]) -> list[dict[str, str]]:
    """Every case of the synthetic sets; refuses a label map or volume shape other than the real set's."""
    from foscu.data.layout import list_cases, read_dataset_json
    from foscu.data.nifti import read_shape

    items: list[dict[str, str]] = []
    for root in dirs:
        meta = read_dataset_json(Path(root))
        labels = {str(k): int(v) for k, v in meta["labels"].items()}
        if labels != LABELS:
            raise InputError(
                Path(root) / "dataset.json", f"label map {labels} differs from the real one {LABELS}"
            )
        for case in list_cases(Path(root)):
            shape = read_shape(case.image)
            if shape != tuple(roi):
                raise InputError(case.image, f"shape {shape} differs from the prepared ROI {tuple(roi)}")
            assert case.label is not None
            items.append(
                {
                    "case_id": f"{Path(root).name}/{case.case_id}",
                    "image": str(case.image),
                    "label": str(case.label),
                }
            )
    return items


def draw_synthetic(synthetic: list[dict], count: int, seed: int) -> list[dict]:
    """``count`` synthetic cases (all if fewer) drawn by ``seed``, in the sets' order.

    The draw is a prefix of one seeded permutation, so a seed draws the same cases whatever the real set.
    """
    order = np.random.default_rng(seed).permutation(len(synthetic))[: min(len(synthetic), count)]
    return [synthetic[i] for i in sorted(order)]


def mix_training(real: list[dict], synthetic: list[dict], fraction: float, seed: int) -> list[dict]:
    """Real training cases + ``round(fraction * n_real)`` synthetic ones (all if fewer), drawn by ``seed``."""
    return list(real) + draw_synthetic(synthetic, int(round(fraction * len(real))), seed)


def _numbered(parts: list[str], prefix: str) -> int | None:
    """The number of a trailing ``<prefix><k>`` part, popped from ``parts``; None when there is none."""
    last = parts[-1] if len(parts) > 3 else ""
    if last.startswith(prefix) and last[len(prefix) :].isdigit():
        parts.pop()
        return int(last[len(prefix) :])
    return None


# data tags a run trains under without a Table II protocol's plan: real only, or real + the given synthetic
# folders (``real+lesions``: the data-scarcity curve's lesion-edited copies of its own n cases)
PLAIN_TAGS = ("real", "real+synthetic", "real+lesions")


def data_tag(name: str) -> str:
    """The data part of a segmentation stage name: ``real``, ``real+synthetic`` or a protocol phase's tag."""
    return name.removeprefix(seg_stage("")).split("-")[2]


def parse_run_name(name: str) -> tuple[str, Task, bool, int | None]:
    """``[seg/]<arch>-<task>-<data>[-n<k>][-seed<k>]`` -> (arch, task, synthetic (data is not real), seed)."""
    return parse_subset_run_name(name)[:4]  # type: ignore[return-value]


def parse_subset_run_name(name: str) -> tuple[str, Task, bool, int | None, int | None]:
    """Like :func:`parse_run_name`, with the real-case count ``n`` of a subset run last (None: all)."""
    from foscu.protocols import DATA_TAGS

    parts = name.removeprefix(seg_stage("")).split("-")
    seed = _numbered(parts, "seed")
    n = _numbered(parts, "n")
    if len(parts) != 3 or parts[1] not in TASKS or parts[2] not in DATA_TAGS:
        raise InputError(
            "STAGE",
            f"{name!r} is not seg/<arch>-<binary|multiclass>-<{'|'.join(DATA_TAGS)}>[-n<k>][-seed<k>]",
        )
    return parts[0], parts[1], parts[2] != "real", seed, n  # type: ignore[return-value]


def build(info: dict[str, Any]) -> dict[str, nn.Module]:
    """Rebuild a segmentation stage's network from its config.yaml."""
    from foscu.config import SegmentationConfig
    from foscu.segmentation.networks import build_segmenter

    section = info.get("section", info.get("segmentation"))  # "segmentation": older seg folders
    seg = SegmentationConfig.model_validate(section)
    roi = tuple(int(r) for r in info["roi"])
    spacing = tuple(float(s) for s in info["spacing"])
    return {NET: build_segmenter(info["arch"], info["task"], seg, roi, spacing)}  # type: ignore[arg-type]


def real_subset(prepared: PreparedSet, real_cases: list[str] | None) -> list[dict]:
    """The training split's items of the case ids ``real_cases``, in the split's order (None: all of it)."""
    training = list(prepared.datalist["training"])
    if real_cases is None:
        return training
    known = {item["case_id"] for item in training}
    unknown = sorted(set(real_cases) - known)
    if unknown:
        raise InputError(
            prepared.root / "datalist.json", f"case(s) {unknown[:5]} are not in the training split"
        )
    chosen = set(real_cases)
    return [item for item in training if item["case_id"] in chosen]


def training_items(
    prepared: PreparedSet,
    synthetic_dirs: list[Path],
    fraction: float,
    seed: int,
    real_cases: list[str] | None = None,
    synthetic_count: int | None = None,
) -> tuple[list[dict], list[dict]]:
    """What a segmentation stage trains on: (the real training cases, the seeded synthetic draw).

    ``real_cases`` (case ids) keeps only those of the training split; ``synthetic_count`` draws that many
    synthetic cases whatever the real count (refused when the sets hold fewer), instead of
    ``round(fraction * n_real)``.
    """
    real = real_subset(prepared, real_cases)
    if not synthetic_dirs:
        return real, []
    synthetic = synthetic_items(list(synthetic_dirs), prepared.roi)
    if synthetic_count is None:
        return real, mix_training(real, synthetic, fraction, seed)[len(real) :]
    if synthetic_count > len(synthetic):
        where = ", ".join(str(d) for d in synthetic_dirs)
        raise InputError(where, f"holds {len(synthetic)} synthetic cases; {synthetic_count} were asked for")
    return real, draw_synthetic(synthetic, synthetic_count, seed)


def synthetic_digest(items: list[dict[str, str]]) -> str:
    """sha256 over the synthetic draw: each case's id and the bytes of its image and label files, in order.

    Another sample folder, a folder sampled again, or another draw from it gives another digest.
    """
    import hashlib

    digest = hashlib.sha256()
    for item in items:
        digest.update(item["case_id"].rsplit("/", 1)[-1].encode() + b"\0")
        for key in ("image", "label"):
            digest.update(hashlib.sha256(Path(item[key]).read_bytes()).digest())
    return digest.hexdigest()


def _training_items(ctx: StageContext, synthetic: bool) -> tuple[list[dict], list[dict], float | None]:
    """The real training cases, the synthetic draw and the synthetic fraction used (None: a fixed count)."""
    seg, prepared = ctx.cfg.segmentation, ctx.prepared
    subset = None if ctx.real_cases is None else list(ctx.real_cases)
    if not prepared.datalist["training"] and subset is None:
        raise InputError(prepared.root / "datalist.json", "training split is empty")
    if not prepared.datalist["validation"]:
        raise InputError(
            prepared.root / "datalist.json", "validation split is empty (early stopping needs it)"
        )
    fraction = seg.synthetic_fraction if ctx.synthetic_fraction is None else ctx.synthetic_fraction
    if fraction < 0:
        raise InputError("--synthetic-fraction", f"must be >= 0, got {fraction}")
    if ctx.plan is not None:  # a Table II protocol's phase (protocols.py): its cases are resolved
        return list(ctx.plan.real), list(ctx.plan.synthetic), fraction
    if data_tag(ctx.name) not in PLAIN_TAGS:
        raise InputError(
            "STAGE", f"{ctx.name} trains only as a Table II protocol (foscu experiment / table2)"
        )
    if synthetic != bool(ctx.synthetic):
        need = (
            "needs a synthetic set (--synthetic)"
            if synthetic
            else "trains on real data only: drop --synthetic"
        )
        raise InputError("STAGE", f"{ctx.name} {need}")
    named = parse_subset_run_name(ctx.name)[4]
    given = None if subset is None else len(subset)
    if named != given:
        raise InputError("STAGE", f"{ctx.name} names {named} real cases, {given} were given (None: all)")
    real, drawn = training_items(
        prepared, list(ctx.synthetic), fraction, ctx.seed, subset, ctx.synthetic_count
    )
    if not real and not drawn:
        raise InputError("STAGE", f"{ctx.name} has nothing to train on (no real case, no synthetic one)")
    return real, drawn, fraction if ctx.synthetic_count is None else None


def _dataset(ctx: StageContext, task: Task, items: list[dict], n_real: int) -> Dataset:
    """The training cases through the augmentation chain; with a protocol's class mask, each item also
    carries the classes it supervises (real cases all, synthetic ones the mask's)."""
    from foscu.data.transforms import SeededDataset, train_transforms
    from foscu.labels import labels_for_task
    from foscu.segmentation.protocol_loss import MaskedCases

    seg = ctx.cfg.segmentation
    cases = SeededDataset(items, train_transforms(task, seg.patch_size, seg.foreground_oversample))
    mask = None if ctx.plan is None else ctx.plan.class_mask
    if mask is None:
        return cases
    every = [1.0] * (len(labels_for_task(task)) if task == "multiclass" else 1)
    return MaskedCases(cases, [every] * n_real + [list(mask)] * (len(items) - n_real))


def recipe(ctx: StageContext) -> Recipe:
    """A 3D U-Net (paper II-C) on the real training split, plus synthetic pairs for ``real+synthetic``."""
    from foscu.config import check_arch
    from foscu.segmentation.networks import build_segmenter

    arch, task, synthetic, _ = parse_run_name(ctx.name)
    check_arch(arch)
    seg, prepared = ctx.cfg.segmentation, ctx.prepared
    net = build_segmenter(arch, task, seg, prepared.roi, prepared.spacing)  # weights from the stage's seed
    if task == "multiclass" and prepared.labels != LABELS:
        raise InputError(
            prepared.root / "dataset.json",
            f"labels {prepared.labels} are liver-only: a multiclass model needs {LABELS}",
        )
    real, drawn, fraction = _training_items(ctx, synthetic)
    if ctx.plan is not None and ctx.plan.init_from is not None:  # pretrain-finetune: from phase 1's weights
        net.load_state_dict(ctx.load(ctx.plan.init_from)[0][NET].state_dict())
    info = {
        "arch": arch,
        "task": task,
        "data": str(prepared.root),
        "synthetic": [str(p) for p in ctx.synthetic],
        "synthetic_fraction": fraction,
        "training_cases": {"real": len(real), "synthetic": len(drawn)},
        "synthetic_cases": [item["case_id"] for item in drawn],
        "synthetic_digest": synthetic_digest(drawn),  # what Table II compares before reusing the cell
        **({"plan": ctx.plan.info()} if ctx.plan is not None else {}),
    }
    if ctx.real_cases is not None:  # a subset run (the data-scarcity curve): which cases, how many pairs
        info["real_case_ids"] = [item["case_id"] for item in real]
        info["synthetic_count"] = ctx.synthetic_count
    return Recipe(
        {NET: net},
        SegmentationLoss(task, seg.batch_dice),
        _dataset(ctx, task, real + drawn, len(real)),
        [NET],
        Validator(
            prepared.datalist["validation"], task, list(seg.patch_size or prepared.roi), seg.sw_batch_size
        ),
        monitor="val_dice",
        mode="max",
        info=info,
        metadata={"arch": arch, "task": task},
    )
