"""GPU check: the paper preset at 160x160x64 through the real engine, one JSON line per check.

Usage:
    python benchmarks/gpu_check.py                  # on a GPU: paper preset, 160x160x64, 3 + 20 steps per stage
    python benchmarks/gpu_check.py --cpu-dry        # tiny preset at 32x32x16 on the CPU (runs in the tests)
    python benchmarks/gpu_check.py --levers         # also: larger batches, channels-last (ratios, one run)

Checks, in order (each later one needs the earlier ones):
1. ``data``: a phantom of 4 cases at the ROI size, prepared at that ROI (2 training, 1 validation, 1 test).
2. ``train``, one line per generative stage (label-VAE, image-VAE, label-LDM, image-LDM, ControlNet,
   VQ-VAE, VQ-VAE-LDM) through ``train_stage`` -> ``fit`` at the preset's batch sizes: ``--warmup`` steps
   (kernel selection, allocator growth), then the stage is resumed for ``--steps`` more, and ``it_per_s`` is
   the engine's own figure for the resumed steps alone (metrics.jsonl: steps since the resume over the time
   since its loop started, validation excluded), so warm-up is not in it. ``peak_mib`` is the stage's peak
   device memory (``torch.cuda.max_memory_allocated``; on the CPU the process's peak RSS so far),
   ``seconds`` the whole stage (latent cache, validation and checkpoints included). The resume is itself a
   check of the device path (a checkpoint written from and read back onto the GPU).
3. ``sample_pair``: label -> image pairs with the preset's sampler and steps (``foscu sample``'s
   ``generate``): one pair alone (``seconds_first_pair``, warm-up included), then a batch of the preset's
   ``sample.batch_size`` pairs (``seconds_per_pair``: the batch's time over its pairs).
4. ``fid``: a 2.5D FID on a few slices with the Inception network on the device (``--cpu-dry``: RadImageNet
   ResNet-50, which keeps the slices' size, so the dry run stays fast). The weights are random (the
   machine may have no network): this checks the device path and its speed, not a real FID.
5. ``seg_predict``: the multi-class U-Net (``train_segmenter``) at the preset's batch size, warmed up and
   timed as the generative stages, then one sliding-window prediction of a test volume on the device
   (``predict_cases``).
6. ``lever`` (``--levers`` only), one line per speed lever, each against its base in the same process:
   the image VAE at batch 8 and the image LDM at batch 32 (samples per second against the preset's
   batch), and ``torch.backends.cudnn.benchmark`` (cuDNN picks its fastest convolution per shape; FOSCU
   leaves it off) for the image VAE and the image LDM; sampling under bf16 autocast (FOSCU samples in
   fp32): seconds per pair, and how far the same seeds' pairs move (mean absolute image difference,
   fraction of equal label voxels); and two image-VAE variants, the structure-weighted reconstruction
   (``structure_weight`` 10) and MAISI's autoencoder at its published width (``pretrained: maisi``, from
   scratch), each its it/s and peak memory against the preset's image VAE. Ratios, not decisions: a lever is kept only where
   it is faster and its loss agrees.

The first line (``env``) names the device, torch, CUDA and MONAI. A failing check prints its ``error``
and the checks after it still run (those that need its output fail in turn), so one run shows every
failure. The last line is ``{"check": "done", "ok": ...}``. Exit status 0 when every check passed within
``--budget-s`` seconds, else 1; 2 without a GPU unless ``--cpu-dry``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = ("label-vae", "image-vae", "label-ldm", "image-ldm", "controlnet", "vqvae", "vqvae-ldm")
SECTION = {s: s.replace("-", "_") for s in STAGES}
# fid: (network, slice stride, central fraction): >= 2 slices per plane for the one sampled volume
GPU = {"preset": "paper", "shape": (160, 160, 64), "spacing": (1.5, 1.5, 3.0), "fid": ("inception", 8, 0.25)}
DRY = {"preset": "tiny", "shape": (32, 32, 16), "spacing": (7.5, 7.5, 12.0), "fid": ("radimagenet", 4, 0.5)}


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


class Meter:
    """Wall time and peak memory of one check on ``device`` (CUDA: allocator peak; CPU: process peak RSS)."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def __enter__(self) -> Meter:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        self.seconds = time.perf_counter() - self.start


