"""Are generated labels anatomy? Shape statistics of label volumes, generated against real.

Dice on pairs cannot see a label that is wrong in itself: a liver in three blobs, vessels that are specks or
missing, tumors everywhere. Each label volume is described by a few numbers a radiologist would check:

- ``<class>_ml``: volume of each class in mL (spacing from the volume);
- ``<class>_components``: connected components (26-connectivity) of each class, and
  ``liver_largest_share``: the share of the liver voxels in its largest component (1.0: one liver);
- ``organ_components`` and ``organ_largest_share``: components of the whole organ (liver with its vessels and
  tumors) and the share of the organ in the largest one (1.0: one liver);
- ``vessel_in_liver_share``: the share of portal and hepatic vein voxels inside or touching the organ's
  liver tissue (within one voxel of a liver voxel);
- ``tumor_largest_ml``: the volume of the largest tumor component (0 without tumor);
- ``tumor_enclosed_share``: the share of tumor voxels with no background voxel within one voxel (enclosed by
  the organ; a tumor drawn on the liver's outside scores low; undefined without tumor);
- presence of each class (volume > 0) and, for tumor, presence at a size: a component of at least the
  smallest real tumor (the smallest ``tumor_largest_ml`` among real labels that hold one), so one-voxel
  decoder speckle is not counted as a tumor case. Each presence comes with the difference generated - real
  and its Newcombe 95 % interval (hybrid Wilson score, independent samples).

Per feature, the two-sample Kolmogorov-Smirnov statistic between generated and real values (0: the same
distribution, 1: no overlap at all; scale-free, so a near-constant real feature does not blow it up), its
p-value, the p-value Holm-adjusted over the features tested (``p_holm``; ``rejected`` at 5 %) and the 1-D
Wasserstein distance in the feature's own unit. The summary distance is the mean KS statistic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from foscu.labels import LABELS

FOREGROUND = {k: v for k, v in LABELS.items() if k != "background"}
VESSELS = ("portal_vein", "hepatic_vein")


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """Number of 26-connected components of ``mask`` and their sizes in voxels."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labelled.ravel())[1:] if n else np.zeros(0, dtype=np.int64)
    return int(n), sizes


def label_features(label: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Shape statistics of one (X, Y, Z) label volume in FOSCU's label map (see the module docstring)."""
    from scipy import ndimage

    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, float] = {}
    for name, value in FOREGROUND.items():
        mask = label == value
        out[f"{name}_ml"] = float(mask.sum()) * voxel_ml
        n, sizes = _components(mask)
        out[f"{name}_components"] = float(n)
        if name == "liver":  # one liver, or blobs: the share of the liver voxels in its largest component
            out["liver_largest_share"] = float(sizes.max() / sizes.sum()) if n else 0.0
        if name == "tumor":  # a tumor case or speckle: the largest tumor component's volume
            out["tumor_largest_ml"] = float(sizes.max()) * voxel_ml if n else 0.0
    organ = label != LABELS["background"]
    n_organ, sizes = _components(organ)
    out["organ_components"] = float(n_organ)
    out["organ_largest_share"] = float(sizes.max() / sizes.sum()) if n_organ else 0.0
    vessels = np.isin(label, [LABELS[v] for v in VESSELS])
    n_vessel = int(vessels.sum())
    if n_vessel:
        near_liver = ndimage.binary_dilation(label == LABELS["liver"], structure=np.ones((3, 3, 3), bool))
        out["vessel_in_liver_share"] = float((vessels & near_liver).sum()) / n_vessel
    else:
        out["vessel_in_liver_share"] = float("nan")  # no vessel: the share is undefined, not 0
    tumor = label == LABELS["tumor"]
    if tumor.any():  # a tumor grows in the liver: how much of it is enclosed by the organ, not at its outside
        outside = ndimage.binary_dilation(label == LABELS["background"], structure=np.ones((3, 3, 3), bool))
        out["tumor_enclosed_share"] = float((tumor & ~outside).sum()) / float(tumor.sum())
    else:
        out["tumor_enclosed_share"] = float("nan")
    return out


