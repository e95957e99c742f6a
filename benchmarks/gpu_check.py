"""GPU check: the paper preset at 160x160x64 through the real engine, one JSON line per check.

Usage:
    python benchmarks/gpu_check.py                  # on a GPU: paper preset, 160x160x64, 5 steps per stage
    python benchmarks/gpu_check.py --cpu-dry        # tiny preset at 32x32x16 on the CPU (runs in the tests)

Checks, in order (each later one needs the earlier ones):
1. ``data``: a phantom of 4 cases at the ROI size, prepared at that ROI (2 training, 1 validation, 1 test).
2. ``train``, one line per generative stage (label-VAE, image-VAE, label-LDM, image-LDM, ControlNet,
   VQ-VAE, VQ-VAE-LDM): ``--steps`` optimizer steps through ``train_stage`` -> ``fit`` at the preset's batch
   sizes; ``it_per_s`` is the engine's own figure (metrics.jsonl, training steps only), ``peak_mib`` the
   stage's peak device memory (``torch.cuda.max_memory_allocated``; on the CPU the process's peak RSS so
   far), ``seconds`` the whole stage (latent cache, validation and checkpoints included).
3. ``sample_pair``: one label -> image pair with the preset's sampler and steps (``foscu sample``'s
   ``generate``), seconds per pair.
4. ``fid``: a 2.5D FID on a few slices with the Inception network on the device (``--cpu-dry``: RadImageNet
   ResNet-50, which keeps the slices' size, so the dry run stays fast). The weights are random (the
   machine may have no network): this checks the device path and its speed, not a real FID.
5. ``seg_predict``: one U-Net multi-class training step (``train_segmenter``), then one sliding-window
   prediction of a test volume on the device (``predict_cases``).

The last line is ``{"check": "done", "ok": ...}``. Exit status 0 when every check passed within
``--budget-s`` seconds, 1 on the first failure (its line carries ``error``), 2 without a GPU unless
``--cpu-dry``.
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


def stage_overrides(steps: int) -> list[str]:
    """``steps`` optimizer steps per generative stage, validation and checkpoint once, at the end."""
    out = []
    for section in SECTION.values():
        out += [f"{section}.train.epochs=null", f"{section}.train.steps={steps}"]
        out += [f"{section}.train.val_every={steps}", f"{section}.train.checkpoint_every={steps}"]
    return out


def check_data(work: Path, size: dict[str, Any]) -> Path:
    from foscu.data.phantom import write_phantom_set
    from foscu.data.prepare import prepare_dataset

    write_phantom_set(work / "raw", 4, size["shape"], size["spacing"], seed=0, workers=1, progress=False)
    prepare_dataset(
        work / "raw", work / "prepared", roi=size["shape"], split=(0.5, 0.25, 0.25), progress=False
    )
    return work / "prepared"


def check_stage(stage: str, cfg: Any, prepared: Path, run: Path, device: Any) -> dict[str, Any]:
    from foscu.stages import train_stage

    with Meter(device) as meter:
        result = train_stage(stage, cfg, prepared, run, progress=False)
    logged = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
    train = getattr(cfg, SECTION[stage]).train
    return {
        "stage": stage,
        "steps": result.steps,
        "batch_size": train.batch_size,
        "it_per_s": round(logged[-1]["steps_per_s"], 3),
        "peak_mib": round(meter.peak_mib),
        "seconds": round(meter.seconds, 2),
    }


def check_sample(cfg: Any, run: Path, work: Path, device: Any) -> dict[str, Any]:
    from foscu.generative.sampling import generate

    with Meter(device) as meter:
        generate(
            run,
            1,
            work / "samples",
            cfg.sample.sampler,
            cfg.sample.steps,
            cfg.seed,
            batch_size=1,
            progress=False,
        )
    return {
        "sampler": cfg.sample.sampler,
        "steps": cfg.sample.steps,
        "seconds_per_pair": round(meter.seconds, 2),
        "peak_mib": round(meter.peak_mib),
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


def check_seg(cfg: Any, prepared: Path, run: Path, work: Path, device: Any) -> dict[str, Any]:
    from foscu.data.prepare import read_prepared
    from foscu.segmentation.predict import predict_cases
    from foscu.stages import train_segmenter

    folder, _ = train_segmenter("unet", "multiclass", cfg, prepared, run, progress=False)
    test = read_prepared(prepared).datalist["test"][0]
    with Meter(device) as meter:
        predict_cases(folder, {test["case_id"]: Path(test["image"])}, work / "predictions", device=device)
    return {"arch": "unet", "seconds": round(meter.seconds, 2), "peak_mib": round(meter.peak_mib)}


def run_checks(work: Path, dry: bool, steps: int, budget_s: float) -> int:
    """Every check in order; a JSON line each; 0 when all passed within ``budget_s``, else 1."""
    import torch

    from foscu.config import load_config

    size = DRY if dry else GPU
    device = torch.device("cpu" if dry else "cuda")
    started = time.perf_counter()
    seg_overrides = ["segmentation.train.steps=1", "segmentation.train.batch_size=1"]
    seg_overrides += ["segmentation.train.val_every=1", "segmentation.train.checkpoint_every=1"]
    sample_overrides = ["sample.steps=2"] if dry else []  # on the GPU: the preset's sampler and steps
    cfg = load_config(size["preset"], stage_overrides(steps) + seg_overrides + sample_overrides)
    prepared, run = work / "prepared", work / "run"
    checks: list[tuple[str, Callable[[], dict[str, Any] | Path]]] = [
        ("data", lambda: check_data(work, size)),
        *[("train", lambda s=s: check_stage(s, cfg, prepared, run, device)) for s in STAGES],
        ("sample_pair", lambda: check_sample(cfg, run, work, device)),
        ("fid", lambda: check_fid(prepared, work, size, device)),
        ("seg_predict", lambda: check_seg(cfg, prepared, run, work, device)),
    ]
    common = {"device": str(device), "preset": size["preset"], "shape": list(size["shape"])}
    for name, check in checks:
        start = time.perf_counter()
        try:
            result = check()
        except Exception as err:  # any failure ends the check: report it and exit non-zero
            detail = traceback.format_exc(limit=-3).strip().splitlines()
            emit({"check": name, **common, "error": f"{type(err).__name__}: {err}", "where": detail[-3:]})
            emit({"check": "done", "ok": False, "seconds": round(time.perf_counter() - started, 1)})
            return 1
        line = result if isinstance(result, dict) else {"seconds": round(time.perf_counter() - start, 2)}
        emit({"check": name, **common, **line})
    total = time.perf_counter() - started
    ok = total <= budget_s
    done: dict[str, Any] = {"check": "done", "ok": ok, "seconds": round(total, 1), "budget_s": budget_s}
    if not ok:
        done["error"] = f"took {total:.0f} s, over the {budget_s:.0f} s budget"
    emit(done)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-dry", action="store_true", help="tiny preset at 32x32x16 on the CPU")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per stage (default 5; 1 with --cpu-dry)"
    )
    parser.add_argument("--budget-s", type=float, default=480.0, help="fail when the checks take longer")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.cpu_dry:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # before torch looks: the CPU even on a GPU machine
    import torch

    if not args.cpu_dry and not torch.cuda.is_available():
        emit({"check": "device", "error": "no CUDA device: run on a GPU, or pass --cpu-dry"})
        return 2
    steps = args.steps or (1 if args.cpu_dry else 5)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return run_checks(args.work, args.cpu_dry, steps, args.budget_s)
    with tempfile.TemporaryDirectory(prefix="foscu-gpu-check-") as tmp:
        return run_checks(Path(tmp), args.cpu_dry, steps, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