def stage_overrides(steps: int, every: int) -> list[str]:
    """``steps`` optimizer steps per stage (the segmenter's too); validation and checkpoint every ``every``
    steps and at the last (``every`` is the same for the warm-up and the timed run: a resume accepts a change
    of the step count alone)."""
    out = []
    for section in [*SECTION.values(), "segmentation"]:
        out += [f"{section}.train.epochs=null"] if section != "segmentation" else []
        out += [f"{section}.train.steps={steps}"]
        out += [f"{section}.train.val_every={every}", f"{section}.train.checkpoint_every={every}"]
    return out


class Plan:
    """The two configs of every timed check: ``warm`` trains ``warmup`` steps, ``timed`` resumes the same
    stage to ``warmup + steps`` (only the step count differs, so the resume is accepted)."""

    def __init__(self, preset: str, warmup: int, steps: int, extra: list[str]) -> None:
        from foscu.config import load_config

        self.warmup, self.steps, self.extra = warmup, steps, extra
        total = warmup + steps
        self.warm = load_config(preset, stage_overrides(warmup, total) + extra)
        self.timed = load_config(preset, stage_overrides(total, total) + extra)
        self.preset = preset

    def with_batch(self, section: str, batch_size: int) -> Plan:
        """The same plan with ``section``'s batch size changed (the batch-size lever)."""
        return self.with_settings([f"{section}.train.batch_size={batch_size}"])

    def with_settings(self, overrides: list[str]) -> Plan:
        """The same plan with more config overrides (a variant of a stage)."""
        return Plan(self.preset, self.warmup, self.steps, [*self.extra, *overrides])


def _resumed_rate(folder: Path) -> float:
    """The engine's steps/s over the resumed steps: metrics.jsonl's last line (time since the resumed loop
    started, taken before that line's validation)."""
    logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return float(logged[-1]["steps_per_s"])


def check_data(work: Path, size: dict[str, Any]) -> Path:
    from foscu.data.phantom import write_phantom_set
    from foscu.data.prepare import prepare_dataset

    write_phantom_set(work / "raw", 4, size["shape"], size["spacing"], seed=0, workers=1, progress=False)
    prepare_dataset(
        work / "raw", work / "prepared", roi=size["shape"], split=(0.5, 0.25, 0.25), progress=False
    )
    return work / "prepared"


def check_stage(
    stage: str, plan: Plan, prepared: Path, run: Path, device: Any, folder_name: str | None = None
) -> dict[str, Any]:
    from foscu.stages import train_stage

    with Meter(device) as meter:
        train_stage(stage, plan.warm, prepared, run, progress=False, folder_name=folder_name)
        result = train_stage(
            stage, plan.timed, prepared, run, resume=True, progress=False, folder_name=folder_name
        )
    train = getattr(plan.timed, SECTION[stage]).train
    rate = _resumed_rate(run / (folder_name or stage))
    return {
        "stage": stage,
        "steps": result.steps,
        "timed_steps": plan.steps,
        "batch_size": train.batch_size,
        "it_per_s": round(rate, 3),
        "samples_per_s": round(rate * train.batch_size, 3),
        "peak_mib": round(meter.peak_mib),
        "seconds": round(meter.seconds, 2),
    }


