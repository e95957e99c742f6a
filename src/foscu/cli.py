"""The ``foscu`` command line. Each command builds its inputs and makes ONE call; no logic here.

Heavy imports live inside the commands so ``foscu --help`` is instant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec

import typer

from foscu import cli_export, cli_lesions, cli_seg_eval
from foscu.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="FOSCU: synthetic hepatic MRI + labels via Duo-Diffusion, and whether they help 3D U-Nets.",
)


app.add_typer(cli_seg_eval.seg_app, name="seg")
app.add_typer(cli_seg_eval.evaluate_app, name="evaluate")
app.add_typer(cli_export.export_app, name="export")


@app.callback()
def _root() -> None:
    """FOSCU: synthetic hepatic MRI + labels via Duo-Diffusion, and whether they help 3D U-Nets."""


P = ParamSpec("P")


def _command(group: typer.Typer, name: str | None = None) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Register a command on ``group``; bad input (InputError) prints ``error: <message>`` and exits 2."""

    def register(command: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                command(*args, **kwargs)
            except InputError as err:
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(code=2) from None

        group.command(name)(run)
        return run

    return register


_command(cli_export.export_app, "generator")(cli_export.generator)
_command(cli_export.export_app, "nnunet")(cli_export.nnunet)
_command(app, "lesions")(cli_lesions.lesions)
_command(cli_seg_eval.evaluate_app, "fid")(cli_seg_eval.evaluate_fid_command)
_command(cli_seg_eval.seg_app, "train")(cli_seg_eval.seg_train_command)
_command(cli_seg_eval.seg_app, "predict")(cli_seg_eval.seg_predict_command)
_command(cli_seg_eval.evaluate_app, "seg")(cli_seg_eval.evaluate_seg_command)


@_command(app)
def phantom(
    out: Annotated[Path, typer.Argument(help="output folder (nnU-Net v2 raw layout)")],
    cases: Annotated[int, typer.Option("--cases", min=1, help="number of cases")] = 40,
    shape: Annotated[tuple[int, int, int], typer.Option("--shape", help="voxels X Y Z")] = (160, 160, 64),
    spacing: Annotated[tuple[float, float, float], typer.Option("--spacing", help="mm per voxel X Y Z")] = (
        1.5,
        1.5,
        3.0,
    ),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=0, help="processes (0: all cores)")] = 0,
) -> None:
    """Generate the embedded data set: hepatobiliary-phase abdominal MRI phantoms with labels."""
    from foscu.data.phantom import write_phantom_set

    tumors = write_phantom_set(out, cases, shape, spacing, seed, workers or None)
    n_free = sum(1 for n in tumors.values() if n == 0)
    typer.echo(f"wrote {len(tumors)} cases ({n_free} tumor-free) to {out}", err=True)


@_command(app)
def prepare(
    raw: Annotated[Path, typer.Argument(help="raw set in nnU-Net v2 layout (phantom, converted DICOM, ...)")],
    out: Annotated[Path, typer.Argument(help="output folder: the prepared set")],
    roi: Annotated[tuple[int, int, int], typer.Option("--roi", help="ROI voxels X Y Z")] = (160, 160, 64),
    center: Annotated[
        str, typer.Option("--center", help="tumor | liver | CSV of voxel centres (case_id,x,y,z)")
    ] = "tumor",
    split: Annotated[
        tuple[float, float, float], typer.Option("--split", help="train / validation / test fractions")
    ] = (0.7, 0.1, 0.2),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    labels: Annotated[
        str, typer.Option("--labels", help="multiclass | binary (all foreground -> liver)")
    ] = "multiclass",
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="record invalid cases in preparation.json and go on")
    ] = False,
    label_map: Annotated[
        list[str] | None,
        typer.Option("--map", help="SOURCE=TARGET: foreign label name/value -> FOSCU label (repeat)"),
    ] = None,
) -> None:
    """Crop the lesion-centred ROI, scale to [0, 1], map labels, split by patient -> datalist.json."""
    from foscu.data.prepare import prepare_dataset

    record = prepare_dataset(
        raw,
        out,
        roi,
        center,
        split,
        seed,
        labels,  # type: ignore[arg-type]  # prepare_dataset checks it
        skip_invalid,
        label_map=label_map,
    )
    counts = record["counts"]
    typer.echo(
        f"prepared {sum(counts.values())} cases to {out}: {counts['training']} training, "
        f"{counts['validation']} validation, {counts['test']} test; {len(record['skipped'])} skipped",
        err=True,
    )


