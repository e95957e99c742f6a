"""Is the synthetic data safe? The memorization audit: does a sample copy a training patient?

- Images: each synthetic image's nearest real training image by Pearson correlation; a sample closer to a
  training case than nearly every held-out real patient (validation/test, never trained on) is to theirs
  is flagged as a near copy. The held-out side of that comparison passes through the same decoder as the
  samples where the image VAE's reconstructions of the held-out images are given: a decode is smoother
  than a scan, and a smooth volume correlates more with its nearest neighbour, so sharp held-out images
  set too low a bar for decoded samples (the proof run's audit flagged 8 of 36). The threshold from the
  sharp images is kept beside it.
- Labels: each synthetic label's best liver Dice against every training label (evaluation/label_overlap.py);
  flagged above the most any held-out label reaches (the rule of ``sample.novelty``). Image and label
  flags agree or disagree per sample, counted in ``agreement``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foscu.evaluation.label_overlap import best_overlap, held_out_threshold, liver_masks

if TYPE_CHECKING:
    from foscu.data.prepare import PreparedSet


def _standardise(volume: np.ndarray, factor: int) -> np.ndarray:
    """Block-average by ``factor`` (tolerance to noise and small shifts), then zero mean, unit norm."""
    if factor > 1:
        crop = [s - s % factor for s in volume.shape]
        v = volume[: crop[0], : crop[1], : crop[2]]
        v = v.reshape(crop[0] // factor, factor, crop[1] // factor, factor, crop[2] // factor, factor).mean(
            (1, 3, 5)
        )
    else:
        v = volume
    flat = v.astype(np.float64).ravel()
    flat -= flat.mean()
    norm = np.linalg.norm(flat)
    return flat / norm if norm > 0 else flat


def memorization_audit(
    synthetic: Mapping[str, np.ndarray],
    real_training: Mapping[str, np.ndarray],
    held_out: Mapping[str, np.ndarray],
    percentile: float = 99.0,
    downsample: int = 2,
    held_out_decoded: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Nearest real training case per synthetic volume (Pearson correlation) and a near-copy flag.

    The threshold is the ``percentile`` (default 99th, linear interpolation) of the held-out real cases'
    correlations with their nearest training case: held-out patients were never trained on, so they show
    how close a genuinely new patient comes to the training set. A synthetic volume above it is closer to
    a training patient than 99 % of new patients are, and a novel sample is flagged about 1 % of the time.
    A percentile, not the maximum, so one near-duplicate pair of patients cannot disable the audit.

    Args:
        synthetic: sample id -> (X, Y, Z) volume.
        real_training: case id -> volume of the training split the generator learned from (>= 1).
        held_out: case id -> volume of the validation and test splits (>= 1), same shape.
        percentile: in (0, 100]; 100 is the held-out maximum.
        downsample: block-averaging factor before the correlation (tolerance to noise and small shifts).
        held_out_decoded: the held-out volumes through the samples' decoder (image-VAE reconstructions):
            they set the threshold; the sharp ones' threshold and flags are recorded beside it.
    """
    real_ids = list(real_training)
    if not real_ids:
        raise ValueError("the memorization audit needs at least one real training case")
    if not held_out:
        raise ValueError("the memorization audit needs at least one held-out (validation/test) case")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    real = np.stack([_standardise(real_training[k], downsample) for k in real_ids])  # (R, V)
    held = np.stack([_standardise(v, downsample) for v in held_out.values()])  # (H, V)
    held_nn = (held @ real.T).max(axis=1)  # (H,) each held-out case's nearest training correlation
    sharp = float(np.percentile(held_nn, percentile))
    if held_out_decoded is None:
        samples = _nearest_training(synthetic, real, real_ids, sharp, downsample)
        return _audit_record(samples, held_nn, sharp, percentile, downsample, "held-out real images")
    if not held_out_decoded:
        raise ValueError("the memorization audit got no decoded held-out cases to calibrate on")
    decoded = np.stack([_standardise(v, downsample) for v in held_out_decoded.values()])
    decoded_nn = (decoded @ real.T).max(axis=1)
    threshold = float(np.percentile(decoded_nn, percentile))
    samples = _nearest_training(synthetic, real, real_ids, threshold, downsample)
    record = _audit_record(
        samples,
        decoded_nn,
        threshold,
        percentile,
        downsample,
        "image-VAE reconstructions of the held-out cases",
    )
    for row in samples.values():
        row["near_copy_sharp"] = bool(row["correlation"] > sharp)
    record["sharp"] = {
        "threshold": sharp,
        "held_out_mean": float(held_nn.mean()),
        "near_copies": int(sum(row["near_copy_sharp"] for row in samples.values())),
        "note": "the same rule calibrated on the sharp held-out images (the audit of before)",
    }
    return record


