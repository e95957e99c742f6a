"""MONAI transform chains for segmentation (dictionary transforms on ``image`` / ``label``), and the
seeded dataset the training engine draws from.

Augmentation (paper II-C "MONAI augmentation"): random flips on each axis, a small random affine
(about +-6 degrees, +-10 % scale, labels nearest-neighbour), random intensity scale and shift of +-10 %.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial
from typing import Any

from torch.utils.data import Dataset

from foscu.labels import Task, liver_only

KEYS = ("image", "label")
ROTATE_RAD = 0.1  # ~6 degrees
SCALE = 0.1
INTENSITY = 0.1


def label_to_task(label: Any, task: Task) -> Any:
    """A (1, X, Y, Z) label tensor in the task's label map: liver-only for "binary", else unchanged."""
    return liver_only(label) if task == "binary" else label


def read_case(item: dict[str, Any]) -> dict[str, Any]:
    """Read ``image``/``label`` paths through FOSCU's one NIfTI reader (checked), as (1, X, Y, Z) arrays."""
    import torch

    from foscu.data.nifti import read_nifti

    out = dict(item)
    out["image"] = torch.from_numpy(read_nifti(item["image"]).array[None])
    if "label" in item:
        out["label"] = torch.from_numpy(read_nifti(item["label"], label=True).array[None])
    return out


def _load(task: Task) -> list:
    # FOSCU's own reader, not MONAI's LoadImaged: one NIfTI reader with its checks, and no warning from
    # MONAI registering every optional reader (nvImageCodec) on each construction.
    from monai.transforms import Lambda, Lambdad

    return [
        Lambda(func=read_case),  # (1, X, Y, Z)
        Lambdad(keys="label", func=partial(label_to_task, task=task)),
    ]


def _finish() -> list:
    import torch
    from monai.transforms import EnsureTyped

    return [EnsureTyped(keys=KEYS, dtype=torch.float32, track_meta=False)]


def _foreground_crop_class():  # -> the transform class (MONAI imported only when a chain is built)
    from monai.transforms import MapTransform, RandCropByLabelClassesd, Randomizable, RandSpatialCropd

    class ForegroundOversampledCropd(Randomizable, MapTransform):
        """A patch centred on foreground with probability ``prob`` (class drawn uniformly among the classes
        the case holds, MONAI's RandCropByLabelClassesd), else a uniformly random patch (nnU-Net's scheme)."""

        def __init__(self, patch: Sequence[int], prob: float, num_classes: int) -> None:
            MapTransform.__init__(self, KEYS)
            self.prob = prob
            ratios = [0.0] + [1.0] * (num_classes - 1)  # never centre the "foreground" patch on background
            self.foreground = RandCropByLabelClassesd(
                keys=KEYS,
                label_key="label",
                spatial_size=list(patch),
                ratios=ratios,
                num_classes=num_classes,
                num_samples=1,
                warn=False,
            )
            self.uniform = RandSpatialCropd(keys=KEYS, roi_size=list(patch), random_size=False)
            self._centre_on_foreground = False

        def set_random_state(self, seed: int | None = None, state: Any = None) -> ForegroundOversampledCropd:
            # Each inner crop gets its own seed, drawn from this one's stream: with one shared seed the
            # yes/no draw below was also the class draw, so u < prob only ever picked the first classes.
            super().set_random_state(seed, state)
            for crop in (self.foreground, self.uniform):
                crop.set_random_state(seed=int(self.R.randint(2**31)))
            return self

        def randomize(self, data: Any = None) -> None:
            self._centre_on_foreground = bool(self.R.rand() < self.prob)

        def __call__(self, data: Any) -> Any:
            self.randomize()
            if self._centre_on_foreground and bool((data["label"] > 0).any()):
                return self.foreground(data)[0]
            return self.uniform(data)

    return ForegroundOversampledCropd


def train_transforms(
    task: Task, patch_size: Sequence[int] | None = None, foreground_oversample: float = 0.0
):  # -> monai Compose
    """Load, map labels to the task, (pad +) patch crop (``foreground_oversample`` of them centred on
    foreground), flips, small affine, intensity jitter."""
    from monai.transforms import (
        Compose,
        RandAffined,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    from foscu.labels import labels_for_task

    chain = _load(task)
    if patch_size is not None:
        crop = _foreground_crop_class()(patch_size, foreground_oversample, len(labels_for_task(task)))
        chain += [SpatialPadd(keys=KEYS, spatial_size=list(patch_size)), crop]
    chain += [RandFlipd(keys=KEYS, prob=0.5, spatial_axis=axis) for axis in range(3)]
    chain += [
        RandAffined(
            keys=KEYS,
            prob=0.2,
            rotate_range=(ROTATE_RAD,) * 3,
            scale_range=(SCALE,) * 3,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandScaleIntensityd(keys="image", factors=INTENSITY, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=INTENSITY, prob=0.5),
    ]
    return Compose(chain + _finish())


def eval_transforms(task: Task):  # -> monai Compose
    """Load and map labels to the task; nothing random."""
    from monai.transforms import Compose

    return Compose(_load(task) + _finish())


class SeededDataset(Dataset):
    """Items of a MONAI datalist through a transform chain, random draws seeded per item.

    The engine asks for ``(index, item_seed)``: the chain's random state is set from ``item_seed`` before
    the item is transformed, so a resumed run repeats exactly the augmentation of an uninterrupted one.
    A plain integer index runs the chain with its current random state.
    """

    def __init__(self, items: list[dict[str, str]], transform: Any) -> None:
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        from monai.transforms import apply_transform

        if isinstance(key, tuple):
            index, item_seed = key
            self.transform.set_random_state(seed=int(item_seed) % (2**32))
        else:
            index = key
        item = {k: self.items[index][k] for k in KEYS}
        return apply_transform(self.transform, copy.deepcopy(item))  # type: ignore[return-value]