@_command(app)
def view(
    volume: Annotated[Path, typer.Argument(help="NIfTI image")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write")],
    label: Annotated[Path | None, typer.Option("--label", help="label NIfTI to overlay")] = None,
) -> None:
    """Axial / coronal / sagittal views through the lesion with a coloured label overlay."""
    from foscu.viz import save_view

    save_view(volume, out, label)
    typer.echo(f"wrote {out}", err=True)


@_command(app)
def convert(
    dicom_root: Annotated[Path, typer.Argument(help="folder tree of DICOM files (any names, any depth)")],
    out: Annotated[Path, typer.Argument(help="output folder: nnU-Net v2 raw layout + conversion.json")],
    series: Annotated[
        str | None, typer.Option("--series", help="keep series whose SeriesDescription matches (regex)")
    ] = None,
) -> None:
    """DICOM series -> one NIfTI each (anonymous case ids) + conversion.json; faulty series are refused."""
    from foscu.data.dicom import convert_dicom

    record = convert_dicom(dicom_root, out, series)
    typer.echo(
        f"converted {len(record['series'])} series to {out}; {len(record['refused'])} refused, "
        f"{len(record['not_selected'])} not selected, {len(record['skipped_files'])} files skipped "
        "(see conversion.json)",
        err=True,
    )


@_command(app, "import")
def import_command(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="msd | totalsegmentator | ircadb | chaos")],
    source: Annotated[Path, typer.Argument(help="the data set folder, in its published layout")],
    out: Annotated[Path, typer.Argument(help="output folder: nnU-Net v2 raw layout with FOSCU labels")],
    label_map: Annotated[
        list[str] | None,
        typer.Option("--map", help="SOURCE=TARGET: structure name/value -> FOSCU label (repeat)"),
    ] = None,
    classes: Annotated[
        Path | None,
        typer.Option(
            "--classes",
            help="class map JSON (value -> name) for multi-label files without a label table in their "
            "header (TotalSegmentator --ml writes one); where they have one, it must agree",
        ),
    ] = None,
    sequence: Annotated[
        str, typer.Option("--sequence", help="CHAOS: T2SPIR | T1DUAL/InPhase | T1DUAL/OutPhase")
    ] = "T2SPIR",
) -> None:
    """A public liver set (MSD, TotalSegmentator, 3D-IRCADb, CHAOS) -> raw set with FOSCU's label map."""
    from foscu.data.label_import import import_labels

    record = import_labels(fmt, source, out, label_map, classes, sequence)
    typer.echo(
        f"imported {len(record['cases'])} cases to {out}: {record['mapping']}; "
        f"background: {record['unmapped_to_background']} (see import.json)",
        err=True,
    )


@_command(app)
def train(
    stage: Annotated[
        str,
        typer.Argument(help="label-vae | label-ldm | image-vae | image-ldm | controlnet | vqvae | vqvae-ldm"),
    ],
    data: Annotated[Path, typer.Option("--data", help="prepared set (foscu prepare)")],
    run: Annotated[
        Path, typer.Option("--run", "--run-folder", help="run folder; stages find each other here")
    ],
    config: Annotated[str, typer.Option("--config", help="preset (tiny, demo, paper) or YAML file")] = "demo",
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the stage's last checkpoint")
    ] = False,
    folder: Annotated[
        str | None, typer.Option("--folder", help="stage folder name (ablations side by side)")
    ] = None,
) -> None:
    """Train one Duo-Diffusion stage (also under torchrun --nproc_per_node=N -m foscu train ...)."""
    from foscu.config import load_config
    from foscu.stages import train_stage

    result = train_stage(stage, load_config(config, overrides), data, run, resume=resume, folder_name=folder)
    typer.echo(f"{stage}: {result.steps} steps in {result.seconds:.1f} s; {result.last}", err=True)


