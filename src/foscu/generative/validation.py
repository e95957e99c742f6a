"""Validation of the latent diffusion stages: the denoising loss on held-out latents under fixed draws of noise
and timestep, and, for the ControlNet, the same loss under another case's mask (how much the mask matters).

Draw d of every case is the same at each validation (seeded by VAL_SEED + d and drawn in batches of BATCH,
as the loss draws them), so two validations differ only by the weights; ``val_draws`` averages d = 0 ... K-1
(draw 0 alone is what validation drew before ``val_draws``). The shuffled mask gives validation case i the
condition of case i - 1 (a cyclic shift: no case keeps its own; a lone validation case gets the first training
case's) with case i's noise and timestep, so

- ``val_mask_gap`` = ``val_loss_shuffled`` - ``val_loss``: how much the right mask lowers the loss; exactly 0
  for a ControlNet whose residuals ignore (or do not yet reach) the UNet;
- ``*_structures``: the same losses restricted to the latent cells that overlap portal vein, hepatic vein or
  tumor in the case's own label (where the mask carries what the image latent must show).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foscu.generative.autoencoders import STRUCTURES
from foscu.generative.diffusion import draw_noise, squared_error

VAL_SEED, BATCH = 1234, 4


def _fixed_draws(
    z: torch.Tensor, scheduler: Any, objective: str, draw: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(eps, t) of each batch of BATCH cases for draw number ``draw``; the global generator is left as found."""
    state = torch.random.get_rng_state()
    torch.manual_seed(VAL_SEED + draw)
    try:
        return [draw_noise(z[s : s + BATCH], scheduler, objective) for s in range(0, len(z), BATCH)]
    finally:
        torch.random.set_rng_state(state)


