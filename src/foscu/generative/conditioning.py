"""Does the ControlNet condition? The same seed drawn with two masks: how much, and where, the image changes.

Used by the experiment's fidelity ladder (RUN/evaluation/ladder.json, ``conditioning.response``) and by the
conditioning tests; a ControlNet whose residuals stayed at zero returns the same image for both masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foscu.generative.sampling import Pipeline, generate_batch


def conditioning_response(
    pipe: Pipeline, mask_a: np.ndarray, mask_b: np.ndarray, seed: int, sampler: str, steps: int
) -> dict[str, Any]:
    """Generate from two masks with the same seed: do the images change, and where the masks differ?

    A ControlNet that conditions changes the image more where the masks differ than where they agree
    (``ratio`` > 1); one whose residuals are zero gives the same image twice (``difference`` 0).

    Args:
        pipe: a Duo-Diffusion :class:`~foscu.generative.sampling.Pipeline`.
        mask_a, mask_b: (X, Y, Z) label volumes on the run's grid that differ somewhere.
    """
    import torch

    differ = mask_a != mask_b
    if not differ.any() or differ.all():
        raise ValueError("the two masks must differ in some voxels and agree in others")
    labels = torch.from_numpy(np.stack([mask_a, mask_b]).astype(np.int64))
    # the same per-sample seed for both masks: only the condition differs
    first, _ = generate_batch(pipe, [seed], sampler, steps, labels[:1])
    second, _ = generate_batch(pipe, [seed], sampler, steps, labels[1:])
    diff = np.abs(first[0] - second[0])
    where_differ, where_agree = float(diff[differ].mean()), float(diff[~differ].mean())
    ratio = where_differ / where_agree if where_agree > 0 else (float("inf") if where_differ > 0 else None)
    return {
        "difference": float(diff.mean()),
        "where_masks_differ": where_differ,
        "where_masks_agree": where_agree,
        "ratio": ratio,
        # the image depends on the mask, and most where the masks differ: a mechanical check that the
        # ControlNet is wired and trained at all (the ladder's (c) vs (e) judges whether it is good)
        "mask_dependent": bool(diff.mean() > 1e-6 and ratio is not None and ratio > 1.5),
        "voxels_differ": int(differ.sum()),
    }
