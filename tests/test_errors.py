"""InputError, the one bad-input exception: it names the file or option at fault and the problem."""

from __future__ import annotations

from pathlib import Path

from foscu.errors import InputError


def test_the_message_is_the_path_then_the_problem():
    err = InputError(Path("data") / "case.nii.gz", "file not found")
    assert err.path == "data/case.nii.gz" and err.problem == "file not found"
    assert str(err) == "data/case.nii.gz: file not found"
    assert str(InputError("--steps", "must be >= 1, got 0")) == "--steps: must be >= 1, got 0"
