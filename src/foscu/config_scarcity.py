"""The ``scarcity`` config section: the data-scarcity curve's list of real-case counts, seeds and arms.

Kept apart from config.py (which imports it) so that module stays one screenful per section; the
validators here check what can be checked before the data is read, ``foscu.scarcity`` the rest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from foscu.labels import Task

Count = int | Literal["all"]  # a number of real training cases, or the whole training split


def check_seeds(value: int | list[int]) -> int | list[int]:
    """A seed count >= 1, or a list of distinct seeds >= 0 (Table II's and the curve's ``seeds``)."""
    if isinstance(value, int) and value < 1:
        raise ValueError(f"a count must be >= 1, got {value}")
    if isinstance(value, list) and (not value or len(set(value)) != len(value) or min(value) < 0):
        raise ValueError(f"a list must hold distinct seeds >= 0, got {value}")
    return value


class ScarcityConfig(BaseModel):
    """``foscu experiment --only scarcity``: segmenters on n real cases, with and without synthetic pairs.

    ``n`` is fixed in the preset before any result is seen; an empty list leaves the curve out of the
    experiment. Each seed draws its own nested subsets of the training split (the n = 5 cases are among the
    n = 10 ones); every n trains with the same ``synthetic_cases`` pairs of the run's sample folder.
    """

    model_config = ConfigDict(extra="forbid")

    n: list[Count] = Field(default_factory=list)
    seeds: int | list[int] = 3  # a count (seed, seed + 1, ...) or the seeds themselves, as segmentation.seeds
    arch: str = "unet"
    task: Task = "multiclass"
    synthetic_cases: int | None = Field(None, ge=1, description="pairs at every n (None: the whole folder)")
    # the generator trained on the n real cases of this point only (the user with a few scans of their own):
    # the run's generative stages again, on a prepared subset; expensive, so off unless set
    own_generator_n: int | None = Field(None, ge=1)
    # the counts of ``n`` at which a third arm trains: the n real cases plus lesion-edited copies of those
    # same cases (tumors inserted, moved or resized, the image generated only around each edit by the
    # shared generator; segmentation.lesions settings) -- the DiffTumor route for a user with few scans
    lesions_n: list[int] = Field(default_factory=list)
    bootstrap: int = Field(1000, ge=0, description="resamples of the test cases for the paired intervals")

    @field_validator("n")
    @classmethod
    def _distinct_counts(cls, value: list[Count]) -> list[Count]:
        numbers = [v for v in value if v != "all"]
        if any(v < 0 for v in numbers) or len(set(value)) != len(value):
            raise ValueError(f"a list of distinct counts >= 0 (or 'all'), got {value}")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        return check_seeds(value)

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        from foscu.config import ARCHS

        if value not in ARCHS:
            raise ValueError(f"unknown architecture {value!r} (choose from {', '.join(ARCHS)})")
        return value

    @model_validator(mode="after")
    def _own_generator_on_the_curve(self) -> ScarcityConfig:
        if self.own_generator_n is not None and self.own_generator_n not in self.n:
            raise ValueError(f"own_generator_n {self.own_generator_n} is not one of n {self.n}")
        off = [k for k in self.lesions_n if k < 1 or k not in self.n]
        if off or len(set(self.lesions_n)) != len(self.lesions_n):
            raise ValueError(f"lesions_n {self.lesions_n}: distinct counts >= 1 of n {self.n}")
        return self


def scarcity_seeds(cfg_seed: int, seeds: int | list[int]) -> list[int]:
    """The curve's seeds: a count k means cfg_seed, cfg_seed + 1, ..., cfg_seed + k - 1."""
    return [cfg_seed + i for i in range(seeds)] if isinstance(seeds, int) else list(seeds)