def check_sample(cfg: Any, run: Path, work: Path, device: Any) -> dict[str, Any]:
    from foscu.generative.generate import generate

    batch = cfg.sample.batch_size

    def pairs(n: int, out: str, batch_size: int) -> Meter:
        with Meter(device) as meter:
            generate(
                run, n, work / out, cfg.sample.sampler, cfg.sample.steps, cfg.seed,
                batch_size=batch_size, progress=False,
            )  # fmt: skip
        return meter

    first = pairs(1, "samples", 1)
    batched = pairs(batch, "samples-batch", batch)
    return {
        "sampler": cfg.sample.sampler,
        "steps": cfg.sample.steps,
        "seconds_first_pair": round(first.seconds, 2),
        "batch_size": batch,
        "seconds_per_pair": round(batched.seconds / batch, 3),
        "peak_mib": round(max(first.peak_mib, batched.peak_mib)),
    }


def check_fid(prepared: Path, work: Path, size: dict[str, Any], device: Any) -> dict[str, Any]:
    import torch

    from foscu.data.loaders import load_split
    from foscu.data.prepare import read_prepared
    from foscu.evaluation.feature_nets import NETWORKS
    from foscu.evaluation.fid import fid_25d, read_volumes

    network, stride, fraction = size["fid"]
    torch.manual_seed(0)
    weights = work / f"{network}-random-weights.pth"
    torch.save(NETWORKS[network][0]().state_dict(), weights)
    real = [v[0].numpy() for v in load_split(read_prepared(prepared), "training").images]
    fake = read_volumes(work / "samples")
    with Meter(device) as meter:
        result = fid_25d(real, fake, network, stride, fraction, weights, device=device)
    slices = {plane: counts["real"] + counts["fake"] for plane, counts in result["slices_per_plane"].items()}
    return {
        "network": network,
        "fid_mean": round(result["mean"], 4),
        "slices": slices,
        "seconds": round(meter.seconds, 2),
        "peak_mib": round(meter.peak_mib),
        "note": "random weights: checks the device path and speed, not a real FID",
    }


def check_seg(plan: Plan, prepared: Path, run: Path, work: Path, device: Any) -> dict[str, Any]:
    from foscu.data.prepare import read_prepared
    from foscu.segmentation.predict import predict_cases
    from foscu.stages import train_segmenter

    with Meter(device) as train_meter:
        train_segmenter("unet", "multiclass", plan.warm, prepared, run, progress=False)
        folder, result = train_segmenter(
            "unet", "multiclass", plan.timed, prepared, run, resume=True, progress=False
        )
    test = read_prepared(prepared).datalist["test"][0]
    with Meter(device) as meter:
        predict_cases(folder, {test["case_id"]: Path(test["image"])}, work / "predictions", device=device)
    train = plan.timed.segmentation.train
    rate = _resumed_rate(folder)
    return {
        "arch": "unet",
        "steps": result.steps,
        "batch_size": train.batch_size,
        "it_per_s": round(rate, 3),
        "train_peak_mib": round(train_meter.peak_mib),
        "seconds": round(meter.seconds, 2),
        "peak_mib": round(meter.peak_mib),
    }


def check_batch_lever(
    stage: str,
    batch_size: int,
    base: dict[str, Any] | None,
    plan: Plan,
    prepared: Path,
    run: Path,
    device: Any,
) -> dict[str, Any]:
    """``stage`` again at ``batch_size`` into a folder beside it: samples/s against the preset's batch."""
    line = check_stage(
        stage, plan.with_batch(SECTION[stage], batch_size), prepared, run, device, f"{stage}-b{batch_size}"
    )
    out = {"lever": f"{stage} batch {batch_size}", **line}
    if base is not None:
        out["base_batch_size"] = base["batch_size"]
        out["ratio_samples_per_s"] = round(line["samples_per_s"] / base["samples_per_s"], 3)
    return out


# image-VAE variants timed against the preset's image VAE: the structure-weighted reconstruction and
# MAISI's autoencoder at its published width (GPU) or a CPU-sized one (dry run)
VARIANTS = {
    "structure_weight 10": ["image_vae.structure_weight=10"],
    "maisi": ["image_vae.pretrained=maisi"],
}
DRY_MAISI = ['image_vae.maisi={"num_channels": [8, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 4}']


