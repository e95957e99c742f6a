"""``foscu sample``: N synthetic (image, label) pairs, or images for given labels, as an nnU-Net raw set.

The settings (each argument, else the run's config.yaml, else ``SampleConfig``'s defaults) and every refusal
come before anything is written; the pairs are drawn batch by batch through generative/sampling.py (its
``generate_batch``; ``sampling.sample_labels`` for labels that are cleaned or checked for novelty first) and
the folder appears whole, with ``samples.json``, or not at all. Under torchrun the N samples are split
across ranks, each written once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foscu.config import SampleConfig, Sampler, check_sampler, load_config
from foscu.engine import distributed
from foscu.engine.loop import _mix
from foscu.errors import InputError
from foscu.generative import label_cleaning, sampling, tumor_condition
from foscu.generative.given_labels import Given, read_label_folder
from foscu.generative.novelty import draw_labels, for_sampling
from foscu.generative.sampling import Pipeline, generate_batch, load_pipeline, sampler_steps
from foscu.runs import RunFolder, RunPath, as_run, write_json_atomic


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _sample_settings(
    run: RunFolder, sampler: str | None, steps: int | None, batch_size: int | None
) -> tuple[Sampler, int | None, int, list[int] | None]:
    """Sampler, steps, batch size and decode patch: each argument, else the run's config.yaml, else
    ``SampleConfig``'s default. DDPM keeps ``steps`` None: every training timestep (another count is refused)."""
    defaults = load_config(str(run.run_config)).sample if run.run_config.is_file() else SampleConfig()
    checked = check_sampler(defaults.sampler if sampler is None else sampler)
    if checked != "ddpm" and steps is None:
        steps = defaults.steps
    batch_size = defaults.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise InputError("--batch-size", f"must be >= 1, got {batch_size}")
    return checked, steps, batch_size, defaults.decode_patch


def _min_tumor_ml(run: RunFolder, model: str, given: bool) -> float | None:
    """``sample.min_tumor_ml`` where the run's config cleans sampled labels (``sample.clean_labels``)."""
    if model != "duo" or given or not run.run_config.is_file():
        return None
    sample = load_config(str(run.run_config)).sample
    return sample.min_tumor_ml if sample.clean_labels else None


def _conditioning(
    pipe: Pipeline, run: RunFolder, sampled: bool, scale: float | None, prevalence: float | None
) -> float | None:
    """Set ``pipe``'s ControlNet scale and labels' tumor prevalence (``sampled``: the duo model draws labels):
    each argument, else the run's ``sample`` section. -> the label LDM's training prevalence."""
    cfg = load_config(str(run.run_config)).sample if run.run_config.is_file() else SampleConfig()
    pipe.conditioning_scale = cfg.conditioning_scale if scale is None else scale
    if pipe.conditioning_scale < 0:
        raise InputError("--conditioning-scale", f"must be >= 0, got {pipe.conditioning_scale}")
    trained = pipe.tumor_prevalence
    pipe.tumor_prevalence = tumor_condition.resolve(trained, cfg.tumor_prevalence, prevalence, sampled)
    return trained


def _checked_pipeline(
    run: RunPath, model: str, controlnet_folder: str, sampler: Sampler, steps: int | None, labels: Path | None
) -> tuple[Pipeline, int, Given | None]:
    """The networks, the step count they will run and the given label volumes (mask-to-image); a step count
    an LDM cannot sample with, or labels that do not fit, are refused here, before anything is written."""
    pipe = load_pipeline(run, model, controlnet_folder)
    steps_run = sampler_steps(pipe.image.scheduler, sampler, steps)
    if pipe.label is not None:
        sampler_steps(pipe.label.scheduler, sampler, steps)
    given = read_label_folder(Path(labels), pipe) if labels is not None else None
    if given is not None and model != "duo":
        raise InputError("--labels", "mask-to-image needs the duo model (ControlNet)")
    return pipe, steps_run, given


def _cases(n: int, seed: int, given: Given | None) -> list[tuple[str, int, int]]:
    """(case id, index, sample seed) of every sample: ``synth_0000``... or ``<label case>_synth``."""
    if given is None and n < 1:
        raise InputError("--n", f"must be >= 1, got {n}")
    total = len(given) if given is not None else n
    return [
        (f"synth_{i:04d}" if given is None else f"{given[i][0]}_synth", i, _mix(seed, i))
        for i in range(total)
    ]


