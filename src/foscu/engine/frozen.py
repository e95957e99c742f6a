"""A stage whose networks all stay as loaded (a frozen pretrained autoencoder): no optimizer step.

``deliver`` gives such a recipe (``recipe.trainable`` empty) what ``loop.fit`` gives a trained one, so the
stage reads back the same way: its networks as model.safetensors, its validation once in metrics.json
(``steps: 0``, ``frozen: true``). No checkpoint and no training state: there is nothing to resume.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from foscu.engine import distributed
from foscu.engine.checkpoint import save_weights
from foscu.engine.loop import FitResult, Recipe
from foscu.runs import METRICS, MODEL, write_json_atomic


def deliver(folder: Path, recipe: Recipe) -> FitResult:
    """Validate the recipe's networks once and write them, unchanged, as the stage's model."""
    assert not recipe.trainable, "deliver is for recipes with nothing to train; fit trains the others"
    started = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dist = distributed.current()
    for net in recipe.nets.values():
        net.to(dist.device).eval().requires_grad_(False)
    last: dict[str, float] = {}
    if recipe.validate is not None:
        with torch.no_grad():
            last = {k: float(v) for k, v in recipe.validate(recipe.nets).items()}
    seconds = time.perf_counter() - started
    if dist.is_main:
        save_weights(folder / MODEL, recipe.nets, {**recipe.metadata, "step": 0})
        summary = {"steps": 0, "seconds": round(seconds, 2), "steps_per_s": 0.0, "best": {}, "last": last}
        summary.update(stopped_early=False, monitor=recipe.monitor, frozen=True)
        write_json_atomic(folder / METRICS, summary)
    distributed.barrier()
    return FitResult(0, seconds, {}, last, False)
