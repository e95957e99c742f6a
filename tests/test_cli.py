"""The command line itself: every command is there, ``--help`` loads no torch, and bad input is one line on
stderr with exit code 2 while a bug still shows its traceback. (Each command's own refusals are tested
with the module it calls.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from foscu import report
from foscu.cli import app
from foscu.errors import InputError

runner = CliRunner()


def test_every_command_is_listed():
    commands = ["phantom", "prepare", "view", "convert", "import", "train", "sample", "experiment", "report"]
    commands += ["demo", "seg", "evaluate", "export"]
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0 and all(f" {name} " in top.output for name in commands), top.output
    assert all(f" {name} " in runner.invoke(app, ["seg", "--help"]).output for name in ("train", "predict"))
    assert all(f" {name} " in runner.invoke(app, ["evaluate", "--help"]).output for name in ("fid", "seg"))
    export = runner.invoke(app, ["export", "--help"]).output
    assert all(f" {name} " in export for name in ("generator", "nnunet"))


def test_python_m_foscu_answers_help_without_loading_torch():
    done = subprocess.run(
        [sys.executable, "-m", "foscu", "--help"], capture_output=True, text=True, check=True
    )
    assert "Usage: foscu" in done.stdout
    code = "import sys, foscu.cli; print([m for m in ('torch', 'monai') if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_bad_input_is_one_line_and_exit_2_but_a_bug_is_not_disguised(tmp_path, monkeypatch):
    def refuse(run):
        raise InputError(run / "run.json", "not a run folder")

    monkeypatch.setattr(report, "build_report", refuse)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'run.json'}: not a run folder\n" and result.stdout == ""

    def crash(run):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(report, "build_report", crash)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        runner.invoke(app, ["report", str(tmp_path)], catch_exceptions=False)