def check_variant(
    name: str, base: dict[str, Any] | None, plan: Plan, prepared: Path, run: Path, device: Any, dry: bool
) -> dict[str, Any]:
    """The image VAE with variant ``name``'s settings into a folder beside it: it/s and memory against it."""
    overrides = VARIANTS[name] + (DRY_MAISI if dry and name == "maisi" else [])
    folder = "image-vae-" + name.replace(" ", "-")
    line = check_stage("image-vae", plan.with_settings(overrides), prepared, run, device, folder)
    out = {"lever": f"image-vae {name}", **line}
    if base is not None:
        out["ratio_it_per_s"] = round(line["it_per_s"] / base["it_per_s"], 3)
    return out


def check_cudnn_lever(
    stage: str, base: dict[str, Any] | None, plan: Plan, prepared: Path, run: Path, device: Any
) -> dict[str, Any]:
    """``stage`` again with ``cudnn.benchmark`` on, into a folder beside it: it/s against the default."""
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        line = check_stage(stage, plan, prepared, run, device, f"{stage}-cudnn-benchmark")
    finally:
        torch.backends.cudnn.benchmark = before
    out = {"lever": f"{stage} cudnn.benchmark", **line}
    if base is not None:
        out["ratio_it_per_s"] = round(line["it_per_s"] / base["it_per_s"], 3)
    return out


def check_sample_bf16_lever(cfg: Any, run: Path, work: Path, device: Any) -> dict[str, Any]:
    """The batch of ``check_sample`` again under bf16 autocast (FOSCU samples in fp32): seconds per pair
    against fp32 and how far the pairs move (same seeds, so the same noise)."""
    import nibabel as nib
    import numpy as np
    import torch

    from foscu.generative.generate import generate

    batch = cfg.sample.batch_size
    out = work / "samples-batch-bf16"
    with Meter(device) as meter, torch.autocast(device.type, dtype=torch.bfloat16):
        generate(
            run, batch, out, cfg.sample.sampler, cfg.sample.steps, cfg.seed,
            batch_size=batch, progress=False,
        )  # fmt: skip

    def volumes(folder: Path, kind: str) -> list[np.ndarray]:
        return [np.asarray(nib.load(f).dataobj) for f in sorted((folder / kind).glob("*.nii.gz"))]

    fp32_images, bf16_images = volumes(work / "samples-batch", "imagesTr"), volumes(out, "imagesTr")
    fp32_labels, bf16_labels = volumes(work / "samples-batch", "labelsTr"), volumes(out, "labelsTr")
    image_diff = [float(np.abs(a - b).mean()) for a, b in zip(fp32_images, bf16_images, strict=True)]
    label_same = [float((a == b).mean()) for a, b in zip(fp32_labels, bf16_labels, strict=True)]
    return {
        "lever": "sample bf16 autocast",
        "batch_size": batch,
        "seconds_per_pair": round(meter.seconds / batch, 3),
        "peak_mib": round(meter.peak_mib),
        "image_mean_abs_diff": round(float(np.mean(image_diff)), 4),
        "label_voxels_equal": round(float(np.mean(label_same)), 4),
    }


def environment(device: Any) -> dict[str, Any]:
    import monai
    import torch

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": sys.version.split()[0],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_mib=round(props.total_memory / 2**20),
            multiprocessors=props.multi_processor_count,
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    env["cpu_threads"] = torch.get_num_threads()
    return env


