"""The class-masked segmentation loss: Dice + cross-entropy where each case supervises only some classes.

Table II's ``class-masked`` protocol (foscu/protocols.py): a synthetic pair whose image does not show a
structure its label holds (a vessel drawn in the label, parenchyma in the image) must not teach the network
that the structure is absent there. So for such a case the masked-out classes are *unknown*, not background:

1. the masked classes' logits are taken out of the softmax (filled with a very negative number), so the case
   sends no gradient to those channels and is scored as if the network had only the classes it supervises;
2. voxels the label gives to a masked class are left out of the cross-entropy and of every Dice sum;
3. Dice (MONAI's soft Dice, smooth 1e-5, background left out for multi-class) runs over the supervised
   (case, class) entries only — pooled over the batch per class with ``batch=True``.

With every class supervised it equals MONAI's ``DiceCELoss`` (softmax, to_onehot_y, include_background
False; or sigmoid for liver-only) — tests/segmentation/test_protocol_loss.py checks it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from foscu.labels import Task

SMOOTH = 1e-5  # MONAI DiceLoss's smooth_nr and smooth_dr
OUT = -1e4  # the logit a masked class gets: exp underflows to 0 in float32 and bfloat16


def _dice(p: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, batch: bool):
    """Mean soft-Dice loss over supervised entries; p, target (B, C, N), valid (B, 1, N), mask (B, C)."""
    inter = (p * target * valid).sum(-1)  # (B, C)
    denom = ((p + target) * valid).sum(-1)
    if batch:  # pooled over the cases that supervise the class
        inter, denom, mask = (inter * mask).sum(0), (denom * mask).sum(0), (mask.sum(0) > 0).float()
    loss = 1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)
    n = mask.sum()
    return (loss * mask).sum() / n if n > 0 else loss.sum() * 0.0


class MaskedDiceCELoss:
    """Dice + CE (multi-class, softmax) or Dice + BCE (liver-only, sigmoid) with a per-case class mask.

    Args:
        task: "multiclass" (C softmax channels, background first) or "binary" (one sigmoid channel).
        batch: Dice pooled over the batch per class (MONAI ``DiceLoss(batch=True)``).
    """

    def __init__(self, task: Task, batch: bool = False) -> None:
        self.task, self.batch = task, batch

    def __call__(self, logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, C, X, Y, Z), ``label`` (B, 1, X, Y, Z) class indices, ``mask`` (B, C) with 1 where
        the case supervises the class (background always 1 for multi-class)."""
        b, c = logits.shape[:2]
        logits, label = logits.float().reshape(b, c, -1), label.reshape(b, 1, -1).long()  # (B, C, N)
        mask = mask.float().to(logits.device)
        if self.task == "binary":
            valid = mask[:, :, None].expand_as(logits)  # (B, 1, N): the whole case or nothing
            target = label.float()
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
            n = valid.sum()
            ce = (bce * valid).sum() / n if n > 0 else bce.sum() * 0.0
            return _dice(torch.sigmoid(logits), target, valid, mask, self.batch) + ce
        keep = mask[:, :, None] > 0  # (B, C, 1)
        log_p = torch.log_softmax(logits.masked_fill(~keep, OUT), dim=1)  # masked channels: no gradient
        valid = mask.gather(1, label[:, 0]).unsqueeze(1)  # (B, 1, N): the voxel's class is supervised
        picked = log_p.gather(1, label)  # (B, 1, N)
        n = valid.sum()
        ce = -(torch.where(valid > 0, picked, 0.0)).sum() / n if n > 0 else picked.sum() * 0.0
        target = torch.zeros_like(log_p).scatter_(1, label, 1.0)  # (B, C, N) one-hot
        dice = _dice(log_p.exp()[:, 1:], target[:, 1:], valid, mask[:, 1:], self.batch)
        return dice + ce


class MaskedCases(Dataset):
    """A training dataset whose items also carry ``class_mask`` (C,): the classes each case supervises."""

    def __init__(self, cases: Dataset, masks: list[list[float]]) -> None:
        if len(masks) != len(cases):  # type: ignore[arg-type]  # every FOSCU dataset is sized
            raise ValueError(f"{len(masks)} class masks for {len(cases)} cases")  # type: ignore[arg-type]
        self.cases, self.masks = cases, [torch.tensor(m, dtype=torch.float32) for m in masks]

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key[0] if isinstance(key, tuple) else key
        return {**self.cases[key], "class_mask": self.masks[index]}
