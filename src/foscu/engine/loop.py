"""THE training loop: every stage (autoencoders, diffusion, ControlNet, segmentation) trains through ``fit``.

A stage supplies its networks, a pure ``loss_fn(nets, batch) -> {"loss": ..., ...}``, a dataset and
optionally a ``validate(nets) -> {name: value}``. The loop owns AdamW, autocast, gradient clipping, EMA,
DDP, checkpoints (safetensors + weights_only state), exact resume, metrics.jsonl/TensorBoard, the progress
bar and early stopping (``train.patience`` epochs without improvement of ``monitor``). ``TrainStep`` is the
one optimiser step, which the benchmarks time too.

Exact resume: the batch at step s is a pure function of (seed, s) — the epoch permutation is seeded by the
epoch, and each item receives an ``item_seed`` for its augmentation — and the global RNG is reseeded at every
step, so a run killed at step k and resumed from its checkpoint ends with the same weights as one never
interrupted (given the same checkpoint step).
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
from foscu.engine.tracking import MetricsLog, progress_bar
from foscu.errors import InputError
from foscu.runs import write_json_atomic

LossFn = Callable[[dict[str, nn.Module], dict[str, Any]], dict[str, torch.Tensor]]
ValidateFn = Callable[[dict[str, nn.Module]], dict[str, float]]

CHECKPOINT = "checkpoint-{step:07d}.safetensors"  # the state file names the one it belongs to
STATE = "train_state.pt"
MODEL = "model.safetensors"


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
        shard = math.ceil(n / world)
        self.per_epoch = max(1, shard // batch_size)

    def __len__(self) -> int:
        return self.total - self.start

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, offset = divmod(step, self.per_epoch)
        perm = torch.randperm(
            self.n, generator=torch.Generator().manual_seed(_mix(self.seed, epoch))
        ).tolist()
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
    gradient clipping, AdamW, the adversary's step, EMA. Benchmarks time this same object."""

    def __init__(
        self,
        nets: dict[str, nn.Module],
        loss_fn: LossFn,
        cfg: TrainConfig,
        device: torch.device,
        trainable: Sequence[str],
        adversary: Sequence[str] = (),
        train_nets: dict[str, nn.Module] | None = None,
        ema: dict[str, nn.Module] | None = None,
        name: str = "",
    ) -> None:
        self.nets, self.train_nets, self.loss_fn, self.cfg = nets, train_nets or nets, loss_fn, cfg
        self.trainable, self.ema, self.name = list(trainable), ema or {}, name
        self.params = [p for n in trainable for p in nets[n].parameters()]
        # AdamW (paper: "the AdamW optimizer from PyTorch"), mixed precision on GPU only
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.opt_adv = (
            torch.optim.AdamW(
                [p for n in adversary for p in nets[n].parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay
            )
            if adversary
            else None
        )
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
        self.scaler.step(self.opt)
        if self.opt_adv is not None and "adversary_loss" in losses:
            self.opt_adv.zero_grad(set_to_none=True)
            self.scaler.scale(losses["adversary_loss"]).backward()
            self.scaler.step(self.opt_adv)
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


def fit(
    folder: Path,
    nets: dict[str, nn.Module],
    loss_fn: LossFn,
    train_set: Dataset,
    cfg: TrainConfig,
    *,
    trainable: Sequence[str],
    adversary: Sequence[str] = (),
    validate: ValidateFn | None = None,
    monitor: str | None = None,
    mode: Literal["min", "max"] = "min",
    seed: int = 0,
    resume: bool = False,
    description: str = "",
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``nets[trainable]`` (and ``nets[adversary]`` on ``loss["adversary_loss"]``) for ``cfg.steps``.

    Writes into ``folder``: checkpoint.safetensors + train_state.pt every ``cfg.checkpoint_every`` steps,
    model.safetensors (the best weights by ``monitor`` if given, else the final — EMA where configured),
    metrics.jsonl, TensorBoard events and metrics.json at the end. ``metadata`` goes into the weight files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dist = distributed.current()
    device = dist.device
    start_time = time.perf_counter()
    if (folder / STATE).is_file() and not resume:
        raise InputError(
            folder, "an earlier run stopped here: pass --resume to continue it, or remove the folder"
        )
    if resume and not (folder / STATE).is_file():
        raise InputError(folder, f"nothing to resume: no {STATE} (train without --resume)")

    # 1. networks: trainable ones in train mode (DDP-wrapped under torchrun), the rest frozen
    for name, net in nets.items():
        net.to(device)
        learn = name in trainable or name in adversary
        net.train(learn)
        net.requires_grad_(learn)
    ema = {n: copy.deepcopy(nets[n]).eval().requires_grad_(False) for n in trainable} if cfg.ema_decay else {}
    train_nets = dict(nets)
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        for name in (*trainable, *adversary):
            train_nets[name] = DDP(nets[name], device_ids=ids)

    # 2. the step: AdamW, autocast, clipping, adversary, EMA
    take_step = TrainStep(nets, loss_fn, cfg, device, trainable, adversary, train_nets, ema, folder.name)
    opt, opt_adv, scaler = take_step.opt, take_step.opt_adv, take_step.scaler

    # 3. resume: weights, EMA, optimisers, step, best score
    step, best, best_step, last_val = 0, None, 0, {}
    if resume:
        state = load_state(folder / STATE)
        load_weights(folder / str(state["checkpoint"]), {**nets, **{f"ema_{n}": m for n, m in ema.items()}})
        opt.load_state_dict(state["optimizer"])
        if opt_adv is not None and "adversary_optimizer" in state:
            opt_adv.load_state_dict(state["adversary_optimizer"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        step, best = int(state["step"]), state.get("best")
        best_step = int(state.get("best_step", step))
        if state.get("seed") != seed:
            raise InputError(folder / STATE, f"was trained with seed {state.get('seed')}, not {seed}")
    log = MetricsLog(folder, resume_step=step, enabled=dist.is_main)

    def deliverable() -> dict[str, nn.Module]:
        return {n: ema.get(n, plain(nets[n])) for n in trainable}

    def checkpoint() -> None:
        if dist.is_main:
            # weights first under a new name, then the state naming them, then the old weights go:
            # a kill at any point leaves a state whose checkpoint file is whole
            weights = CHECKPOINT.format(step=step)
            save_weights(folder / weights, {**nets, **{f"ema_{n}": m for n, m in ema.items()}}, metadata)
            state = {
                "step": step,
                "seed": seed,
                "best": best,
                "best_step": best_step,
                "checkpoint": weights,
                "optimizer": opt.state_dict(),
            }
            if opt_adv is not None:
                state["adversary_optimizer"] = opt_adv.state_dict()
            if scaler.is_enabled():
                state["scaler"] = scaler.state_dict()
            save_state(folder / STATE, state)
            for old in folder.glob("checkpoint-*.safetensors"):
                if old.name != weights:
                    old.unlink()
        distributed.barrier()

    def run_validation() -> dict[str, float]:
        if validate is None:
            return {}
        eval_nets = {**{n: plain(m) for n, m in nets.items()}, **deliverable()}
        for net in eval_nets.values():
            net.eval()
        with torch.no_grad(), take_step.autocast():
            values = validate(eval_nets)
        for name in (*trainable, *adversary):
            nets[name].train()
        return {k: float(v) for k, v in values.items()}

    n_cases = len(train_set)  # type: ignore[arg-type]  # every FOSCU dataset is sized
    total = total_steps(n_cases, cfg, dist.world_size)
    loader, sampler = train_loader(train_set, cfg, seed, step, total)
    # early stopping counts epochs (passes over the training split, paper II-C), not validations, so a
    # larger training set (real + synthetic) gets as many epochs without improvement as the real one
    patience_steps = None if cfg.patience is None else cfg.patience * sampler.per_epoch
    running: dict[str, float] = {}
    stopped_early = False
    step_start, t0 = step, time.perf_counter()
    with progress_bar(description or folder.name, total, enabled=progress and dist.is_main) as advance:
        advance(step)
        for batch in loader:
            # 4. one step: the RNG is a function of (seed, step, rank), so resume is exact
            torch.manual_seed(_mix(seed, step, dist.rank, 7))
            losses = take_step(_to(batch, device), step)
            loss = losses["loss"]
            step += 1
            for key, value in losses.items():
                running[key] = running.get(key, 0.0) + float(value.detach())
            running["_n"] = running.get("_n", 0.0) + 1
            advance(1, loss=float(loss.detach()))

            # 5. log, validate, keep the best, stop early, checkpoint
            last_step = step == total
            if step % cfg.val_every == 0 or last_step:
                n = running.pop("_n")
                values = distributed.all_mean({k: v / n for k, v in running.items()}, device)
                running = {}
                elapsed = time.perf_counter() - t0
                values["steps_per_s"] = (step - step_start) / max(elapsed, 1e-9)
                last_val = run_validation()
                values.update(last_val)
                log.log(step, values)
                if monitor is not None:
                    if monitor not in last_val:
                        raise KeyError(f"validate() returned no {monitor!r}")
                    if _better(last_val[monitor], best, mode):
                        best, best_step = last_val[monitor], step
                        if dist.is_main:
                            save_weights(
                                folder / MODEL,
                                deliverable(),
                                {**(metadata or {}), "step": step, monitor: best},
                            )
                    elif patience_steps is not None and step - best_step >= patience_steps:
                        stopped_early = True
            if step % cfg.checkpoint_every == 0 or last_step or stopped_early:
                checkpoint()
            if stopped_early:
                break

    if dist.is_main and (monitor is None or not (folder / MODEL).is_file()):
        save_weights(folder / MODEL, deliverable(), {**(metadata or {}), "step": step})
    log.close()
    seconds = time.perf_counter() - start_time
    result = FitResult(
        step, seconds, {monitor: best} if monitor and best is not None else {}, last_val, stopped_early
    )
    if dist.is_main:
        write_json_atomic(
            folder / "metrics.json",
            {
                "steps": step,
                "seconds": round(seconds, 2),
                "steps_per_s": round((step - step_start) / max(seconds, 1e-9), 3),
                "best": result.best,
                "last": last_val,
                "stopped_early": stopped_early,
                "monitor": monitor,
            },
        )
    distributed.barrier()
    return result
