"""Whole-ROI against patch-wise reconstruction by a run's image VAE: does the train/inference mismatch cost?

    OMP_NUM_THREADS=1 python benchmarks/patchwise_reconstruction.py RUN PREPARED [--split validation]

FOSCU's image VAEs train on random patches (``image_vae.patch_size``) and encode / decode the whole ROI for
the latent caches, the ladder's rung (b) and sampling, so GroupNorm sees other statistics than in training.
This reconstructs each image of ``--split`` three ways — the whole ROI through encode -> decode (what FOSCU
does), and MONAI's sliding window over the training patch size at 50 % and 75 % overlap (Gaussian blend) —
and prints one JSON line per way: the contrast each structure keeps (evaluation/reconstruction.py, no
segmenter) and the mean absolute error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from monai.inferers import sliding_window_inference

    from foscu.data.nifti import read_nifti
    from foscu.data.prepare import read_prepared
    from foscu.evaluation.reconstruction import StructureScores
    from foscu.generative.autoencoders import decode, encode
    from foscu.labels import labels_for_task
    from foscu.runs import RunFolder
    from foscu.stages import load_stage

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    args = parser.parse_args()
    nets, _, info = load_stage(RunFolder(args.run), "image-vae")
    vae = nets["autoencoder"].eval()
    patch = tuple((info.get("section") or {}).get("patch_size") or ()) or None
    items = read_prepared(args.prepared).datalist[args.split]

    def through(x: torch.Tensor) -> torch.Tensor:
        return decode(vae, encode(vae, x)[0]).float()

    ways = {"whole ROI": None} | (
        {} if patch is None else {"patches, 50 % overlap": 0.5, "patches, 75 % overlap": 0.75}
    )
    for way, overlap in ways.items():
        scores, errors = StructureScores(labels_for_task("multiclass")), []
        for item in items:
            x = torch.from_numpy(np.asarray(read_nifti(item["image"]).array, np.float32))[None, None]
            y = torch.from_numpy(read_nifti(item["label"], label=True).array.astype(np.int64))[None]
            with torch.no_grad():
                if overlap is None:
                    r = through(x)
                else:
                    r = sliding_window_inference(x, patch, 4, through, overlap=overlap, mode="gaussian")
            r = r.clamp(0, 1)
            scores.add(x, r, y)
            errors.append(float((r - x).abs().mean()))
        result = {k.removeprefix("val_"): v for k, v in scores.result().items() if "contrast" in k}
        print(
            json.dumps(
                {"way": way, "split": args.split, "cases": len(items), "l1": float(np.mean(errors)), **result}
            )
        )


if __name__ == "__main__":
    main()
