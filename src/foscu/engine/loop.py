"""THE training loop: every stage (autoencoders, diffusion, ControlNet, segmentation) trains through ``fit``.

A stage hands ``fit`` a ``Recipe``: its networks, a pure ``loss_fn(nets, batch) -> {"loss": ..., ...}``, a
dataset and optionally a ``validate(nets) -> {name: value}``. The loop owns AdamW, autocast, gradient
clipping, the learning-rate schedule (engine/schedule.py), EMA, DDP, checkpoints (safetensors weights + a
weights_only state), exact resume,
metrics.jsonl/TensorBoard, the progress bar and early stopping (``train.patience`` epochs without
improvement of ``monitor``). ``TrainStep`` is the one optimiser step, which the benchmarks time too.

Exact resume: the batch at step s is a pure function of (seed, s) -- the epoch permutation is seeded by the
epoch, and each item receives an ``item_seed`` for its augmentation -- and the global RNG is reseeded from
(seed, step, rank) before every step, so a run killed after its checkpoint at step k and resumed from it
ends with the same weights as one never interrupted. No RNG state is saved: none is needed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from foscu.config import TrainConfig
from foscu.engine import distributed
from foscu.engine.checkpoint import load_state, load_weights, plain, save_state, save_weights
from foscu.engine.schedule import set_lr
from foscu.engine.tracking import MetricsLog, progress_bar
from foscu.errors import InputError
from foscu.runs import METRICS, MODEL, STATE, write_json_atomic

LossFn = Callable[[dict[str, nn.Module], dict[str, Any]], dict[str, torch.Tensor]]
ValidateFn = Callable[[dict[str, nn.Module]], dict[str, float]]

CHECKPOINT = "checkpoint-{step:07d}.safetensors"  # the state file names the one it belongs to
CHECKPOINTS = "checkpoint-*.safetensors"


@dataclass
class Recipe:
    """What a stage hands the engine: its networks, pure loss, data, validation and what it records."""

    nets: dict[str, nn.Module]
    loss_fn: LossFn
    train_set: Dataset
    trainable: list[str]
    validate: ValidateFn | None = None
    monitor: str | None = None  # validate()'s key that picks the best weights and stops early
    mode: Literal["min", "max"] = "min"
    info: dict[str, Any] = field(default_factory=dict)  # what the stage's config.yaml records
    metadata: dict[str, Any] = field(default_factory=dict)  # goes into the weight files


@dataclass
class FitResult:
    steps: int
    seconds: float
    best: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


def _mix(*numbers: int) -> int:
    """A deterministic 31-bit seed from integers (no Python hash randomisation)."""
    value = 0x2545F491
    for n in numbers:
        value = (value * 6364136223846793005 + n + 1442695040888963407) % (1 << 61)
    return value % (1 << 31)


class StepBatches:
    """Batch sampler: batch s is a pure function of (seed, s, rank); yields [(index, item_seed), ...].

    Each epoch is a seeded permutation, sharded across ranks; a shard shorter than a batch is cycled.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int, world: int, start: int, total: int
    ) -> None:
        if n < 1:
            raise ValueError("empty training set")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start, self.total = rank, world, start, total
        self.per_epoch = max(1, math.ceil(n / world) // batch_size)

    def __len__(self) -> int:
        return self.total - self.start

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, offset = divmod(step, self.per_epoch)
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        perm = torch.randperm(self.n, generator=generator).tolist()
        shard = perm[self.rank :: self.world] or perm
        picks = [shard[(offset * self.batch_size + j) % len(shard)] for j in range(self.batch_size)]
        return [(i, _mix(self.seed, epoch, i)) for i in picks]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            yield self.batch(step)


def total_steps(n: int, cfg: TrainConfig, world: int = 1) -> int:
    """``cfg.steps``, or ``cfg.epochs`` passes over ``n`` cases (each rank sees its shard per epoch)."""
    if cfg.epochs is None:
        return cfg.steps
    return cfg.epochs * max(1, math.ceil(n / world) // cfg.batch_size)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to(v, device) for v in batch)
    return batch


@torch.no_grad()
def _ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    ema_params: list[torch.Tensor] = list(ema.parameters())
    params = [p.detach() for p in plain(net).parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), plain(net).buffers(), strict=True):
        b_ema.copy_(b)


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if mode == "min" else value > best


class TrainStep:
    """One optimiser step exactly as ``fit`` takes it: autocast forward, finite-loss check, (scaled) backward,
    gradient clipping, AdamW at the step's scheduled rate (of ``total`` steps; default ``cfg.steps``), EMA.
    Benchmarks time this same object."""

    def __init__(
        self,
        nets: dict[str, nn.Module],
        loss_fn: LossFn,
        cfg: TrainConfig,
        device: torch.device,
        trainable: Sequence[str],
        train_nets: dict[str, nn.Module] | None = None,
        ema: dict[str, nn.Module] | None = None,
        name: str = "",
        total: int | None = None,
    ) -> None:
        self.nets, self.train_nets, self.loss_fn, self.cfg = nets, train_nets or nets, loss_fn, cfg
        self.trainable, self.ema, self.name = list(trainable), ema or {}, name
        self.total = cfg.steps if total is None else total
        self.params = [p for n in trainable for p in nets[n].parameters()]
        # AdamW (paper: "the AdamW optimizer from PyTorch"), mixed precision on GPU only
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.device_type = device.type
        self.use_amp = device.type == "cuda" and cfg.amp != "none"
        self.amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and cfg.amp == "fp16")

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.use_amp)

    def __call__(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """Take the step that makes ``step`` (0-based) done; returns the stage's losses."""
        with self.autocast():
            losses = self.loss_fn(self.train_nets, batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{self.name}: loss became {loss.item()} at step {step + 1}; lower train.lr"
            )
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        set_lr(self.opt, step, self.total, self.cfg)
        self.scaler.step(self.opt)
        self.scaler.update()
        for name, ema_net in self.ema.items():
            _ema_update(ema_net, self.nets[name], self.cfg.ema_decay or 0.0)
        return losses


def train_loader(
    train_set: Dataset, cfg: TrainConfig, seed: int, start: int, total: int
) -> tuple[DataLoader, StepBatches]:
    """The engine's DataLoader over steps ``start``..``total`` (CPU data, pinned on CUDA) and its sampler."""
    dist = distributed.current()
    n_cases = len(train_set)  # type: ignore[arg-type]  # every FOSCU dataset is sized
    sampler = StepBatches(n_cases, cfg.batch_size, seed, dist.rank, dist.world_size, start, total)
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=dist.device.type == "cuda",
        persistent_workers=False,
    )
    return loader, sampler


