"""Progress bars (rich, on stderr), and a training run's metrics.jsonl and TensorBoard events."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from foscu.runs import write_text_atomic


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields ``advance(n=1, **fields)``. Disabled: a no-op."""
    if not enabled:
        yield lambda n=1, **fields: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: float) -> None:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=n, info=info)

        try:
            yield advance
        except BaseException:
            progress.live.transient = True  # a failed run leaves only its one-line error, not a stale bar
            raise


class MetricsLog:
    """metrics.jsonl (one JSON line per logged step) and TensorBoard events in a stage folder.

    A new run starts an empty log; a resumed one keeps the lines up to the resumed step and drops the rest
    (TensorBoard purges them too), so the log reads as one uninterrupted run. Disabled (ranks other than
    0): writes nothing.
    """

    def __init__(self, folder: str | Path, resume_step: int = 0, enabled: bool = True) -> None:
        self.path = Path(folder) / "metrics.jsonl"
        self.enabled = enabled
        self._writer: Any = None
        if not enabled:
            return
        kept: list[str] = []
        if resume_step and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is stale
        write_text_atomic(self.path, "".join(k + "\n" for k in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                log_dir=str(self.path.parent / "tensorboard"), purge_step=resume_step or None
            )
        except ImportError:  # tensorboard is a dependency, but a missing writer must not stop training
            self._writer = None

    def log(self, step: int, values: dict[str, float]) -> None:
        """Append ``{"step": step, **values}`` to metrics.jsonl and each value to TensorBoard."""
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
