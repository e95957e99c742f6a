"""Project the paper preset's full training time from a GPU check's measured rates.

Usage:
    python benchmarks/gpu_projection.py docs/results/gpu/gpu_check-paper-160x160x64.jsonl --cases 504

For each stage of ``benchmarks/gpu_check.py``'s JSON lines, the steps the preset's schedule takes on
``--cases`` training cases (``train.epochs`` passes, counted by the engine's own ``total_steps``; a
stage given in ``train.steps`` keeps its steps) over the measured ``it_per_s``: hours per stage, for
Duo-Diffusion (label VAE, label LDM, image VAE, image LDM, ControlNet) and the baselines. ``--gpus N``
divides by N (ideal data-parallel scaling: an upper bound, not a measurement). Validation, latent caches
and checkpoints are not counted. One JSON line per stage, then the totals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DUO = ("label-vae", "label-ldm", "image-vae", "image-ldm", "controlnet")
BASELINES = ("vqvae", "vqvae-ldm")


def project(lines: list[dict], cases: int, gpus: int, preset: str = "paper") -> list[dict]:
    """Per stage: the preset's steps at ``cases`` training cases and the hours at the measured rate."""
    from foscu.config import load_config
    from foscu.engine.loop import total_steps

    cfg = load_config(preset)
    out = []
    for line in lines:
        if line.get("check") != "train" or "error" in line:
            continue
        stage = line["stage"]
        train = getattr(cfg, stage.replace("-", "_")).train
        steps = total_steps(cases, train, gpus)
        hours = steps / line["it_per_s"] / 3600
        out.append(
            {"stage": stage, "epochs": train.epochs, "batch_size": train.batch_size, "steps": steps,
             "it_per_s": line["it_per_s"], "hours": round(hours, 2)}
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("check", type=Path, help="gpu_check.py's JSON lines")
    parser.add_argument("--cases", type=int, default=504, help="training cases (paper: 504)")
    parser.add_argument("--gpus", type=int, default=1, help="ideal data-parallel GPUs (default 1)")
    args = parser.parse_args(argv)
    lines = [json.loads(x) for x in args.check.read_text().splitlines() if x.strip()]
    stages = project(lines, args.cases, args.gpus)
    for stage in stages:
        print(json.dumps(stage))
    for name, group in (("duo_diffusion", DUO), ("baselines", BASELINES)):
        hours = sum(s["hours"] for s in stages if s["stage"] in group)
        print(json.dumps({"total": name, "cases": args.cases, "gpus": args.gpus, "hours": round(hours, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
