"""``foscu lesions``: lesion synthesis on real cases (the DiffTumor route, on FOSCU's own generator).

Each training case of a prepared set gets ``n_per_case`` edited copies: its label with tumors added, moved or
resized inside the liver (generative/lesion_masks.py, sizes and counts drawn from the training split's real
tumors), and its image generated only in and around the edited voxels (generative/inpainting.py) — the real
scan everywhere else. Validation and test cases are never a source. Output: an nnU-Net raw set (imagesTr,
labelsTr, dataset.json) with ``samples.json`` (per case: source, seed, edits, seam and contrast numbers),
usable as ``--synthetic DIR`` by Table II and ``foscu export nnunet``; ``figures_lesions.write_before_after``
adds ``before_after.png`` from these files.
"""

from __future__ import annotations

import itertools
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from foscu.errors import InputError
from foscu.generative.inpainting import METHODS
from foscu.labels import LABELS, TUMOR
from foscu.runs import RunPath, as_run, atomic_folder, write_json_atomic


def case_seed(seed: int, case_id: str, k: int) -> int:
    """The seed of copy ``k`` of ``case_id``: the same edit and image whatever else is in the set."""
    from foscu.engine.loop import _mix

    return _mix(seed, zlib.crc32(case_id.encode()), k)


def _training_cases(data: Path) -> tuple[Any, list[tuple[str, Any, Any]]]:
    """The prepared set and its training cases as (case id, image volume, label volume); refused when its
    label map is not FOSCU's multi-class one or when no training case holds a tumor (the sizes' source)."""
    from foscu.data.nifti import read_nifti
    from foscu.data.prepare import read_prepared

    prepared = read_prepared(Path(data))
    if prepared.labels != LABELS:
        raise InputError(
            Path(data) / "dataset.json", f"label map {prepared.labels} is not the multi-class {LABELS}"
        )
    cases = [
        (e["case_id"], read_nifti(e["image"]), read_nifti(e["label"], label=True))
        for e in prepared.datalist["training"]
    ]
    if not any((label.array == TUMOR).any() for _, _, label in cases):
        raise InputError(Path(data) / "datalist.json", "no training case holds a tumor to draw sizes from")
    return prepared, cases


def _sources(
    training: list[tuple[str, Any, Any]], wanted: list[str] | None, data: Path
) -> list[tuple[str, Any, Any]]:
    """The training cases to edit: all, or ``wanted`` (refused when one is not a training case)."""
    if wanted is None:
        return training
    known = {case[0]: case for case in training}
    missing = sorted(set(wanted) - set(known))
    if missing:
        raise InputError(data / "datalist.json", f"{missing} are not training cases of this prepared set")
    return [known[case_id] for case_id in wanted]


def _pipeline(
    run: RunPath, controlnet_folder: str, sampler: str | None, steps: int | None, roi: tuple
) -> Any:
    from foscu.generative.generate import _sample_settings
    from foscu.generative.sampling import load_pipeline, sampler_steps

    folder = as_run(run)
    checked, steps, _, decode_patch = _sample_settings(folder, sampler, steps, 1)
    pipe = load_pipeline(folder, "duo", controlnet_folder)
    pipe.decode_patch = decode_patch
    sampler_steps(pipe.image.scheduler, checked, steps)
    if tuple(pipe.roi) != tuple(roi):
        raise InputError("--data", f"prepared ROI {tuple(roi)} differs from the run's {tuple(pipe.roi)}")
    if pipe.labels != LABELS:
        raise InputError("--run", f"the run's label map {pipe.labels} is not the multi-class {LABELS}")
    return pipe, checked, steps


def _real_contrast(cases: list[tuple[str, Any, Any]]) -> float | None:
    """Median liver-minus-tumor contrast of the real training tumors (each case's tumor voxels together)."""
    from foscu.generative.inpainting import tumor_contrast

    values = [tumor_contrast(img.array, lab.array, lab.array == TUMOR) for _, img, lab in cases]
    found = [v for v in values if v is not None]
    return round(float(np.median(found)), 5) if found else None


