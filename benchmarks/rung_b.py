"""Rung (b) of the fidelity ladder for image-VAE variants: one real-only judge, several autoencoders.

    python benchmarks/rung_b.py PREPARED OUT --config proof \\
        --variant base \\
        --variant weighted image_vae.structure_weight=10 image_vae.train.steps=2000 \\
        [--split validation] [--set key=value ...]

Trains the real-only multi-class U-Net of the preset once (OUT/judge, reused when it is there), then for
each ``--variant NAME [KEY=VALUE ...]`` the image-VAE stage with those overrides (OUT/<NAME>/image-vae,
reused when trained), reconstructs the ``--split`` images (validation by default: choose settings there;
the test split judges once) exactly as the ladder does (the whole ROI through encode -> decode, clamped to
[0, 1]) and prints one JSON line per variant: the judge's Dice per class on the reconstructions against the
real masks (nnU-Net's empty-class rule, as the ladder), each class's fraction of rung (a) (the judge on the
real images of the split), the contrast each structure keeps (evaluation/reconstruction.py, no segmenter),
the mean absolute error and the training seconds. The first line is rung (a).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CLASSES = ("liver", "portal_vein", "hepatic_vein", "tumor")


def _mean_dice(metrics: dict[str, Any]) -> dict[str, float | None]:
    return {c: metrics["mean"].get(c, {}).get("dice") for c in CLASSES}


def judge(cfg: Any, prepared: Path, out: Path) -> Path:
    """The real-only multi-class U-Net of ``cfg`` (reused when its weights are there)."""
    from foscu.runs import RunFolder
    from foscu.stages import train_segmenter

    folder = RunFolder(out / "judge").seg("unet-multiclass-real")
    if (folder / "model.safetensors").is_file() and (folder / "metrics.json").is_file():
        return folder
    folder, _ = train_segmenter("unet", "multiclass", cfg, prepared, out / "judge", progress=False)
    return folder


def reconstruct(run: Path, images: dict[str, np.ndarray], affines: dict[str, np.ndarray], out: Path) -> dict:
    """Each image through the run's image VAE (whole ROI), written as NIfTI; returns case -> path."""
    from foscu.data.layout import image_path
    from foscu.data.nifti import write_nifti
    from foscu.generative.autoencoders import decode, encode
    from foscu.runs import RunFolder
    from foscu.stages import load_stage

    vae = load_stage(RunFolder(run), "image-vae")[0]["autoencoder"].eval()
    paths = {}
    with torch.no_grad():
        for case_id, image in images.items():
            x = torch.from_numpy(image)[None, None]
            recon = decode(vae, encode(vae, x)[0]).float().clamp(0, 1)[0, 0].numpy()
            paths[case_id] = image_path(out, case_id)
            write_nifti(paths[case_id], recon, affines[case_id])
    return paths


def score(
    judge_folder: Path, images: dict[str, Path], masks: dict[str, Path], out: Path
) -> dict[str, float | None]:
    from foscu.evaluation.segmentation_metrics import evaluate_cases
    from foscu.segmentation.predict import predict_cases

    preds = predict_cases(judge_folder, images, out, overwrite=True, progress=False)
    return _mean_dice(evaluate_cases({c: (preds[c], masks[c]) for c in images}, "multiclass"))


def structures(
    real: dict[str, np.ndarray], recon: dict[str, Path], labels: dict[str, np.ndarray], label_map: dict
) -> dict[str, float]:
    from foscu.data.nifti import read_nifti
    from foscu.evaluation.reconstruction import StructureScores

    scores = StructureScores(label_map)
    for case_id, image in real.items():
        rec = read_nifti(recon[case_id]).array
        scores.add(
            torch.from_numpy(image)[None, None],
            torch.from_numpy(np.asarray(rec, dtype=np.float32))[None, None],
            torch.from_numpy(labels[case_id].astype(np.int64))[None],
        )
    out = scores.result()
    errors = [float(np.abs(read_nifti(recon[c]).array - real[c]).mean()) for c in real]
    out["mean_abs_error"] = float(np.mean(errors))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", default="proof")
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE]")
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from foscu.config import load_config
    from foscu.data.nifti import read_nifti
    from foscu.data.prepare import read_prepared
    from foscu.stages import train_stage

    prepared = read_prepared(args.prepared)
    cases = prepared.datalist[args.split]
    images = {c["case_id"]: np.asarray(read_nifti(Path(c["image"])).array, np.float32) for c in cases}
    masks = {c["case_id"]: Path(c["label"]) for c in cases}
    labels = {c: np.asarray(read_nifti(p, label=True).array) for c, p in masks.items()}
    affines = {c: read_nifti(p, label=True).affine for c, p in masks.items()}
    base_cfg = load_config(args.config, args.overrides)
    judge_folder = judge(base_cfg, args.prepared, args.out)
    real = score(judge_folder, {c["case_id"]: Path(c["image"]) for c in cases}, masks, args.out / "pred-real")
    print(json.dumps({"rung": "(a) real", "split": args.split, "n": len(cases), "dice": real}), flush=True)
    for name, *overrides in args.variant:
        cfg = load_config(args.config, args.overrides + overrides)
        run = args.out / name
        start = time.perf_counter()
        if not (run / "image-vae" / "metrics.json").is_file():
            train_stage("image-vae", cfg, args.prepared, run, progress=False)
        seconds = time.perf_counter() - start
        recon = reconstruct(run, images, affines, args.out / f"recon-{name}-{args.split}")
        dice = score(judge_folder, recon, masks, args.out / f"pred-{name}-{args.split}")
        fraction = {
            c: None if dice[c] is None or not real[c] else round(dice[c] / real[c], 3) for c in CLASSES
        }
        line = {
            "rung": "(b) image-VAE reconstructions",
            "variant": name,
            "overrides": overrides,
            "split": args.split,
            "dice": dice,
            "fraction_of_a": fraction,
            "structures": structures(images, recon, labels, prepared.labels),
            "train_seconds": round(seconds, 1),
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
