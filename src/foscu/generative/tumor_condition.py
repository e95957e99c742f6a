"""Tumor presence as a condition of the label LDM (``label_ldm.tumor_condition``).

Training: each case's class is 1 when its label holds a tumor voxel, 0 otherwise, and reaches MONAI
DiffusionModelUNet's class embedding (``num_class_embeds=2``, ``class_labels``); the stage records the
training split's prevalence. Sampling: each sample's presence is drawn from its own seed, 1 with probability
``sample.tumor_prevalence`` (None: the recorded training prevalence), so the prevalence of the generated
labels follows the real one by construction, or the one asked for (1.0: tumor cases only), and sample i has
the same presence whatever the batch or the number of GPUs. No class is dropped in training: there is no
classifier-free guidance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from foscu.data.loaders import load_split
from foscu.engine.loop import _mix
from foscu.errors import InputError
from foscu.labels import TUMOR

if TYPE_CHECKING:
    from foscu.context import StageContext

NUM_CLASSES = 2  # 0: no tumor, 1: tumor
STREAM = 2  # a sample's seed mixed with 0: label noise, 1: image noise, 2: its tumor presence
SPLITS = ("training", "validation")


def presence(labels: torch.Tensor) -> torch.Tensor:
    """(N, X, Y, Z) labels -> (N,) int64: 1 where the label holds a tumor voxel."""
    return (labels == TUMOR).flatten(1).any(1).long()


def stage_classes(ctx: StageContext, meta: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """Each split's tumor presence, in the order of the latent cache's cases; None unless the stage is
    conditioned on it."""
    if not getattr(ctx.section, "tumor_condition", False):
        return None
    classes = {}
    for split in SPLITS:
        volumes = load_split(ctx.prepared, split)
        if volumes.case_ids != meta["case_ids"].get(split, []):
            raise InputError(
                ctx.run.latents("label"), f"the latent cache's {split} cases are not the prepared set's"
            )
        classes[split] = presence(volumes.labels)
    return classes


def recorded(classes: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the stage's config.yaml keeps: the training split's tumor prevalence and its counts."""
    training = classes["training"]
    return {
        "tumor_prevalence": float(training.float().mean()) if len(training) else 0.0,
        "tumor_cases": int(training.sum()),
        "training_cases": len(training),
    }


def trained_prevalence(info: dict[str, Any]) -> float | None:
    """A label-LDM stage's recorded training prevalence; None when it is not conditioned on tumor presence."""
    return float(info["tumor_prevalence"]) if info["section"].get("tumor_condition") else None


def prevalence_to_sample(trained: float | None, asked: float | None, where: str) -> float | None:
    """The prevalence sampled at: ``asked`` (in [0, 1]), else the training one; None: not conditioned.
    Asking a label LDM trained without the condition is refused (``where`` names the setting)."""
    if asked is None:
        return trained
    if not 0.0 <= asked <= 1.0:
        raise InputError(where, f"a prevalence is in [0, 1], got {asked}")
    if trained is None:
        raise InputError(
            where, "the label LDM was trained without label_ldm.tumor_condition: it cannot be asked for one"
        )
    return float(asked)


def resolve(
    trained: float | None, configured: float | None, argument: float | None, sampled: bool
) -> float | None:
    """The prevalence labels are sampled at: the ``--tumor-prevalence`` argument, else ``configured``
    (sample.tumor_prevalence), else ``trained``; None where no label is sampled (``sampled`` False: given
    labels or a baseline; an argument is refused there) or the label LDM is not conditioned."""
    if argument is not None and not sampled:
        raise InputError("--tumor-prevalence", "only labels the duo model samples have a tumor prevalence")
    if not sampled:
        return None
    if argument is not None:
        return prevalence_to_sample(trained, argument, "--tumor-prevalence")
    return prevalence_to_sample(trained, configured, "sample.tumor_prevalence")


def draw_presence(seeds: list[int], prevalence: float) -> list[int]:
    """Each sample's tumor presence, 1 with probability ``prevalence``, drawn from its own seed alone."""
    draws = [float(torch.rand((), generator=torch.Generator().manual_seed(_mix(s, STREAM)))) for s in seeds]
    return [int(u < prevalence) for u in draws]


def class_labels(seeds: list[int], prevalence: float | None, device: torch.device) -> torch.Tensor | None:
    """(B,) class labels for the label LDM (None: it is not conditioned)."""
    if prevalence is None:
        return None
    return torch.tensor(draw_presence(seeds, prevalence), dtype=torch.long, device=device)


def record(
    per_case: dict[str, dict], cases: list[tuple[str, int, int]], trained: float | None, used: float | None
) -> dict[str, float | None] | None:
    """Add each sample's drawn ``tumor_presence`` to its samples.json record; -> the run-wide record
    (None when the labels were not sampled under the condition)."""
    if used is None:
        return None
    for (case_id, _, _), present in zip(cases, draw_presence([s for _, _, s in cases], used), strict=True):
        per_case[case_id]["tumor_presence"] = present
    return {"training_prevalence": trained, "prevalence": used}
