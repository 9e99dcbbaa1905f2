"""The progress bar of a scan (bytes and shards, fed from the counting threads), drawn on stderr
only when it is a terminal."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .output import on_terminal


class ScanProgress:
    """A rich progress bar of bytes and shards; ``hooks`` are the library's ``on_plan`` and
    ``on_progress`` callbacks that feed it."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.lock = threading.Lock()
        self.task: Any = None
        self.left: dict[Path, int] = {}
        self.done = 0

    def start(self, plan: Any) -> None:
        self.left = plan.shard_bytes()
        self.done = sum(1 for n in self.left.values() if n == 0)
        self.task = self.progress.add_task("scanning", total=sum(self.left.values()), shards=self._shards())

    def advance(self, path: Path, nbytes: int) -> None:
        with self.lock:
            self.left[path] -= nbytes
            self.done += self.left[path] == 0
            self.progress.update(self.task, advance=nbytes, shards=self._shards())

    def _shards(self) -> str:
        return f"{self.done}/{len(self.left)} shards"


@contextmanager
def progress_hooks(enabled: bool = True) -> Iterator[dict[str, Any]]:
    """The ``on_plan``/``on_progress`` hooks of a progress bar on stderr, when ``enabled`` and
    stderr is a terminal; else none."""
    if not enabled or not on_terminal(sys.stderr):
        yield {}
        return
    from rich.console import Console  # rich draws tables and progress only: ~25 ms a machine-readable run does not pay
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[shards]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        bar = ScanProgress(progress)
        yield {"on_plan": bar.start, "on_progress": bar.advance}
