"""``foscu export``: the command group's typer app and its commands (cli.py registers them with its error
handling). Thin like every command: the work is in foscu/export/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

export_app = typer.Typer(no_args_is_help=True, help="Export: a shareable generator, an nnU-Net data set.")


def generator(
    run: Annotated[Path, typer.Option("--run", "--run-folder", help="run folder with the trained stages")],
    out: Annotated[Path, typer.Option("--out", help="output folder: the generator, with its model card")],
) -> None:
    """The run's generator as a self-contained folder (weights, configs, model card; no training data)."""
    from foscu.export.generator import export_generator

    record = export_generator(run, out)
    typer.echo(
        f"wrote {out}: {len(record['stages'])} stages, trained on {record['trained_on']['training']} cases; "
        f"{record['novelty']['text']} Sample with `foscu sample --generator {out}`",
        err=True,
    )


def nnunet(
    data: Annotated[Path, typer.Option("--data", help="prepared set (foscu prepare)")],
    synthetic: Annotated[
        list[Path], typer.Option("--synthetic", help="synthetic set (nnU-Net layout), repeatable")
    ],
    dataset_id: Annotated[int, typer.Option("--id", help="nnU-Net dataset id, 1-999")],
    name: Annotated[str, typer.Option("--name", help="dataset name: Dataset<ID>_<name>")],
    out: Annotated[Path, typer.Option("--out", help="nnU-Net raw folder (nnUNet_raw)")],
    synthetic_fraction: Annotated[
        float | None,
        typer.Option("--synthetic-fraction", help="synthetic cases per real imagesTr case (default: all)"),
    ] = None,
    folds: Annotated[int, typer.Option("--folds", help="cross-validation folds over the real cases")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="fold shuffle and synthetic draw")] = 0,
    preprocessed: Annotated[
        Path | None,
        typer.Option("--preprocessed", help="nnUNet_preprocessed: also write splits_final.json there"),
    ] = None,
) -> None:
    """Real cases + synthetic pairs as an nnU-Net v2 raw set whose validation folds hold real cases only."""
    from foscu.export.nnunet import SPLITS_FILE, dataset_name, export_nnunet, next_steps

    record = export_nnunet(
        data, synthetic, out, dataset_id, name, synthetic_fraction, folds, seed, preprocessed
    )
    folder = dataset_name(dataset_id, name)
    steps = "\n  ".join(next_steps(out, dataset_id, name, preprocessed))
    typer.echo(
        f"wrote {out / folder}: {len(record['real_cases'])} real and {len(record['synthetic_cases'])} "
        f"synthetic training cases, {len(record['test_cases'])} test cases; {SPLITS_FILE}: {folds} folds, "
        f"validation on real cases only. nnU-Net reads {SPLITS_FILE} from "
        f"nnUNet_preprocessed/{folder}/, not from the raw folder. Next:\n  {steps}",
        err=True,
    )