def synthesize_case(
    pipe: Any,
    real: np.ndarray,
    label: np.ndarray,
    spacing: tuple[float, ...],
    pool: Any,
    seed: int,
    method: str,
    margin: int,
    sampler: str,
    steps: int | None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One edited copy of a real case: (image, edited label, record with edits and measurements)."""
    from foscu.generative.inpainting import (
        compose,
        feather_weight,
        generate_region,
        seam_metrics,
        tumor_contrast,
    )
    from foscu.generative.lesion_masks import edit_mask

    edited, edits = edit_mask(label, spacing, pool, np.random.default_rng(seed))
    changed = edited != label
    weight = feather_weight(changed, margin)
    record: dict[str, Any] = {"seed": seed, "edits": edits, "changed_voxels": int(changed.sum())}
    if not changed.any():  # every tumor skipped: the real pair, unchanged
        return real.copy(), edited, record
    generated = generate_region(pipe, real, edited, weight, seed, sampler, steps, method)  # type: ignore[arg-type]
    image = compose(real, generated, weight)
    new_tumor = (edited == TUMOR) & (label != TUMOR)
    record["generated_voxels"] = int((weight > 0).sum())
    record["tumor_contrast"] = tumor_contrast(image, edited, new_tumor)
    record.update(seam_metrics(real, generated, image, weight))
    return image, edited, record


def _pool_record(pool: Any) -> dict:
    volumes = np.asarray(pool.volumes_ml)
    return {
        "tumors": len(volumes),
        "cases_with_tumors": len(pool.counts),
        "volume_ml": {
            q: round(float(np.quantile(volumes, v)), 4) for q, v in (("min", 0), ("median", 0.5), ("max", 1))
        },
        "tumors_per_case": sorted(pool.counts),
    }


def _summary(cases: dict[str, dict]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("band_mismatch", "band_gradient_ratio", "tumor_contrast"):
        values = [c[key] for c in cases.values() if c.get(key) is not None]
        out[f"median_{key}"] = round(float(np.median(values)), 5) if values else None
    return out


def synthesize_lesions(
    run: RunPath,
    data: Path,
    out: Path,
    n_per_case: int = 1,
    seed: int = 0,
    method: str = "inpaint",
    margin: int = 3,
    sampler: str | None = None,
    steps: int | None = None,
    controlnet_folder: str = "controlnet",
    progress: bool = True,
    cases: list[str] | None = None,
) -> dict:
    """Write ``n_per_case`` lesion-edited copies of every training case of ``data`` to ``out``; returns the
    ``samples.json`` record. Every bad argument is refused before anything is written.

    ``cases``: edit only these training cases (the data-scarcity curve's n cases of a seed); the tumor sizes
    and counts are still drawn from every training tumor (the statistics a sharing site publishes with its
    generator, so a user's few cases need not hold a tumor themselves).
    """
    from foscu.data.layout import image_path, label_path, write_dataset_json
    from foscu.data.nifti import write_nifti
    from foscu.engine.tracking import progress_bar
    from foscu.generative.lesion_masks import tumor_pool

    if method not in METHODS:
        raise InputError("--method", f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if n_per_case < 1:
        raise InputError("--n-per-case", f"must be >= 1, got {n_per_case}")
    if margin < 2:
        raise InputError("--margin", f"must be >= 2 voxels, got {margin}")
    prepared, training = _training_cases(data)
    sources = _sources(training, cases, Path(data))
    pipe, sampler_name, steps_run = _pipeline(run, controlnet_folder, sampler, steps, prepared.roi)
    spacing = tuple(prepared.spacing)
    pool = tumor_pool([lab.array for _, _, lab in training], spacing)
    start = time.perf_counter()
    records: dict[str, dict] = {}
    bar = progress_bar("lesions", len(sources) * n_per_case, enabled=progress)
    with atomic_folder(out) as tmp, bar as advance:
        for (case_id, image, label), k in itertools.product(sources, range(n_per_case)):
            new_id, s = f"{case_id}_les{k}", case_seed(seed, case_id, k)
            out_image, out_label, record = synthesize_case(
                pipe, image.array, label.array, spacing, pool, s, method, margin, sampler_name, steps_run
            )
            write_nifti(image_path(tmp, new_id), out_image, image.affine)
            write_nifti(label_path(tmp, new_id), out_label, label.affine, label=True)
            records[new_id] = {"source": case_id, "method": method, **record}
            advance(1)
        write_dataset_json(tmp, f"FOSCU lesion synthesis ({method})", len(records), labels=LABELS)
        summary = {
            "method": method,
            "margin": margin,
            "sampler": sampler_name,
            "steps": steps_run,
            "seed": seed,
            "n_per_case": n_per_case,
            "run": str(as_run(run).root),
            "data": str(Path(data).resolve()),
            "controlnet": controlnet_folder,
            "sources": sorted({r["source"] for r in records.values()}),
            "tumor_pool": _pool_record(pool),
            "real_tumor_contrast": _real_contrast(training),
            **_summary(records),
            "seconds": round(time.perf_counter() - start, 2),
            "cases": records,
        }
        write_json_atomic(tmp / "samples.json", summary)
    return summary
