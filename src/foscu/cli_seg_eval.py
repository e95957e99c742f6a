"""The ``seg`` group (train, predict) and the ``evaluate`` group (seg, fid) of the command line; cli.py
registers each command with its error handling. Thin like every command: the work is in foscu/stages.py,
foscu/segmentation/ and foscu/evaluation/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

seg_app = typer.Typer(no_args_is_help=True, help="3D U-Net segmentation: train and predict.")
evaluate_app = typer.Typer(no_args_is_help=True, help="Evaluate: segmentation Dice/HD95, 2.5D FID.")


def evaluate_fid_command(
    real: Annotated[Path, typer.Option("--real", help="real volumes: nnU-Net layout or folder of .nii.gz")],
    fake: Annotated[Path, typer.Option("--fake", help="synthetic volumes, same shape as the real ones")],
    out: Annotated[Path, typer.Option("--out", help="JSON to write")] = Path("fid.json"),
    features: Annotated[
        str | None,
        typer.Option("--features", help="frd (radiomics-style, no download) | inception | radimagenet"),
    ] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="network weight file")] = None,
    slice_stride: Annotated[int | None, typer.Option("--slice-stride", help="keep every k-th slice")] = None,
    central_fraction: Annotated[
        float | None, typer.Option("--central-fraction", help="keep this central fraction of slices per axis")
    ] = None,
    download: Annotated[
        bool, typer.Option("--download", help="fetch the inception weights (hash-checked) if absent")
    ] = False,
) -> None:
    """2.5D Fréchet distances per plane (axial, coronal, sagittal) and their mean: FRD by default, or FID."""
    from foscu.evaluation.fid import evaluate_fid

    result = evaluate_fid(real, fake, features, slice_stride, central_fraction, weights, out, download)
    typer.echo(f"{result['metric']} mean {result['mean']:.4g} ({result['features']}); wrote {out}", err=True)


def seg_train_command(
    arch: Annotated[str, typer.Option("--arch", help="unet | resunet | wideresunet | dynunet | vnet")],
    task: Annotated[str, typer.Option("--task", help="binary (liver-only) | multiclass")],
    data: Annotated[Path, typer.Option("--data", help="prepared set (foscu prepare)")],
    run: Annotated[
        Path, typer.Option("--run", "--run-folder", help="run folder; writes RUN/seg/<arch>-<task>-<data>/")
    ],
    config: Annotated[str, typer.Option("--config", help="preset (tiny, demo, paper) or YAML file")] = "demo",
    synthetic: Annotated[
        list[Path] | None, typer.Option("--synthetic", help="synthetic set (nnU-Net layout), repeatable")
    ] = None,
    synthetic_fraction: Annotated[
        float | None, typer.Option("--synthetic-fraction", help="synthetic cases per real training case")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="config override key=value")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue a stopped run")] = False,
) -> None:
    """Train a 3D U-Net (Dice + BCE / CE, AdamW, early stopping on validation Dice) on real [+ synthetic]."""
    from foscu.config import load_config
    from foscu.stages import train_segmenter

    cfg = load_config(config, overrides)
    folder, result = train_segmenter(
        arch,
        task,  # type: ignore[arg-type]  # train_segmenter checks it
        cfg,
        data,
        run,
        synthetic,
        synthetic_fraction,
        resume,
    )
    typer.echo(f"trained {result.steps} steps, best {result.best}; wrote {folder}", err=True)


def seg_predict_command(
    run: Annotated[Path, typer.Option("--run", help="segmentation run (RUN/seg/<name>) or RUN with one")],
    images: Annotated[Path, typer.Option("--images", help="<case>_0000.nii.gz folder or nnU-Net set root")],
    out: Annotated[Path, typer.Option("--out", help="output folder: <case>.nii.gz label volumes")],
) -> None:
    """Sliding-window prediction: one label NIfTI per image, on the image's grid and affine."""
    from foscu.segmentation.predict import predict_folder

    written = predict_folder(run, images, out)
    typer.echo(f"predicted {len(written)} cases to {out}", err=True)


def evaluate_seg_command(
    pred: Annotated[Path, typer.Option("--pred", help="predicted labels: folder of <case>.nii.gz")],
    gt: Annotated[Path, typer.Option("--gt", help="ground truth: <case>.nii.gz folder or nnU-Net set root")],
    task: Annotated[str, typer.Option("--task", help="binary (liver-only) | multiclass")],
    out: Annotated[Path, typer.Option("--out", help="JSON to write")] = Path("metrics.json"),
    empty: Annotated[
        str, typer.Option("--empty", help="empty classes: nnunet (FP on an absent class scores 0) | monai")
    ] = "nnunet",
) -> None:
    """Dice and HD95 per case and class, class means, false-positive tumor volume -> metrics.json."""
    from foscu.evaluation.segmentation_metrics import evaluate_segmentation

    result = evaluate_segmentation(pred, gt, task, out, empty)
    typer.echo(
        f"foreground mean Dice {result['foreground_mean']['dice']} over {result['n_cases']} cases; "
        f"wrote {out}",
        err=True,
    )
