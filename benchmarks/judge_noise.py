"""How much the real-only judge moves between seeds: one multi-class U-Net per (variant, seed), validation only.

    python benchmarks/judge_noise.py PREPARED OUT --config proof --seeds 3 \\
        --variant base \\
        --variant batch_cosine segmentation.batch_dice=true segmentation.train.lr_schedule=cosine \\
        [--set key=value ...]

The judge of the fidelity ladder, of Table II and of the scarcity curve is the preset's real-only multi-class
U-Net; its seed-to-seed spread is the noise every one of their comparisons carries. For each ``--variant NAME
[KEY=VALUE ...]`` and seed 0..S-1 this trains that segmenter (``train_segmenter``, into OUT/<NAME>, reused
when trained) and prints one JSON line: the validation Dice per class at the weights the run keeps (the
engine's best validation step), the step it kept and whether it stopped early. A last line per variant gives
each class's mean and standard deviation over the seeds. Only the validation split is read: choose the judge
here, and let the test split judge once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

CLASSES = ("liver", "portal_vein", "hepatic_vein", "tumor")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", default="proof")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from foscu.config import load_config
    from foscu.runs import RunFolder
    from foscu.segmentation.train import run_name
    from foscu.stages import train_segmenter

    for name, *overrides in args.variant:
        cfg = load_config(args.config, args.overrides + overrides)
        rows = []
        for seed in range(args.seeds):
            other_seed = None if seed == cfg.seed else seed
            folder = RunFolder(args.out / name).seg(run_name("unet", "multiclass", False, other_seed))
            if not (folder / "metrics.json").is_file():  # trained before: reused
                train_segmenter(
                    "unet", "multiclass", cfg, args.prepared, args.out / name, progress=False, seed=seed
                )
            metrics = json.loads((folder / "metrics.json").read_text())
            best_step = metrics["best_step"]
            logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            (kept,) = [r for r in logged if r.get("step") == best_step and "val_dice" in r]
            row = {
                "variant": name,
                "overrides": overrides,
                "seed": seed,
                "val_dice": kept["val_dice"],
                "dice": {c: kept.get(f"val_dice_{c}") for c in CLASSES},
                "best_step": best_step,
                "stopped_early": metrics["stopped_early"],
                "steps": metrics["steps"],
                "seconds": metrics["seconds"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        summary: dict[str, object] = {"variant": name, "seeds": args.seeds}
        for key in ("val_dice", *CLASSES):
            values = [r["val_dice"] if key == "val_dice" else r["dice"][key] for r in rows]
            values = [v for v in values if v is not None]
            if values:
                summary[key] = {
                    "mean": round(statistics.fmean(values), 4),
                    "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                    "min": round(min(values), 4),
                }
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