def run_checks(work: Path, dry: bool, warmup: int, steps: int, budget_s: float, levers: bool) -> int:
    """Every check in order, a JSON line each, on past a failure; 0 when all passed within ``budget_s``."""
    import torch

    size = DRY if dry else GPU
    device = torch.device("cpu" if dry else "cuda")
    started = time.perf_counter()
    sample_overrides = ["sample.steps=2", "sample.batch_size=2"] if dry else []  # GPU: the preset's
    plan = Plan(size["preset"], warmup, steps, sample_overrides)
    prepared, run = work / "prepared", work / "run"
    trained: dict[str, dict[str, Any]] = {}

    def stage(s: str) -> dict[str, Any]:
        trained[s] = check_stage(s, plan, prepared, run, device)
        return trained[s]

    checks: list[tuple[str, Callable[[], dict[str, Any] | Path]]] = [
        ("env", lambda: environment(device)),
        ("data", lambda: check_data(work, size)),
        *[("train", lambda s=s: stage(s)) for s in STAGES],
        ("sample_pair", lambda: check_sample(plan.timed, run, work, device)),
        ("fid", lambda: check_fid(prepared, work, size, device)),
        ("seg_predict", lambda: check_seg(plan, prepared, run, work, device)),
    ]
    if levers:
        for lever_stage, batch in (("image-vae", 8), ("image-ldm", 32)):
            b = 4 if dry else batch

            def batch_lever(s: str = lever_stage, b: int = b) -> dict[str, Any]:
                return check_batch_lever(s, b, trained.get(s), plan, prepared, run, device)

            def cudnn_lever(s: str = lever_stage) -> dict[str, Any]:
                return check_cudnn_lever(s, trained.get(s), plan, prepared, run, device)

            checks += [("lever", batch_lever), ("lever", cudnn_lever)]
        checks.append(("lever", lambda: check_sample_bf16_lever(plan.timed, run, work, device)))
        for variant in VARIANTS:

            def variant_check(v: str = variant) -> dict[str, Any]:
                return check_variant(v, trained.get("image-vae"), plan, prepared, run, device, dry)

            checks.append(("lever", variant_check))
    common = {"device": str(device), "preset": size["preset"], "shape": list(size["shape"])}
    failed = 0
    for name, check in checks:
        start = time.perf_counter()
        try:
            result = check()
        except Exception as err:  # report it; the checks after it still run
            failed += 1
            detail = traceback.format_exc(limit=-3).strip().splitlines()
            emit({"check": name, **common, "error": f"{type(err).__name__}: {err}", "where": detail[-3:]})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        line = result if isinstance(result, dict) else {"seconds": round(time.perf_counter() - start, 2)}
        emit({"check": name, **common, **line})
    total = time.perf_counter() - started
    ok = failed == 0 and total <= budget_s
    done: dict[str, Any] = {"check": "done", "ok": ok, "seconds": round(total, 1), "budget_s": budget_s}
    if failed:
        done["error"] = f"{failed} check(s) failed"
    elif not ok:
        done["error"] = f"took {total:.0f} s, over the {budget_s:.0f} s budget"
    emit(done)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-dry", action="store_true", help="tiny preset at 32x32x16 on the CPU")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per stage (default 3; 1 dry)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per stage (default 20; 1 dry)")
    parser.add_argument("--levers", action="store_true", help="also time the speed levers (ratios)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="fail when the checks take longer")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.cpu_dry:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # before torch looks: the CPU even on a GPU machine
    import torch

    if not args.cpu_dry and not torch.cuda.is_available():
        emit({"check": "device", "error": "no CUDA device: run on a GPU, or pass --cpu-dry"})
        return 2
    warmup = args.warmup or (1 if args.cpu_dry else 3)
    steps = args.steps or (1 if args.cpu_dry else 20)
    checks = (warmup, steps, args.budget_s, args.levers)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return run_checks(args.work, args.cpu_dry, *checks)
    with tempfile.TemporaryDirectory(prefix="foscu-gpu-check-") as tmp:
        return run_checks(Path(tmp), args.cpu_dry, *checks)


if __name__ == "__main__":
    sys.exit(main())