def _errors(
    nets: dict[str, nn.Module],
    z: torch.Tensor,
    draws: list[tuple[torch.Tensor, torch.Tensor]],
    condition: torch.Tensor | None,
    class_labels: torch.Tensor | None,
    **loss: Any,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(cases, (b, C, x, y, z) squared error) per batch under one draw and one condition."""
    for batch, (eps, t) in enumerate(draws):
        cases = slice(batch * BATCH, batch * BATCH + len(eps))
        yield (
            cases,
            squared_error(
                nets,
                z[cases],
                eps,
                t,
                condition=None if condition is None else condition[cases],
                class_labels=None if class_labels is None else class_labels[cases],
                **loss,
            ),
        )


class _Mean:
    """Running means of the squared error over all cells and over the cells of a mask (pooled over cases)."""

    def __init__(self) -> None:
        self.total, self.count, self.masked, self.cells = 0.0, 0, 0.0, 0.0

    def add(self, error: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.total += float(error.mean()) * len(error)  # per-batch means weighted by size: as before
        self.count += len(error)
        if mask is not None:
            self.masked += float((error * mask).sum())
            self.cells += float(mask.sum()) * error.shape[1]

    def mean(self) -> float:
        return self.total / max(self.count, 1)

    def masked_mean(self) -> float:
        return self.masked / self.cells if self.cells else float("nan")


@torch.no_grad()
def validation_loss(
    nets: dict[str, nn.Module],
    z: torch.Tensor,
    *,
    scheduler: Any,
    objective: str,
    draws: int = 1,
    condition: torch.Tensor | None = None,
    class_labels: torch.Tensor | None = None,
) -> float:
    """The denoising loss on scaled held-out latents ``z`` (N, C, x, y, z), averaged over ``draws`` fixed draws."""
    score = _Mean()
    for d in range(draws):
        pairs = _fixed_draws(z, scheduler, objective, d)
        loss = {"scheduler": scheduler, "objective": objective}
        for _, error in _errors(nets, z, pairs, condition, class_labels, **loss):
            score.add(error)
    return score.mean()


def structure_cells(labels: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """(N, X, Y, Z) labels -> (N, 1, x, y, z) 1.0 where a latent cell overlaps a vessel or tumor voxel."""
    structures = torch.isin(labels.long(), torch.tensor(STRUCTURES, device=labels.device))
    return F.adaptive_max_pool3d(structures.float()[:, None], latent_shape)


@torch.no_grad()
def mask_scores(
    nets: dict[str, nn.Module],
    z: torch.Tensor,
    condition: torch.Tensor,
    cells: torch.Tensor,
    *,
    scheduler: Any,
    objective: str,
    draws: int = 1,
    shuffled: torch.Tensor | None = None,
) -> dict[str, float]:
    """``val_loss`` under each case's own condition and ``val_loss_shuffled`` under another case's (the
    previous one's; ``shuffled`` for one case, else only the true-mask scores), their gap, and the three
    again in the structure ``cells`` (N, 1, x, y, z)."""
    if len(z) > 1:
        shuffled = condition.roll(1, dims=0)
    true_mask, other_mask = _Mean(), _Mean()
    loss = {"scheduler": scheduler, "objective": objective}
    for d in range(draws):
        pairs = _fixed_draws(z, scheduler, objective, d)
        for cases, error in _errors(nets, z, pairs, condition, None, **loss):
            true_mask.add(error, cells[cases])
        if shuffled is not None:
            for cases, error in _errors(nets, z, pairs, shuffled, None, **loss):
                other_mask.add(error, cells[cases])
    scores = {"val_loss": true_mask.mean(), "val_loss_structures": true_mask.masked_mean()}
    if shuffled is None:
        return scores
    scores["val_loss_shuffled"] = other_mask.mean()
    scores["val_loss_shuffled_structures"] = other_mask.masked_mean()
    scores["val_mask_gap"] = scores["val_loss_shuffled"] - scores["val_loss"]
    scores["val_mask_gap_structures"] = scores["val_loss_shuffled_structures"] - scores["val_loss_structures"]
    return scores


class LatentValidation:
    """An LDM's validation: ``val_loss`` on the scaled validation latents, ``draws`` fixed draws per case;
    ``class_labels`` (N,) for a class-conditioned UNet (the label LDM's tumor presence)."""

    def __init__(
        self,
        mean: torch.Tensor | None,
        scale: float,
        scheduler: Any,
        objective: str,
        device: torch.device,
        draws: int = 1,
        class_labels: torch.Tensor | None = None,
    ) -> None:
        self.mean, self.scale, self.scheduler, self.objective = mean, scale, scheduler, objective
        self.device, self.draws, self.class_labels = device, draws, class_labels

    def latents(self) -> torch.Tensor | None:
        """The scaled validation latents on the device; None when the split is empty."""
        if self.mean is None or len(self.mean) == 0:
            return None
        return (self.mean * self.scale).to(self.device)

    def __call__(self, nets: dict[str, nn.Module]) -> dict[str, float]:
        z = self.latents()
        if z is None:
            return {}
        classes = None if self.class_labels is None else self.class_labels.to(self.device)
        loss = validation_loss(
            nets,
            z,
            scheduler=self.scheduler,
            objective=self.objective,
            draws=self.draws,
            class_labels=classes,
        )
        return {"val_loss": loss}


class ControlNetValidation:
    """The ControlNet's validation: ``mask_scores`` on the validation latents and their own labels'
    condition (``make_batch`` builds it from ``extras``: the labels, and the label latents if used);
    ``spare``: one training case's extras, the other mask of a lone validation case."""

    def __init__(
        self,
        latent: LatentValidation,
        make_batch: Any,
        extras: dict[str, torch.Tensor],
        spare: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.latent, self.make_batch, self.extras, self.spare = latent, make_batch, extras, spare

    def __call__(self, nets: dict[str, nn.Module]) -> dict[str, float]:
        z = self.latent.latents()
        if z is None:
            return {}
        batch = self.make_batch({k: v.to(z.device) for k, v in self.extras.items()})
        cells = structure_cells(batch["labels"], tuple(z.shape[2:]))
        shuffled = None
        if len(z) == 1 and self.spare is not None:
            shuffled = self.make_batch({k: v.to(z.device) for k, v in self.spare.items()})["condition"]
        return mask_scores(
            nets,
            z,
            batch["condition"],
            cells,
            scheduler=self.latent.scheduler,
            objective=self.latent.objective,
            draws=self.latent.draws,
            shuffled=shuffled,
        )
