"""Public metrics for notebooks: ``dice``, ``hd95``, ``frechet_distance``.

A facade: the implementations live in ``foscu.evaluation``; importing this module stays cheap.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("dice", "hd95"):
        from foscu.evaluation import segmentation_metrics

        return getattr(segmentation_metrics, name)
    if name == "frechet_distance":
        from foscu.evaluation.fid import frechet_distance

        return frechet_distance
    raise AttributeError(f"module 'foscu.metrics' has no attribute {name!r}")


__all__ = ["dice", "hd95", "frechet_distance"]