def _nearest_training(
    synthetic: Mapping[str, np.ndarray],
    real: np.ndarray,
    real_ids: list[str],
    threshold: float,
    downsample: int,
) -> dict[str, dict[str, Any]]:
    """Per synthetic volume: its nearest training case (rows of ``real``), their correlation, near copy or not."""
    samples: dict[str, dict[str, Any]] = {}
    for sid, volume in synthetic.items():
        corr = real @ _standardise(volume, downsample)
        k = int(np.argmax(corr))
        samples[sid] = {
            "nearest_real_case": real_ids[k],
            "correlation": float(corr[k]),
            "near_copy": bool(corr[k] > threshold),
        }
    return samples


def _audit_record(
    samples: dict[str, dict[str, Any]],
    held_nn: np.ndarray,
    threshold: float,
    percentile: float,
    downsample: int,
    calibration: str,
) -> dict:
    nearest = [s["correlation"] for s in samples.values()]
    return {
        "method": f"Pearson correlation of {downsample}x block-averaged volumes; near copy = above the "
        f"{percentile:g}th percentile of held-out (validation/test) real cases' correlations with their "
        "nearest training case (a new patient is flagged with probability about "
        f"{100 - percentile:g} %)",
        "threshold": threshold,
        "calibration": calibration,
        "percentile": percentile,
        "held_out_nearest_training": {
            "n": len(held_nn),
            "mean": float(held_nn.mean()),
            "max": float(held_nn.max()),
            "above_threshold": int((held_nn > threshold).sum()),
        },
        "synthetic_nearest_real": {
            "mean": float(np.mean(nearest)) if nearest else None,
            "max": float(np.max(nearest)) if nearest else None,
        },
        "near_copies": int(sum(s["near_copy"] for s in samples.values())),
        "samples": samples,
    }


def label_audit(
    synthetic: Mapping[str, np.ndarray],
    real_training: Mapping[str, np.ndarray],
    held_out: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """Per synthetic label: its best liver Dice over the training labels, that case, and a near-copy flag
    above the most any held-out label's best liver Dice reaches (labels on one ROI grid)."""
    training_ids = list(real_training)
    if not training_ids:
        raise ValueError("the label check needs at least one real training label")
    training = liver_masks(list(real_training.values()))
    threshold, held_best = held_out_threshold(liver_masks(list(held_out.values())), training)
    samples: dict[str, dict[str, Any]] = {}
    if synthetic:
        dice, nearest = best_overlap(liver_masks(list(synthetic.values())), training)
        for sid, d, k in zip(synthetic, dice, nearest, strict=True):
            samples[sid] = {"label_nearest_case": training_ids[int(k)], "liver_dice": float(d)}
            samples[sid]["label_near_copy"] = bool(d > threshold)
    return {
        "method": "best liver Dice of each label against every training label; near copy = above the most "
        "any held-out (validation/test) label reaches against its best training label",
        "threshold": threshold,
        "held_out_best_training": {"n": len(held_best), "median": float(np.median(held_best))},
        "near_copies": int(sum(s["label_near_copy"] for s in samples.values())),
        "samples": samples,
    }


def joined(image: dict[str, Any], label: dict[str, Any]) -> dict[str, Any]:
    """The image audit with the label check's fields per sample, its summary under ``labels`` and how
    often the two flags agree (``agreement``: both, image only, label only, neither)."""
    counts = {"both": 0, "image_only": 0, "label_only": 0, "neither": 0}
    for sid, row in image["samples"].items():
        extra = label["samples"].get(sid)
        if extra is None:
            continue
        row.update(extra)
        key = {(True, True): "both", (True, False): "image_only", (False, True): "label_only"}
        counts[key.get((row["near_copy"], extra["label_near_copy"]), "neither")] += 1
    image["labels"] = {k: v for k, v in label.items() if k != "samples"}
    image["agreement"] = counts
    return image


def run_audit(
    prepared: PreparedSet,
    samples: Path,
    synthetic: list[np.ndarray],
    real_training: Mapping[str, np.ndarray],
    held_out: Mapping[str, np.ndarray],
    held_out_decoded: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """The experiment's audit: the images of ``samples`` (``synthetic``, read in case order) calibrated on
    the decoded held-out images, joined with the label check of its labels against the prepared set's."""
    from foscu.data.layout import case_files
    from foscu.data.nifti import read_nifti

    ids = list(case_files(samples, "images"))
    images = dict(zip(ids, synthetic, strict=True))
    image = memorization_audit(images, real_training, held_out, held_out_decoded=held_out_decoded)

    def labels(items: list[dict[str, str]]) -> dict[str, np.ndarray]:
        return {i["case_id"]: read_nifti(i["label"], label=True).array for i in items}

    held = {**labels(prepared.datalist.get("validation", [])), **labels(prepared.datalist.get("test", []))}
    generated = {c: read_nifti(p, label=True).array for c, p in case_files(samples, "labels").items()}
    return joined(image, label_audit(generated, labels(prepared.datalist["training"]), held))
