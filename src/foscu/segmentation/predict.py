"""``foscu seg predict``: sliding-window inference (MONAI) with a trained segmentation run.

A run folder (``RUN/seg/<arch>-<task>-<data>/``) holds ``config.yaml`` (arch, task, ROI, spacing, the
segmentation section) and ``model.safetensors``: enough to rebuild the network alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foscu.errors import InputError
from foscu.labels import Task, labels_for_task
from foscu.runs import CONFIG, MODEL, RunFolder

if TYPE_CHECKING:
    import torch
    from torch import nn

    from foscu.config import SegmentationConfig

NET = "segmenter"  # the network's name inside model.safetensors
OVERLAP = 0.5


@dataclass
class SegRun:
    """What a trained segmentation run needs to predict: its network and the patch it was trained on."""

    folder: Path
    arch: str
    task: Task
    seg_cfg: SegmentationConfig
    roi: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def patch(self) -> list[int]:
        return list(self.seg_cfg.patch_size or self.roi)


def resolve_run(run: Path) -> Path:
    """A segmentation run folder, or a whole run with exactly one ``seg/*`` folder in it."""
    run = Path(run)
    if (run / CONFIG).is_file() and (run / MODEL).is_file():
        return run
    candidates = sorted(p.parent for p in RunFolder(run).seg("").glob(f"*/{MODEL}"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(run, f"not a trained segmentation run (no {MODEL} here nor in seg/*/)")
    names = ", ".join(str(c) for c in candidates)
    raise InputError(run, f"holds several segmentation runs; pass one of: {names}")


def read_run(folder: Path) -> SegRun:
    """Read a segmentation stage's config.yaml (the stage table's one reader)."""
    from foscu.config import SegmentationConfig
    from foscu.stages import read_stage_info

    path = Path(folder) / CONFIG
    raw = read_stage_info(Path(folder))  # refuses a folder without config.yaml, naming it
    try:
        return SegRun(
            folder=Path(folder),
            arch=raw["arch"],
            task=raw["task"],
            seg_cfg=SegmentationConfig.model_validate(raw.get("section", raw.get("segmentation"))),
            roi=tuple(int(r) for r in raw["roi"]),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in raw["spacing"]),  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"not a segmentation run config ({type(err).__name__}: {err})") from None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else the run's device (engine.distributed: this rank's GPU when there is one, else CPU)."""
    import torch

    if device is not None:
        return torch.device(device)
    from foscu.engine import distributed

    return distributed.current().device


def load_segmenter(run: SegRun, device: str | torch.device | None = None) -> nn.Module:
    """The run's network with its best weights, rebuilt by the stage table's one loader; eval mode, on
    ``device`` (default: the run's device)."""
    from foscu.stages import load_stage_folder

    nets, _, _ = load_stage_folder(run.folder)
    return nets[NET].to(resolve_device(device))


def sliding_window_logits(net: nn.Module, image: torch.Tensor, patch: list[int], sw_batch_size: int) -> Any:
    """(1, 1, X, Y, Z) image -> (1, C, X, Y, Z) logits, Gaussian-weighted windows overlapping by half."""
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(
        image, roi_size=patch, sw_batch_size=sw_batch_size, predictor=net, overlap=OVERLAP, mode="gaussian"
    )


def logits_to_labels(logits: torch.Tensor, task: Task) -> np.ndarray:
    """(1, C, X, Y, Z) logits -> (X, Y, Z) uint8 in the task's label map (sigmoid > 0.5 or argmax)."""
    values = np.array(sorted(labels_for_task(task).values()), dtype=np.uint8)
    if logits.shape[1] == 1:
        index = (logits[0, 0] > 0).long()  # sigmoid(x) > 0.5  <=>  x > 0
    else:
        index = logits[0].argmax(dim=0)
    return values[index.cpu().numpy()]


def predict_cases(
    run_folder: Path,
    images: dict[str, Path],
    out_dir: Path,
    overwrite: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Path]:
    """Predict each image into ``out_dir/<case>.nii.gz`` on the image's grid and affine (folder atomic).

    Images are min-max scaled to [0, 1] as ``foscu prepare`` scales them (a prepared image is unchanged).
    The network and each image run on ``device`` (default: the run's device, a GPU when there is one).
    """
    import torch

    from foscu.data.nifti import read_nifti, write_nifti
    from foscu.data.prepare import minmax
    from foscu.engine.tracking import progress_bar
    from foscu.runs import atomic_folder

    run = read_run(resolve_run(run_folder))
    device = resolve_device(device)
    net = load_segmenter(run, device)
    written: dict[str, Path] = {}
    with (
        atomic_folder(out_dir, overwrite=overwrite) as tmp,
        torch.no_grad(),
        progress_bar(f"predict {run.folder.name}", len(images), enabled=progress) as advance,
    ):
        for case_id, path in images.items():
            volume = read_nifti(path)
            scaled, _ = minmax(volume.array)
            image = torch.from_numpy(scaled)[None, None].to(device)  # (1, 1, X, Y, Z)
            logits = sliding_window_logits(net, image, run.patch, run.seg_cfg.sw_batch_size)
            write_nifti(
                tmp / f"{case_id}.nii.gz", logits_to_labels(logits, run.task), volume.affine, label=True
            )
            written[case_id] = Path(out_dir) / f"{case_id}.nii.gz"
            advance()
    return written


def predict_folder(
    run_folder: Path,
    images_dir: Path,
    out_dir: Path,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Path]:
    """``foscu seg predict``: every ``*_0000.nii.gz`` of ``images_dir`` -> ``out_dir/<case>.nii.gz``."""
    from foscu.data.layout import case_files

    images = case_files(images_dir, "images")
    return predict_cases(run_folder, images, out_dir, progress=progress, device=device)