class _Training:
    """One ``fit`` run, one method per part: set-up, resume, the step, validation (best weights, early
    stopping), checkpoint and the closing files."""

    def __init__(self, folder: Path, recipe: Recipe, cfg: TrainConfig, seed: int, resume: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.recipe, self.cfg, self.seed = folder, recipe, cfg, seed
        self.dist = distributed.current()
        self.started = time.perf_counter()
        if (folder / STATE).is_file() and not resume:
            raise InputError(
                folder, "an earlier run stopped here: pass --resume to continue it, or remove the folder"
            )
        if resume and not (folder / STATE).is_file():
            raise InputError(folder, f"nothing to resume: no {STATE} (train without --resume)")
        self._set_up_nets()
        self.total = total_steps(len(recipe.train_set), cfg, self.dist.world_size)  # type: ignore[arg-type]
        self.stepper = TrainStep(
            recipe.nets, recipe.loss_fn, cfg, self.dist.device, recipe.trainable,
            self.train_nets, self.ema, folder.name, self.total,
        )  # fmt: skip
        self.step, self.best_step = 0, 0
        self.best: float | None = None
        self.last_val: dict[str, float] = {}
        if resume:
            self._resume()
        self.log = MetricsLog(folder, resume_step=self.step, enabled=self.dist.is_main)
        self.loader, sampler = train_loader(recipe.train_set, cfg, seed, self.step, self.total)
        # early stopping counts epochs (passes over the training split, paper II-C), not validations, so a
        # larger training set (real + synthetic) gets as many epochs without improvement as the real one
        self.patience_steps = None if cfg.patience is None else cfg.patience * sampler.per_epoch
        self.loss_sums: dict[str, float] = {}  # summed over the steps since the last log
        self.loss_steps = 0
        self.stopped_early = False
        self.step_start, self.loop_started = self.step, time.perf_counter()

    def _set_up_nets(self) -> None:
        """Trainable networks to the device in train mode (DDP-wrapped under torchrun), the rest frozen;
        EMA copies of the trainable ones where configured."""
        nets, trainable, device = self.recipe.nets, self.recipe.trainable, self.dist.device
        for name, net in nets.items():
            net.to(device)
            net.train(name in trainable)
            net.requires_grad_(name in trainable)
        self.ema: dict[str, nn.Module] = {}
        if self.cfg.ema_decay:
            self.ema = {n: copy.deepcopy(nets[n]).eval().requires_grad_(False) for n in trainable}
        self.train_nets = dict(nets)
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            for name in trainable:
                self.train_nets[name] = DDP(nets[name], device_ids=ids)

    def _checkpoint_nets(self) -> dict[str, nn.Module]:
        return {**self.recipe.nets, **{f"ema_{n}": m for n, m in self.ema.items()}}

    def _resume(self) -> None:
        """Weights, EMA, optimiser and loss-scaler state, step and best score from the last checkpoint."""
        state = load_state(self.folder / STATE)
        load_weights(self.folder / str(state["checkpoint"]), self._checkpoint_nets())
        self.stepper.opt.load_state_dict(state["optimizer"])
        if "scaler" in state and self.stepper.scaler.is_enabled():
            self.stepper.scaler.load_state_dict(state["scaler"])
        self.step, self.best = int(state["step"]), state.get("best")
        self.best_step = int(state.get("best_step", self.step))
        if state.get("seed") != self.seed:
            raise InputError(
                self.folder / STATE, f"was trained with seed {state.get('seed')}, not {self.seed}"
            )

    def take_step(self, batch: Any) -> float:
        """One optimiser step; the global RNG is a function of (seed, step, rank), so resume is exact."""
        torch.manual_seed(_mix(self.seed, self.step, self.dist.rank, 7))
        losses = self.stepper(_to(batch, self.dist.device), self.step)
        self.step += 1
        for key, value in losses.items():
            self.loss_sums[key] = self.loss_sums.get(key, 0.0) + float(value.detach())
        self.loss_steps += 1
        return float(losses["loss"].detach())

    def deliverable(self) -> dict[str, nn.Module]:
        """The trainable networks as they are delivered: their EMA where there is one."""
        return {n: self.ema.get(n, plain(self.recipe.nets[n])) for n in self.recipe.trainable}

    def log_and_validate(self) -> None:
        """Log the mean losses and the validation; keep the best weights; stop after ``patience`` epochs
        without improvement."""
        means = {k: v / self.loss_steps for k, v in self.loss_sums.items()}
        self.loss_sums, self.loss_steps = {}, 0
        values = distributed.all_mean(means, self.dist.device)
        elapsed = time.perf_counter() - self.loop_started
        values["steps_per_s"] = (self.step - self.step_start) / max(elapsed, 1e-9)
        values["lr"] = self.stepper.opt.param_groups[0]["lr"]  # the last step's (engine/schedule.py)
        self.last_val = self._validate()
        values.update(self.last_val)
        self.log.log(self.step, values)
        monitor = self.recipe.monitor
        if monitor is None:
            return
        if monitor not in self.last_val:
            raise KeyError(f"validate() returned no {monitor!r}")
        if _better(self.last_val[monitor], self.best, self.recipe.mode):
            self.best, self.best_step = self.last_val[monitor], self.step
            if self.dist.is_main:
                meta = {**self.recipe.metadata, "step": self.step, monitor: self.best}
                save_weights(self.folder / MODEL, self.deliverable(), meta)
        elif self.patience_steps is not None and self.step - self.best_step >= self.patience_steps:
            self.stopped_early = True

    def _validate(self) -> dict[str, float]:
        if self.recipe.validate is None:
            return {}
        nets = self.recipe.nets
        eval_nets = {**{n: plain(m) for n, m in nets.items()}, **self.deliverable()}
        for net in eval_nets.values():
            net.eval()
        with torch.no_grad(), self.stepper.autocast():
            values = self.recipe.validate(eval_nets)
        for name in self.recipe.trainable:
            nets[name].train()
        return {k: float(v) for k, v in values.items()}

    def checkpoint(self) -> None:
        """Weights first under a new name, then the state naming them, then the old weights go: a kill at
        any point leaves a state whose checkpoint file is whole."""
        if self.dist.is_main:
            weights = CHECKPOINT.format(step=self.step)
            save_weights(self.folder / weights, self._checkpoint_nets(), self.recipe.metadata)
            state = {
                "step": self.step,
                "seed": self.seed,
                "best": self.best,
                "best_step": self.best_step,
                "checkpoint": weights,
                "optimizer": self.stepper.opt.state_dict(),
            }
            if self.stepper.scaler.is_enabled():
                state["scaler"] = self.stepper.scaler.state_dict()
            save_state(self.folder / STATE, state)
            for old in self.folder.glob(CHECKPOINTS):
                if old.name != weights:
                    old.unlink()
        distributed.barrier()

    def finish(self) -> FitResult:
        """The final weights unless validation kept the best ones, then metrics.json (written last)."""
        monitor = self.recipe.monitor
        if self.dist.is_main and (monitor is None or not (self.folder / MODEL).is_file()):
            save_weights(self.folder / MODEL, self.deliverable(), {**self.recipe.metadata, "step": self.step})
        self.log.close()
        seconds = time.perf_counter() - self.started
        best: dict[str, float] = {monitor: self.best} if monitor and self.best is not None else {}
        result = FitResult(self.step, seconds, best, self.last_val, self.stopped_early)
        if self.dist.is_main:
            rate = round((self.step - self.step_start) / max(seconds, 1e-9), 3)
            summary: dict[str, Any] = {"steps": self.step, "seconds": round(seconds, 2), "steps_per_s": rate}
            summary.update(best=best, last=self.last_val, stopped_early=self.stopped_early, monitor=monitor)
            summary["best_step"] = self.best_step if best else None  # the step model.safetensors is from
            write_json_atomic(self.folder / METRICS, summary)
        distributed.barrier()
        return result


def fit(
    folder: Path,
    recipe: Recipe,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    resume: bool = False,
    description: str = "",
    progress: bool = True,
) -> FitResult:
    """Train ``recipe.nets[recipe.trainable]`` for ``cfg.steps`` (or ``cfg.epochs``), resumably.

    Writes into ``folder``: checkpoint-<step>.safetensors + train_state.pt every ``cfg.checkpoint_every``
    steps, model.safetensors (the best weights by ``recipe.monitor`` if given, else the final; EMA where
    configured), metrics.jsonl and TensorBoard events every ``cfg.val_every`` steps, metrics.json at the end.
    ``recipe.metadata`` goes into the weight files.
    """
    run = _Training(Path(folder), recipe, cfg, seed, resume)
    show = progress and run.dist.is_main
    with progress_bar(description or run.folder.name, run.total, enabled=show) as advance:
        advance(run.step)
        for batch in run.loader:
            advance(1, loss=run.take_step(batch))
            last_step = run.step == run.total
            if run.step % cfg.val_every == 0 or last_step:
                run.log_and_validate()
            if run.step % cfg.checkpoint_every == 0 or last_step or run.stopped_early:
                run.checkpoint()
            if run.stopped_early:
                break
    return run.finish()
