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


class RunFolder:
    """Every path inside a run folder (DESIGN.md: 'A run folder'); stages find each other only through it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage(self, name: str) -> Path:
        return self.root / name

    def model(self, name: str) -> Path:
        return self.root / name / "model.safetensors"

    def is_trained(self, name: str) -> bool:
        """A stage is done when its training finished (metrics.json) and its model file exists."""
        return (self.root / name / "metrics.json").is_file() and self.model(name).is_file()

    def latents(self, kind: str) -> Path:
        return self.root / "latents" / f"{kind}.safetensors"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    def seg(self, arch: str, task: str, data: str) -> Path:
        return self.root / "seg" / f"{arch}-{task}-{data}"
