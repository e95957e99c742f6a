"""Settings of Table II's training protocols (foscu/protocols.py): which protocols run, how each arm's
training length is set, and each protocol's own options. ``SegmentationConfig`` holds them as fields.

A protocol name is a key of ``foscu.protocols.PROTOCOLS``; the names are listed here too so that the config
validates without importing the protocol module (and torch).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

ProtocolName = Literal["real", "mix", "pretrain-finetune", "class-masked", "filtered", "lesions"]
PROTOCOL_NAMES: tuple[ProtocolName, ...] = get_args(ProtocolName)

# converge: every arm trains until train.patience epochs pass without a better real validation Dice, at most
# converge_steps steps; equal_real_exposure: the real arm trains train.steps and an arm that adds synthetic
# cases trains train.steps x n_all / n_real, so it sees as many real patches; fixed: every arm train.steps
# (what Table II did before budgets existed, so the real arm is favoured by real exposure)
Budget = Literal["converge", "equal_real_exposure", "fixed"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainFinetuneConfig(_Closed):
    """pretrain-finetune: synthetic cases only, then the real training split from those weights."""

    pretrain_steps: int | None = Field(None, ge=1, description="the synthetic phase (None: train.steps)")


class ClassMaskedConfig(_Closed):
    """class-masked: a synthetic case supervises only these classes; the others are 'unknown' in its loss.

    ``auto``: the classes whose mean pair-fidelity Dice (the real-only segmenter on the synthetic images
    against their labels) reaches ``auto_ratio`` x that segmenter's validation Dice of the class.
    """

    classes: Literal["auto"] | list[str] = "auto"
    auto_ratio: float = Field(0.5, gt=0, le=1)


class FilteredConfig(_Closed):
    """filtered: synthetic pairs whose label the real-only segmenter does not find in the image are dropped.

    A pair is dropped when its pair-fidelity Dice of a checked class is below the class's threshold:
    ``min_dice: {liver: 0.85}`` checks the classes listed at those values; ``auto`` checks every foreground
    class at ``auto_ratio`` x the real-only segmenter's validation Dice of the class. ``drop_near_copies``
    also drops the pairs the memorization audit (RUN/evaluation/memorization.json) flags as near copies.
    """

    min_dice: Literal["auto"] | dict[str, float] = "auto"
    auto_ratio: float = Field(0.5, gt=0, le=1)
    drop_near_copies: bool = True

    @field_validator("min_dice")
    @classmethod
    def _thresholds(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        if isinstance(value, dict) and (not value or any(not 0 <= v <= 1 for v in value.values())):
            raise ValueError(f"a mapping class -> Dice in [0, 1], at least one class, got {value}")
        return value


class LesionsConfig(_Closed):
    """lesions: real + real training cases with tumors inserted, moved or resized inside the liver, the image
    generated only in and around each edit (``foscu lesions``, the experiment's lesion step -> RUN/lesions)."""

    n_per_case: int = Field(1, ge=1, description="edited copies of each real training case")
    method: Literal["inpaint", "blend"] = "inpaint"
    margin: int = Field(3, ge=2, description="voxels around an edit that are generated too")


class ProtocolSettings(_Closed):
    """The fields ``SegmentationConfig`` inherits: Table II's protocols, budget and their options."""

    protocols: list[ProtocolName] = Field(default_factory=lambda: list(PROTOCOL_NAMES[:2]))
    budget: Budget = "equal_real_exposure"
    converge_steps: int = Field(4000, ge=1, description="budget converge: the most steps an arm may take")
    # MONAI DiceLoss(batch=True): Dice pooled over the batch per class (nnU-Net's batch Dice), so a class
    # absent from one patch does not score a near-constant 1 there
    batch_dice: bool = False
    # each seed its own synthetic cases: one sample folder per seed, or disjoint draws from one larger pool
    synthetic_per_seed: bool = False
    pretrain_finetune: PretrainFinetuneConfig = Field(default_factory=PretrainFinetuneConfig)
    class_masked: ClassMaskedConfig = Field(default_factory=ClassMaskedConfig)
    filtered: FilteredConfig = Field(default_factory=FilteredConfig)
    lesions: LesionsConfig = Field(default_factory=LesionsConfig)

    @field_validator("protocols")
    @classmethod
    def _real_first(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each protocol once, got {value}")
        if "real" not in value:
            raise ValueError("every protocol is compared with real (real data only): list real too")
        return ["real", *(p for p in value if p != "real")]


# Table II's settings: they decide what each cell trains on (recorded in the cell's config.yaml as what it
# resolved to: steps, budget rule, supervised classes, kept ids), so a stage folder does not record them
TABLE2_ONLY = ("seeds", *(k for k in ProtocolSettings.model_fields if k != "batch_dice"))
