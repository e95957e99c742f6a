"""The learning rate at each step: linear warm-up, then constant or cosine decay to a floor.

The rate is a pure function of (step, total steps, ``TrainConfig``), as the batch is (engine/loop.py): a
resumed run sets the same rate at every step as an uninterrupted one, so no scheduler state is saved.
With the defaults (no warm-up, constant) every step runs at ``train.lr``, as before schedules existed.
"""

from __future__ import annotations

import math

import torch

from foscu.config import TrainConfig


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """The multiple of ``cfg.lr`` the optimiser step taken at ``step`` (0-based) of ``total`` runs at.

    1. warm-up: steps 0 .. warmup_steps - 1 rise linearly, (step + 1) / warmup_steps, so the first step
       is not taken at rate 0 and the last warm-up step is at the full rate;
    2. then ``constant``: 1; ``cosine``: from 1 down to ``min_lr_ratio`` at the last step (step total - 1),
       half a cosine over the steps after the warm-up.
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return 1.0
    decay_steps = total - warmup - 1  # the steps after the first full-rate one
    progress = min(1.0, (step - warmup) / decay_steps) if decay_steps > 0 else 1.0
    floor = cfg.min_lr_ratio
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, cfg: TrainConfig) -> float:
    """Give every parameter group of ``optimizer`` the rate of ``step``; returns it."""
    lr = cfg.lr * lr_factor(step, total, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
