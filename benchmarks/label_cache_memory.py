"""Peak host memory of building the label-latent cache (issue 10 item 10): N random 5-class label volumes
at 160x160x64 through a small AutoencoderKL, as ``ensure_latents`` encodes a training split.

    OMP_NUM_THREADS=1 /usr/bin/time -v python benchmarks/label_cache_memory.py 32   # "Maximum resident set size"

Measured on 2 shared CPU cores: before the per-batch one-hot 1.23 GB (8 cases) / 3.57 GB (32 cases),
after 0.96 GB / 1.13 GB.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from foscu.config import AutoencoderStage
from foscu.data.loaders import SplitVolumes
from foscu.generative import latents
from foscu.generative.autoencoders import build_autoencoder


def main(n: int, shape: tuple[int, int, int] = (160, 160, 64)) -> None:
    torch.set_num_threads(1)
    labels = torch.randint(0, 5, (n, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    volumes = SplitVolumes([f"case_{i}" for i in range(n)], torch.zeros((0,)), labels)
    network = {
        "channels": [4, 4],
        "num_res_blocks": 1,
        "latent_channels": 2,
        "attention_levels": [False, False],
    }
    network |= {
        "norm_num_groups": 2,
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
    }
    vae = build_autoencoder(AutoencoderStage(autoencoder=network), 5)["autoencoder"]
    with tempfile.TemporaryDirectory() as tmp:
        encoder = Path(tmp) / "label-vae.safetensors"
        encoder.write_bytes(b"stand-in: only its size and time stamp are read")
        cache = Path(tmp) / "label.safetensors"
        latents.build_cache(cache, vae, encoder, {"training": volumes}, "label", 5, torch.device("cpu"), 0)
        print(f"{n} cases at {shape}: cache of {cache.stat().st_size / 2**20:.1f} MiB written", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
