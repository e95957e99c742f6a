"""FOSCU's image VAE against MAISI's architecture, both trained from scratch at the same budget.

    python benchmarks/maisi_vs_vae.py PREPARED OUT [--config PRESET] [--maisi JSON] [--set key=value ...]

Trains stage image-vae twice on the prepared set, with the config's image_vae section (same steps, batch,
lr, patch, loss): once as FOSCU's AutoencoderKL (OUT/foscu) and once as MONAI's AutoencoderKlMaisi with
MAISI's published configuration, ``--maisi`` overriding its arguments (OUT/maisi; e.g.
'{"num_channels": [8, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 4}' for a CPU). Then
reconstructs the test split (the validation split if there is no test split) and prints, per network: the
parameter count, the training seconds, the mean L1 of the reconstructions and, per structure, the contrast
kept: (mean inside the structure - mean in a 2-voxel shell around it) in the reconstruction over the same in
the real image, pooled over the cases (1 = kept, 0 = blurred away). A proxy for the ladder's rung (b), which
scores the reconstructions with a real-only segmenter; this script trains none.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_dilation

from foscu.config import load_config
from foscu.data.loaders import load_split
from foscu.data.prepare import read_prepared
from foscu.generative.autoencoders import decode, encode
from foscu.runs import RunFolder
from foscu.stages import load_stage, train_stage


def contrast_kept(real: np.ndarray, recon: np.ndarray, labels: np.ndarray, value: int) -> float | None:
    """Pooled over cases: the structure-minus-shell contrast of ``recon`` over that of ``real``."""
    real_sum = recon_sum = 0.0
    for x, y, label in zip(real, recon, labels, strict=True):
        inside = label == value
        if not inside.any():
            continue
        shell = binary_dilation(inside, iterations=2) & ~inside
        if not shell.any():
            continue
        real_sum += float(x[inside].mean() - x[shell].mean())
        recon_sum += float(y[inside].mean() - y[shell].mean())
    return None if real_sum == 0.0 else recon_sum / real_sum


def reconstruct(run: Path, images: torch.Tensor) -> torch.Tensor:
    """The test images through the trained image VAE of ``run``, two at a time."""
    net = load_stage(RunFolder(run), "image-vae")[0]["autoencoder"]
    with torch.no_grad():
        return torch.cat([decode(net, encode(net, images[i : i + 2])[0]) for i in range(0, len(images), 2)])


def main(argv: list[str]) -> None:
    prepared_root, out = Path(argv[0]), Path(argv[1])
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    preset = options.pop("--config", "proof")
    maisi = json.loads(options.pop("--maisi", "{}"))
    sets = [v for k, v in zip(argv[2::2], argv[3::2], strict=True) if k == "--set"]
    variants = {
        "foscu": sets,
        "maisi": [*sets, "image_vae.pretrained=maisi", f"image_vae.maisi={json.dumps(maisi)}"],
    }
    prepared = read_prepared(prepared_root)
    split = load_split(prepared, "test")
    if len(split) == 0:
        split = load_split(prepared, "validation")
    real, labels = split.images.numpy()[:, 0], split.labels.numpy()
    names = [n for n in prepared.labels if prepared.labels[n] != 0]
    print(f"{'network':8} {'params':>10} {'seconds':>8} {'L1':>7} " + " ".join(f"{n:>13}" for n in names))
    for variant, overrides in variants.items():
        cfg = load_config(preset, overrides)
        started = time.perf_counter()
        train_stage("image-vae", cfg, prepared_root, out / variant, progress=False)
        seconds = time.perf_counter() - started
        recon = reconstruct(out / variant, split.images).numpy()[:, 0]
        params = sum(
            p.numel()
            for p in load_stage(RunFolder(out / variant), "image-vae")[0]["autoencoder"].parameters()
        )
        l1 = float(np.abs(recon - real).mean())
        kept = [contrast_kept(real, recon, labels, prepared.labels[n]) for n in names]
        cells = " ".join(f"{'-' if k is None else f'{k:.2f}':>13}" for k in kept)
        print(f"{variant:8} {params:>10} {seconds:>8.1f} {l1:>7.4f} {cells}")


if __name__ == "__main__":
    main(sys.argv[1:])
