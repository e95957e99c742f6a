"""Per-structure scores of image reconstructions that need no segmenter: how much of each structure's
contrast a reconstruction keeps, and its error inside the structure.

A mean L1 over the volume cannot see a vessel vanish: veins are ~0.4 % of the voxels, so blurring them away
costs little (issue 16 measured a wider network with the better L1 and the worse vessel contrast). For each
structure S of the label the contrast is

    c(x) = mean of x over the surround of S  -  mean of x over S,

the surround being the voxels within 2 voxels (a 5 x 5 x 5 cube) of S that belong to the liver parenchyma;
for the liver itself, the background voxels within 2 voxels of the organ (liver + vessels + tumor). The
contrast kept is sum_cases c(reconstruction) / sum_cases c(real) over the cases where S and its surround
are both present: 1 is the real contrast, 0 a structure blurred into its surround, a negative value an
inverted one. The mean absolute error inside S is pooled over its voxels of all cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from foscu.labels import BACKGROUND, LIVER

STRUCTURES = ("liver", "portal_vein", "hepatic_vein", "tumor")
SHELL = 2  # voxels: the surround's width


def dilate(mask: torch.Tensor, voxels: int = SHELL) -> torch.Tensor:
    """(X, Y, Z) bool -> the voxels within ``voxels`` (Chebyshev distance) of ``mask``, bool."""
    pooled = F.max_pool3d(mask[None, None].float(), 2 * voxels + 1, stride=1, padding=voxels)
    return pooled[0, 0] > 0


def structure_and_surround(label: torch.Tensor, name: str, value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The voxels of structure ``name`` (label ``value``) in one (X, Y, Z) label, and its surround."""
    if name == "liver":
        return label == value, dilate(label != BACKGROUND) & (label == BACKGROUND)
    mask = label == value
    return mask, dilate(mask) & (label == LIVER)


class StructureScores:
    """Accumulates cases, then ``result()``: ``val_contrast_<structure>`` and ``val_l1_<structure>``.

    Args:
        labels: the prepared set's label map (name -> value); structures it lacks are not scored.
    """

    def __init__(self, labels: dict[str, int]) -> None:
        self.structures = {s: labels[s] for s in STRUCTURES if s in labels}
        self.contrast = {s: [0.0, 0.0] for s in self.structures}  # sum of real, sum of reconstructed
        self.error = {s: [0.0, 0] for s in self.structures}  # sum of |error|, voxels

    def add(self, real: torch.Tensor, recon: torch.Tensor, label: torch.Tensor) -> None:
        """One batch: images (B, 1, X, Y, Z) or (B, X, Y, Z), labels (B, X, Y, Z)."""
        real, recon = real.reshape(label.shape).float(), recon.reshape(label.shape).float()
        for x, x_hat, lab in zip(real, recon, label, strict=True):
            for name, value in self.structures.items():
                inside, surround = structure_and_surround(lab, name, value)
                if not inside.any():
                    continue
                self.error[name][0] += float((x_hat[inside] - x[inside]).abs().sum())
                self.error[name][1] += int(inside.sum())
                if surround.any():
                    self.contrast[name][0] += float(x[surround].mean() - x[inside].mean())
                    self.contrast[name][1] += float(x_hat[surround].mean() - x_hat[inside].mean())

    def result(self) -> dict[str, float]:
        """The contrast kept and the error inside each structure seen; a structure no case held is left out."""
        out: dict[str, float] = {}
        for name in self.structures:
            real, recon = self.contrast[name]
            if real != 0.0:
                out[f"val_contrast_{name}"] = recon / real
            total, voxels = self.error[name]
            if voxels:
                out[f"val_l1_{name}"] = total / voxels
        return out


def structure_scores(
    real: torch.Tensor, recon: torch.Tensor, label: torch.Tensor, labels: dict[str, int]
) -> dict[str, float]:
    """``StructureScores`` of one batch of cases."""
    scores = StructureScores(labels)
    scores.add(real, recon, label)
    return scores.result()
