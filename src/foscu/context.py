"""StageContext: what a stage's recipe may read of the run it trains in (the table in stages.py fills it).

A recipe (``autoencoders.recipe``, ``diffusion.recipe``, ``controlnet.recipe``, ``segmentation.train.recipe``)
sees its name, config section, prepared set, device and seed, and reaches earlier stages only through the
three callables it holds: ``load`` (the one loader), ``info`` (the one config.yaml reader) and ``latents`` (an
encoder's latent cache).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foscu.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from foscu.config import FoscuConfig
    from foscu.data.prepare import PreparedSet
    from foscu.runs import RunFolder

# a trained stage: its networks, its weights' metadata and its config.yaml
Loaded = tuple[dict[str, "nn.Module"], dict[str, Any], dict[str, Any]]


@dataclass
class StageContext:
    """One stage's view of its run: settings and data, and the earlier stages through the run folder."""

    name: str  # the stage's name: "label-ldm", "controlnet", "seg/unet-multiclass-real", ...
    cfg: FoscuConfig
    section_name: str  # the FoscuConfig section the stage reads ("label_ldm", "segmentation", ...)
    prepared: PreparedSet
    run: RunFolder
    device: torch.device
    seed: int
    load: Callable[[str], Loaded]  # a trained stage of the run, rebuilt from its own folder
    info: Callable[[str], dict[str, Any]]  # a trained stage's config.yaml
    latents: Callable[[str], Path]  # RUN/latents/<kind>.safetensors of an encoder stage, built once
    synthetic: tuple[Path, ...] = ()  # segmentation: synthetic sets joining the training split
    synthetic_fraction: float | None = None
    real_cases: tuple[str, ...] | None = None  # segmentation: a subset of the training split (None: all)
    synthetic_count: int | None = None  # segmentation: this many synthetic cases, whatever the real count
    plan: Any = None  # segmentation: a Table II protocol's phase (protocols.Phase), or None

    @property
    def section(self) -> Any:
        return getattr(self.cfg, self.section_name)

    def best_by(self, score: str, mode: str = "min") -> dict[str, Any]:
        """A generative recipe's ``monitor``/``mode``: its validation ``score`` where the section sets
        ``keep_best`` (the engine then keeps the best weights and may stop early), else none (the last)."""
        if not getattr(self.section, "keep_best", False):
            return {}
        if not self.prepared.datalist.get("validation"):
            raise InputError(
                f"{self.section_name}.keep_best",
                f"{self.prepared.root} has no validation cases to pick the best weights by",
            )
        return {"monitor": score, "mode": mode}