@_command(app)
def sample(
    out: Annotated[Path, typer.Option("--out", help="output folder (nnU-Net layout)")],
    run: Annotated[Path | None, typer.Option("--run", "--run-folder", help="run with trained stages")] = None,
    generator: Annotated[
        Path | None, typer.Option("--generator", help="exported generator (instead of --run)")
    ] = None,
    n: Annotated[int, typer.Option("--n", "--num-samples", min=1, help="number of pairs")] = 4,
    sampler: Annotated[
        str | None, typer.Option("--sampler", help="ddpm | ddim | rflow (default: config)")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="sampling steps (default: config)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="label volumes -> images (mask to image)")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="duo | image-ldm | vqvae-ldm (baselines)")] = "duo",
    controlnet: Annotated[
        str, typer.Option("--controlnet", help="ControlNet stage folder in the run")
    ] = "controlnet",
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    conditioning_scale: Annotated[
        float | None, typer.Option("--conditioning-scale", min=0, help="ControlNet residuals x (config)")
    ] = None,
    tumor_prevalence: Annotated[
        float | None, typer.Option("--tumor-prevalence", min=0, max=1, help="share of tumor labels")
    ] = None,
) -> None:
    """Generate synthetic (image, label) pairs: label LDM, then image LDM under ControlNet."""
    from foscu.export.generator import sampling_source
    from foscu.generative.generate import generate

    source = sampling_source(run, generator)
    generate(
        source,
        n,
        out,
        sampler,
        steps,
        seed,
        labels,
        model,
        controlnet,
        batch_size,
        True,
        conditioning_scale=conditioning_scale,
        tumor_prevalence=tumor_prevalence,
    )
    typer.echo(f"wrote {out}", err=True)


@_command(app)
def experiment(
    data: Annotated[Path, typer.Option("--data", help="prepared set (foscu prepare)")],
    run: Annotated[Path, typer.Option("--run", "--run-folder", help="run folder (resumable)")],
    config: Annotated[str, typer.Option("--config", help="preset (tiny, demo, paper) or YAML file")] = "demo",
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value")] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="step groups: train, sample, table1, fidelity, table2, scarcity, report"),
    ] = None,
) -> None:
    """The paper's whole protocol: every stage, sampling, Tables I and II, fidelity, report (resumable)."""
    from foscu.experiment import run_experiment

    report = run_experiment(config, data, run, overrides or [], only or [])
    typer.echo(f"report: {report}", err=True)


@_command(app)
def report(run: Annotated[Path, typer.Argument(help="run folder")]) -> None:
    """Write RUN/report.html (self-contained) and RUN/report.md from what the run holds."""
    from foscu.report import build_report

    html_path, md_path = build_report(run)
    typer.echo(f"wrote {html_path} and {md_path}", err=True)


@_command(app)
def demo(
    out: Annotated[Path, typer.Option("--out", help="folder for the phantom, prepared set and run")] = Path(
        "foscu-demo"
    ),
    config: Annotated[str, typer.Option("--config", help="preset or YAML file")] = "demo",
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override: key.sub=value")] = None,
    cases: Annotated[
        int | None, typer.Option("--cases", min=6, help="phantom cases (70/10/20 split)")
    ] = None,
) -> None:
    """phantom -> prepare -> experiment -> report on the embedded data set (2 CPU cores, <= 15 min).

    ``--config proof --cases 60`` is the proof run (docs/results/proof/).
    """
    from foscu.demo import run_demo

    report_path = run_demo(out, config, overrides, cases=cases)
    typer.echo(f"report: {report_path}", err=True)


def main() -> None:
    """Entry point used by ``python -m foscu``."""
    app(prog_name="foscu")


if __name__ == "__main__":
    main()
