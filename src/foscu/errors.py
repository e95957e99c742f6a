"""The one exception that means "bad input": the CLI maps it to one stderr line and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input from the user: a file that is missing, corrupt or inconsistent, or a bad option.

    Args:
        path: the file or folder at fault (or the option name).
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
