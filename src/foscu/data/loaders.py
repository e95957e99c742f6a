"""Prepared set -> in-memory tensors and the datasets the engine trains on.

Every dataset takes ``(index, item_seed)`` keys (see engine/loop.py): whatever is random in an item is drawn
from ``item_seed``, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from foscu.data.nifti import read_nifti
from foscu.data.prepare import PreparedSet


@dataclass
class SplitVolumes:
    """One split of a prepared set in memory: images (N, 1, X, Y, Z) float32 in [0, 1], labels (N, X, Y, Z)."""

    case_ids: list[str]
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.case_ids)


def load_split(prepared: PreparedSet, split: str) -> SplitVolumes:
    """Read every case of ``split`` (training, validation or test) through the one NIfTI reader."""
    entries = prepared.datalist.get(split, [])
    images = [read_nifti(e["image"]).array for e in entries]
    labels = [read_nifti(e["label"], label=True).array for e in entries]
    if not entries:
        shape = tuple(prepared.roi)
        return SplitVolumes([], torch.zeros((0, 1, *shape)), torch.zeros((0, *shape), dtype=torch.uint8))
    return SplitVolumes(
        [e["case_id"] for e in entries],
        torch.from_numpy(np.stack(images)[:, None].astype(np.float32)),
        torch.from_numpy(np.stack(labels).astype(np.uint8)),
    )


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, X, Y, Z) integer labels -> (N, C, X, Y, Z) float one-hot, through a bool mask (F.one_hot would
    first build an int64 tensor twice the size of the float32 result)."""
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"label value {int(labels.max())} >= {num_classes} classes")
    classes = torch.arange(num_classes, device=labels.device).to(labels.dtype)
    return (labels[:, None] == classes.view(1, -1, *[1] * (labels.dim() - 1))).float()


class VolumeSet(Dataset):
    """Prepared volumes for the autoencoders: ``image`` (1, X, Y, Z) and ``label_onehot`` (C, X, Y, Z).

    With ``patch``, each item is a random crop of that size, its corner drawn from the item seed.
    """

    def __init__(self, volumes: SplitVolumes, num_classes: int, patch: list[int] | None = None) -> None:
        self.volumes, self.num_classes, self.patch = volumes, num_classes, patch

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, item_seed = key
        image, label = self.volumes.images[index], self.volumes.labels[index]
        if self.patch is not None:
            generator = torch.Generator().manual_seed(item_seed)
            shape = label.shape
            corner = [
                int(torch.randint(0, s - p + 1, (1,), generator=generator))
                for s, p in zip(shape, self.patch, strict=False)
            ]
            window = tuple(slice(c, c + p) for c, p in zip(corner, self.patch, strict=True))
            image, label = image[(slice(None), *window)], label[window]
        return {"image": image, "label_onehot": one_hot(label[None], self.num_classes)[0]}


class LatentSet(Dataset):
    """Cached latents: ``latent`` = scale * (mean + sigma * eps), eps drawn from the item seed.

    Resampling z every step is exactly the objective of re-encoding every batch through the frozen VAE,
    without paying for the encoder. ``extras`` are per-case tensors passed through (e.g. the condition).
    Everything lives on the CPU: the engine's DataLoader pins it on CUDA and moves each batch to the device.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        sigma: torch.Tensor,
        scale: float,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.mean, self.sigma, self.scale = mean, sigma, scale
        self.extras = extras or {}
        for name, tensor in {"mean": mean, "sigma": sigma, **self.extras}.items():
            if tensor.device.type != "cpu":  # torch pins only CPU tensors, and fit pins on CUDA
                raise ValueError(f"LatentSet keeps its cache on the CPU ({name} is on {tensor.device})")

    def __len__(self) -> int:
        return len(self.mean)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, item_seed = key
        generator = torch.Generator().manual_seed(item_seed)
        eps = torch.randn(self.mean[index].shape, generator=generator)
        item = {"latent": self.scale * (self.mean[index] + self.sigma[index] * eps)}
        item.update({k: v[index] for k, v in self.extras.items()})
        return item