def _write_cases(
    pipe: Pipeline,
    cases: list[tuple[str, int, int]],
    folder: Path,
    sampler: Sampler,
    steps: int | None,
    batch_size: int,
    given: Given | None,
    progress: str | None,
) -> dict[str, dict]:
    """Sample ``cases`` batch by batch into ``folder`` (nnU-Net layout); ``progress``: the progress bar's
    title (None: no bar). Returns each sampled label's cleaning and novelty records (none when neither runs)."""
    from foscu.data.layout import image_path, label_path
    from foscu.data.nifti import write_nifti
    from foscu.engine.tracking import progress_bar

    affine = np.diag([*pipe.spacing, 1.0])
    cleaning: dict[str, dict] = {}
    with progress_bar(progress or "", len(cases), enabled=progress is not None) as advance:
        for chunk in _batches(cases, batch_size):
            labels = None
            if given is not None:
                labels = torch.from_numpy(np.stack([given[i][1] for _, i, _ in chunk]).astype(np.int64))
            elif pipe.label is not None and (pipe.min_tumor_ml is not None or pipe.novelty is not None):
                draw = partial(sampling.sample_labels, pipe, sampler=sampler, steps=steps)
                labels, records = draw_labels(pipe.novelty, draw, [s for _, _, s in chunk])
                cleaning.update({case_id: r for (case_id, _, _), r in zip(chunk, records, strict=True)})
            images, label_maps = generate_batch(pipe, [s for _, _, s in chunk], sampler, steps, labels)
            for j, (case_id, i, _) in enumerate(chunk):
                case_affine = given[i][2] if given is not None else affine
                write_nifti(image_path(folder, case_id), images[j], case_affine)
                if label_maps is not None:
                    write_nifti(label_path(folder, case_id), label_maps[j], case_affine, label=True)
            advance(len(chunk))
    return cleaning


def generate(
    run_root: RunPath,
    n: int,
    out: Path,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    labels_dir: Path | None = None,
    model: str = "duo",
    controlnet_folder: str = "controlnet",
    batch_size: int | None = None,
    progress: bool = True,
    conditioning_scale: float | None = None,
    tumor_prevalence: float | None = None,
) -> Path:
    """``foscu sample``: write N synthetic (image, label) pairs — or images for given labels — to ``out``.

    ``sampler``, ``steps``, ``batch_size``, ``conditioning_scale``, ``tumor_prevalence`` None: the run's
    config.yaml, else ``SampleConfig``'s defaults. Every bad argument is refused before anything is written.
    """
    from foscu.data.layout import write_dataset_json

    run, out = as_run(run_root), Path(out)
    dist = distributed.setup()
    sampler, steps, batch_size, decode_patch = _sample_settings(run, sampler, steps, batch_size)
    pipe, steps_run, given = _checked_pipeline(run, model, controlnet_folder, sampler, steps, labels_dir)
    pipe.decode_patch = decode_patch
    pipe.min_tumor_ml = _min_tumor_ml(run, model, given is not None)
    pipe.novelty, novelty_record = for_sampling(run, model, given is not None)
    sampled = model == "duo" and given is None
    trained = _conditioning(pipe, run, sampled, conditioning_scale, tumor_prevalence)
    cases = _cases(n, seed, given)
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "output folder exists and is not empty (choose another or remove it)")
    tmp = Path(str(distributed.broadcast_object(str(out.parent / f".tmp-{out.name}-{time.time_ns()}"))))
    start = time.perf_counter()
    try:
        title = f"sample {model}" if progress and dist.is_main else None
        cleaned = _write_cases(
            pipe, cases[dist.rank :: dist.world_size], tmp, sampler, steps, batch_size, given, title
        )
        label_cleaning.write_rank_records(tmp, dist.rank, cleaned)
        distributed.barrier()
        if dist.is_main:
            write_dataset_json(tmp, f"FOSCU synthetic ({model})", len(cases), labels=pipe.labels)
            per_case: dict[str, dict] = {c: {"seed": s} for c, _, s in cases}
            label_cleaning.merge_rank_records(tmp, per_case)
            presence = tumor_condition.record(per_case, cases, trained, pipe.tumor_prevalence)
            record = {
                "model": model,
                "sampler": sampler,
                "steps": steps_run,
                "seed": seed,
                "run": str(run.root),
                "controlnet": controlnet_folder if model == "duo" else None,
                "condition": pipe.condition,
                "conditioning_scale": pipe.conditioning_scale if model == "duo" else None,
                "tumor_condition": presence,
                "mask_to_image": given is not None,
                "seconds": round(time.perf_counter() - start, 2),
                "world_size": dist.world_size,
                "cases": per_case,
                "label_cleaning": pipe.min_tumor_ml and label_cleaning.settings(pipe.min_tumor_ml),
                "novelty": novelty_record,
            }
            write_json_atomic(tmp / "samples.json", record)
            tmp.rename(out)
        distributed.barrier()
    finally:
        if dist.is_main and tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out
