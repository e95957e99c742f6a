"""``foscu lesions``: tumors inserted, moved or resized in real training cases (cli.py registers it with its
error handling). Thin like every command: the work is in foscu/generative/lesion_synthesis.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def lesions(
    run: Annotated[Path, typer.Option("--run", "--run-folder", help="run folder with the trained stages")],
    data: Annotated[Path, typer.Option("--data", help="prepared set (foscu prepare): its training cases")],
    out: Annotated[Path, typer.Option("--out", help="output folder (nnU-Net raw layout)")],
    n_per_case: Annotated[
        int, typer.Option("--n-per-case", min=1, help="edited copies of each training case")
    ] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    method: Annotated[
        str, typer.Option("--method", help="inpaint (latent inpainting) | blend (whole image pasted in)")
    ] = "inpaint",
    margin: Annotated[
        int, typer.Option("--margin", min=2, help="voxels around the edit that are generated (feathered)")
    ] = 3,
    sampler: Annotated[str | None, typer.Option("--sampler", help="ddpm | ddim | rflow")] = None,
    steps: Annotated[int | None, typer.Option("--steps")] = None,
    controlnet: Annotated[
        str, typer.Option("--controlnet", help="ControlNet stage folder in the run")
    ] = "controlnet",
) -> None:
    """Real training cases with tumors added, moved or resized; the image generated only around the edit."""
    from foscu.figures_lesions import write_before_after
    from foscu.generative.lesion_synthesis import synthesize_lesions

    record = synthesize_lesions(run, data, out, n_per_case, seed, method, margin, sampler, steps, controlnet)
    figure = write_before_after(out)
    typer.echo(
        f"wrote {out}: {len(record['cases'])} cases from {len(record['sources'])} training cases "
        f"({method}); before and after: {figure or 'no tumor could be placed'}",
        err=True,
    )
