"""Fixtures: tiny data sets the tests make themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker, inherited by subprocesses
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # (two workers of 2 threads on 2
    import torch  # cores run many times slower than one each)

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist worksteal`` (the README's command), deal the ``slow`` tests out first.

    worksteal gives each of the N workers one contiguous share of the collection and lets an idle worker
    steal from the end of another's queue; the slow tests (the paper-size ones take minutes each) are put
    one after another at the head of each share, so that they start at once on different workers instead
    of meeting in one queue while the other worker runs out of work. The order is the same on every worker
    (xdist requires one collection), and without xdist nothing changes.
    """
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers < 2:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    fast = [item for item in items if not item.get_closest_marker("slow")]
    share = len(items) // workers  # worksteal's first share: len // N items
    shares: list[list[pytest.Item]] = [slow[w::workers] for w in range(workers)]
    for w in range(workers):
        take = max(0, share - len(shares[w])) if w < workers - 1 else len(fast)
        shares[w] += fast[:take]
        fast = fast[take:]
    items[:] = [item for block in shares for item in block]


TINY_SHAPE = (32, 32, 16)
TINY_SPACING = (7.5, 7.5, 12.0)


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-case phantom set at 32 x 32 x 16 in nnU-Net layout (shared, read-only)."""
    from foscu.data.phantom import write_phantom_set

    out = tmp_path_factory.mktemp("phantom") / "raw"
    write_phantom_set(out, 6, TINY_SHAPE, TINY_SPACING, seed=3, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny phantom prepared at its full 32 x 32 x 16 grid, split 3/1/2 (shared, read-only)."""
    from foscu.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare_dataset(
        tiny_phantom, out, roi=TINY_SHAPE, center="tumor", split=(0.5, 0.17, 0.33), seed=0, progress=False
    )
    return out


@pytest.fixture(scope="session")
def seg_prepared(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny phantom prepared at 32 x 32 x 16 with prepare's default split and centre (shared, read-only)."""
    from foscu.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("seg") / "prepared"
    prepare_dataset(tiny_phantom, out, roi=(32, 32, 16), progress=False)
    return out


# a segmenter in two steps: validated after each, one checkpoint
SEG_TWO_STEPS = [
    "segmentation.train.steps=2",
    "segmentation.train.val_every=1",
    "segmentation.train.checkpoint_every=2",
]

TINY_STAGES = ("label-vae", "image-vae", "vqvae", "label-ldm", "image-ldm", "vqvae-ldm", "controlnet")


@pytest.fixture(scope="session")
def tiny_run(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every generative stage trained a few steps at the tiny preset (shared, read-only)."""
    from foscu.config import load_config
    from foscu.stages import train_stage

    run = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config("tiny")
    for stage in TINY_STAGES:
        train_stage(stage, cfg, tiny_prepared, run, progress=False)
    return run


def experiment_args(prepared: Path, run: Path) -> list[str]:
    """The tiny experiment: one segmentation architecture, three samples per synthetic set."""
    return [
        "experiment",
        "--config",
        "tiny",
        "--data",
        str(prepared),
        "--run",
        str(run),
        "--set",
        "segmentation.archs=[unet]",
        "--set",
        "sample.n=3",
    ]


@pytest.fixture(scope="session")
def experiment_run(
    tiny_run: Path, tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The tiny experiment run through the CLI on a copy of ``tiny_run``: (run folder, CLI output)."""
    import shutil

    from typer.testing import CliRunner

    from foscu.cli import app

    run = tmp_path_factory.mktemp("experiment") / "run"
    shutil.copytree(tiny_run, run)  # the seven stages are trained: the experiment must skip them
    result = CliRunner().invoke(app, experiment_args(tiny_prepared, run))
    assert result.exit_code == 0, result.output
    return run, result.output


def run_with_sample_settings(tiny_run: Path, tmp_path: Path, **settings: object) -> Path:
    """A copy of the tiny run whose config.yaml's ``sample`` section has ``settings`` (sampling reads them)."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["sample"].update(settings)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run
