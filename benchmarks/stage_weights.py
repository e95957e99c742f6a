"""Train every stage of the table at the tiny preset and print a digest of each stage's weights.

    python benchmarks/stage_weights.py OUT [--set key=value ...]

A 6-case phantom at 32 x 32 x 16 is prepared in OUT, then the seven generative stages and two segmentation
stages (multi-class with the config's seed, liver-only with seed 5) train into OUT/run. One line per stage:
the sha256 of its model.safetensors tensors (names and bytes, sorted; the file's metadata order varies) and
the stage. Run it on two commits and diff the output: a restructuring that keeps behaviour prints the same.
Compare runs with the same thread count (e.g. both under OMP_NUM_THREADS=1): float sums, and so the
digests, change with the number of threads.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from safetensors.torch import load_file

from foscu.config import load_config
from foscu.data.phantom import write_phantom_set
from foscu.data.prepare import prepare_dataset

GENERATIVE = ("label-vae", "image-vae", "vqvae", "label-ldm", "image-ldm", "vqvae-ldm", "controlnet")


def tensor_digest(path: Path) -> str:
    """sha256 over the tensors' names and bytes in name order (12 hex digits)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(load_file(str(path)).items()):
        digest.update(key.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def main(argv: list[str]) -> None:
    try:
        from foscu.stages import train_segmenter, train_stage
    except ImportError:  # commits before the stage table held segmentation (e.g. bd604cc), to compare with
        from foscu.generative.stages import train_stage  # type: ignore[no-redef]

        from foscu.segmentation.train import train_segmenter  # type: ignore[no-redef]

    out, overrides = Path(argv[0]), [a for a in argv[1:] if a != "--set"]  # each --set key=value
    write_phantom_set(out / "raw", 6, (32, 32, 16), (7.5, 7.5, 12.0), seed=3, workers=1, progress=False)
    prepare_dataset(
        out / "raw",
        out / "prep",
        roi=(32, 32, 16),
        center="tumor",
        split=(0.5, 0.17, 0.33),
        seed=0,
        progress=False,
    )
    cfg, run = load_config("tiny", overrides), out / "run"
    for stage in GENERATIVE:
        train_stage(stage, cfg, out / "prep", run, progress=False)
    train_segmenter("unet", "multiclass", cfg, out / "prep", run, progress=False)
    train_segmenter("unet", "binary", cfg, out / "prep", run, progress=False, seed=5)
    for path in sorted(run.rglob("model.safetensors")):
        print(tensor_digest(path), path.parent.relative_to(run).as_posix())


if __name__ == "__main__":
    main(sys.argv[1:])
