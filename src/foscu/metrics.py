"""Public metrics for notebooks: ``dice``, ``hd95``, ``frechet_distance``.

A facade over ``foscu.evaluation``: importing this module stays cheap (no torch, no MONAI until called).
"""

from __future__ import annotations

from typing import Any


def dice(*args: Any, **kwargs: Any) -> Any:
    """Per-class Dice with nnU-Net's empty-class convention; see ``foscu.evaluation.segmentation_metrics.dice``."""
    from foscu.evaluation.segmentation_metrics import dice as _dice

    return _dice(*args, **kwargs)


def hd95(*args: Any, **kwargs: Any) -> Any:
    """Per-class 95th-percentile Hausdorff distance in mm; see ``foscu.evaluation.segmentation_metrics.hd95``."""
    from foscu.evaluation.segmentation_metrics import hd95 as _hd95

    return _hd95(*args, **kwargs)


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two (n, d) feature sets; see ``foscu.evaluation.fid``."""
    from foscu.evaluation.frechet import frechet_distance as _frechet

    return _frechet(features_a, features_b)


__all__ = ["dice", "hd95", "frechet_distance"]
