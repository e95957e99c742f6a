"""Atomic file writes, and RunFolder: every path inside a run folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A killed process leaves at most a ``.tmp-*`` file, never a half-written file under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_folder(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a whole folder under a temporary name and rename it into place at the end.

    Either the complete folder appears under ``path`` or nothing does.
    """
    from foscu.errors import InputError

    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise InputError(path, "output folder exists and is not empty (choose another or remove it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def seg_stage(name: str) -> str:
    """The stage name of segmentation run ``name`` (``<arch>-<task>-<data>[-seed<k>]``): ``seg/<name>``."""
    return f"seg/{name}"


# the files every stage folder holds (DESIGN: "A run folder"); one origin for their names
CONFIG = "config.yaml"  # what the stage was trained with: enough to rebuild its networks alone
MODEL = "model.safetensors"  # the deliverable weights (best by the monitored score, else final; EMA)
STATE = "train_state.pt"  # optimiser state of the last checkpoint (weights_only): a stopped run resumes
METRICS = "metrics.json"  # written last: its presence means training finished


class RunFolder:
    """Every path inside a run folder (docs/design.md: "The run folder"); stages find each other only here.

    A stage's name is its folder: ``label-vae``, ``controlnet``, ``controlnet-label_latent`` (an ablation),
    ``seg/unet-multiclass-real`` (a segmentation run).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------ one stage
    def stage(self, name: str) -> Path:
        return self.root / name

    def config(self, name: str) -> Path:
        return self.stage(name) / CONFIG

    def model(self, name: str) -> Path:
        return self.stage(name) / MODEL

    def state(self, name: str) -> Path:
        return self.stage(name) / STATE

    def metrics(self, name: str) -> Path:
        return self.stage(name) / METRICS

    def is_trained(self, name: str) -> bool:
        """A stage is done when its training finished (metrics.json) and its model file exists."""
        return self.metrics(name).is_file() and self.model(name).is_file()

    def is_stopped(self, name: str) -> bool:
        """A stage that began and has not finished: it resumes from its checkpoint."""
        return self.state(name).is_file() and not self.metrics(name).is_file()

    def seg(self, name: str) -> Path:
        """A segmentation run's folder, ``seg/<arch>-<task>-<real|real+synthetic>[-seed<k>]``."""
        return self.stage(seg_stage(name))

    # ------------------------------------------------ the run as a whole
    @property
    def identity(self) -> Path:
        """run.json: the prepared set (ROI, spacing, labels) every stage of the run was trained on."""
        return self.root / "run.json"

    @property
    def run_config(self) -> Path:
        """The config the run's stages were last trained with (``foscu sample`` reads its defaults)."""
        return self.root / CONFIG

    @property
    def experiment_record(self) -> Path:
        return self.root / "experiment.json"

    def latents(self, kind: str) -> Path:
        return self.root / "latents" / f"{kind}.safetensors"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def baseline(self, name: str) -> Path:
        """Table I's other rows: ``image-ldm``, ``vqvae-ldm`` samples, ``vae-reconstruction``."""
        return self.root / "baselines" / name

    def ablation(self, condition: str) -> Path:
        """Samples of the ControlNet trained on another ``condition`` (experiment.ablation)."""
        return self.root / "ablation" / condition

    def ladder(self, rung: str) -> Path:
        """The fidelity ladder's images of one rung (``vae``, ``mask_to_image``, ``test_masks``)."""
        return self.root / "ladder" / rung

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    def evidence(self, name: str) -> Path:
        """One evidence file of the experiment: ``evaluation/<name>.json`` (table1, ladder, table2, ...)."""
        return self.evaluation / f"{name}.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"


RunPath = Path | RunFolder  # a run folder by its path, or as a RunFolder (an export's GeneratorFolder)


def as_run(root: str | RunPath) -> RunFolder:
    """``root`` as a RunFolder; one given (an exported generator's ``GeneratorFolder``) stays as it is."""
    return root if isinstance(root, RunFolder) else RunFolder(root)