def _ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic (the largest gap between the two empirical CDFs) and its
    p-value."""
    from scipy.stats import ks_2samp

    result = ks_2samp(a, b)
    return float(result.statistic), float(result.pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over all ``p_values``), in their order."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return [float(x) for x in adjusted]


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def proportion_difference(k1: int, n1: int, k2: int, n2: int) -> dict[str, float]:
    """p1 - p2 with Newcombe's hybrid score 95 % interval (method 10 of Newcombe 1998), independent samples."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = _wilson(k1, n1)
    l2, u2 = _wilson(k2, n2)
    d = p1 - p2
    low = d - float(np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2))
    high = d + float(np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
    return {"difference": d, "low": low, "high": high}


def _presence(cls: str, real: list[bool], generated: list[bool], **extra: Any) -> dict[str, Any]:
    """One presence row: the two shares and the difference generated - real with its interval."""
    diff = proportion_difference(sum(generated), len(generated), sum(real), len(real))
    return {
        "class": cls,
        **extra,
        "real": float(np.mean(real)),
        "generated": float(np.mean(generated)),
        "difference": diff["difference"],
        "difference_low": diff["low"],
        "difference_high": diff["high"],
    }


def _wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a, b))


def compare_labels(
    real: Mapping[str, dict[str, float]], generated: Mapping[str, dict[str, float]]
) -> dict[str, Any]:
    """Per-feature real vs generated summaries, the presence of each class and the summary distance.

    Args:
        real: case id -> :func:`label_features` of a real (training) label.
        generated: sample id -> :func:`label_features` of a generated label.
    """
    if not real or not generated:
        raise ValueError("label realism needs at least one real and one generated label")
    names = list(next(iter(real.values())))
    rows, distances = [], []
    for name in names:
        r = np.array([f[name] for f in real.values()], dtype=np.float64)
        g = np.array([f[name] for f in generated.values()], dtype=np.float64)
        r_ok, g_ok = r[~np.isnan(r)], g[~np.isnan(g)]
        row: dict[str, Any] = {"feature": name}
        for who, v in (("real", r_ok), ("generated", g_ok)):
            row[f"{who} median"] = float(np.median(v)) if len(v) else None
            row[f"{who} IQR"] = [float(x) for x in np.percentile(v, [25, 75])] if len(v) else None
        both = len(r_ok) > 0 and len(g_ok) > 0
        distance, p_value = _ks(r_ok, g_ok) if both else (None, None)
        row["distance"], row["p_value"] = distance, p_value
        row["wasserstein"] = _wasserstein(r_ok, g_ok) if both else None
        if distance is not None:
            distances.append(distance)
        rows.append(row)
    tested = [row for row in rows if row["p_value"] is not None]
    for row, adjusted in zip(tested, holm([row["p_value"] for row in tested]), strict=True):
        row["p_holm"], row["rejected"] = adjusted, adjusted < 0.05
    presence = [
        _presence(
            cls,
            [f[f"{cls}_ml"] > 0 for f in real.values()],
            [f[f"{cls}_ml"] > 0 for f in generated.values()],
            min_ml=None,
        )
        for cls in FOREGROUND
    ]
    real_tumors = [f["tumor_largest_ml"] for f in real.values() if f.get("tumor_largest_ml", 0) > 0]
    if real_tumors and all("tumor_largest_ml" in f for f in generated.values()):
        smallest = float(min(real_tumors))  # the smallest real tumor: below it, a component is speckle
        presence.append(
            _presence(
                "tumor",
                [f["tumor_largest_ml"] >= smallest for f in real.values()],
                [f["tumor_largest_ml"] >= smallest for f in generated.values()],
                min_ml=smallest,
            )
        )
    return {
        "features": rows,
        "presence": presence,
        "features_rejected": sum(bool(row.get("rejected")) for row in rows),
        "summary_distance": float(np.mean(distances)) if distances else None,
        "n_real": len(real),
        "n_generated": len(generated),
        "note": "distance = two-sample Kolmogorov-Smirnov statistic per feature (0 = same distribution, "
        "1 = no overlap), p_value its p-value, p_holm Holm-adjusted over the features (rejected at 5 %); "
        "wasserstein in the feature's unit; summary = mean KS over the features. Presence: share of labels "
        "holding the class (min_ml: a component of at least the smallest real tumor), difference = "
        "generated - real with its Newcombe 95 % interval",
    }


def label_realism(
    real: Mapping[str, np.ndarray],
    generated: Mapping[str, np.ndarray],
    spacing: Sequence[float],
) -> dict[str, Any]:
    """:func:`compare_labels` of real and generated label volumes, with every volume's features kept."""
    real_f = {k: label_features(v, spacing) for k, v in real.items()}
    gen_f = {k: label_features(v, spacing) for k, v in generated.items()}
    result = compare_labels(real_f, gen_f)
    result["real_cases"], result["generated_cases"] = real_f, gen_f
    return result
