"""A toy regression stage for the engine tests (imported by tests and run as a torchrun/kill script)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from foscu.config import TrainConfig
from foscu.engine import distributed
from foscu.engine.loop import LossFn, Recipe, fit


class ToySet(Dataset):
    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, item_seed = key
        jitter = torch.randn(3, generator=torch.Generator().manual_seed(item_seed)) * 0.01
        return {"x": self.x[index] + jitter, "y": self.y[index]}


def build() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"net": nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))}


def toy_loss(nets: dict[str, nn.Module], batch: dict) -> dict[str, torch.Tensor]:
    noise = torch.randn_like(batch["y"]) * 0.01  # uses the step-seeded global RNG
    return {"loss": ((nets["net"](batch["x"]) - batch["y"] - noise) ** 2).mean()}


def slow_loss(nets: dict[str, nn.Module], batch: dict) -> dict[str, torch.Tensor]:
    time.sleep(0.05)
    return toy_loss(nets, batch)


def recipe(loss: LossFn = toy_loss, n: int = 12, **kw) -> Recipe:
    """The toy stage as the engine takes it: fresh networks, ``loss`` and ``n`` cases."""
    return Recipe(build(), loss, ToySet(n), ["net"], **kw)


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-2, batch_size=4, steps=12, checkpoint_every=3, val_every=3, amp="none", ema_decay=0.9)
    return TrainConfig(**{**base, **kw})


if __name__ == "__main__":  # python engine_toy.py FOLDER STEPS [slow] [resume] (also under torchrun)
    distributed.setup()
    folder, steps = Path(sys.argv[1]), int(sys.argv[2])
    loss = slow_loss if "slow" in sys.argv[3:] else toy_loss
    resume = "resume" in sys.argv[3:]
    fit(folder, recipe(loss), cfg(steps=steps), progress=False, resume=resume)
