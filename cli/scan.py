"""``nact scan``: count fires in activation shards and report dead neurons."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional

import typer

from .output import emit, library_errors, say
from .render import FORMATS, render

if TYPE_CHECKING:
    from neuron_activity import ActivityRow, ScanPlan


def scan(
    paths: List[Path] = typer.Argument(
        ..., metavar="PATH", help="Shard files or directories (searched recursively).", show_default=False
    ),
    threshold: Optional[List[str]] = typer.Option(
        None,
        "--threshold",
        "-t",
        metavar="P",
        help="Dead threshold, a portion of vectors (repeatable).",
        show_default="0, 1e-5, 1e-6",
    ),
    key: Optional[List[str]] = typer.Option(
        None, "--key", "-k", metavar="KEY", help="Only read tensors with this key (repeatable)."
    ),
    flatten: bool = typer.Option(False, "--flatten", help="Treat every axis before the last as a batch axis."),
    input_format: Optional[str] = typer.Option(
        None,
        "--input-format",
        metavar="FORMAT",
        help="Read the shards as safetensors, npy, npz, torch, arrow or delphi.",
        show_default="detected",
    ),
    fire_above: str = typer.Option(
        "0", "--fire-above", metavar="X", help="A neuron fires when its activation is above X."
    ),
    device: str = typer.Option("auto", "--device", "-d", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help=f"One of {', '.join(FORMATS)}."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", metavar="FILE", help="Write the result to FILE (atomically) instead of stdout."
    ),
    fail_above: Optional[str] = typer.Option(
        None, "--fail-above", metavar="FRACTION", help="Exit 1 when any dead_fraction shown is above FRACTION."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing unless --fail-above is breached."),
    chunk_rows: Optional[int] = typer.Option(
        None, "--chunk-rows", metavar="N", help="Rows read at a time.", show_default="32 MiB worth"
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", metavar="N", help="Counting threads.", show_default="CPU cores, at most 8"
    ),
) -> None:
    """Count how often every neuron fires; report the dead ones per component and threshold.

    A neuron fires on a vector when its activation is above --fire-above (default 0). It is dead at threshold p when it fired on at most p x (number of vectors) vectors.

    Examples:

      nact scan shards/

      nact scan shards/ -t 1e-6 --format json | jq '.rows[] | select(.dead > 0)'

      nact scan shards/ --format csv -o dead.csv

      nact scan shards/ --fail-above 0.05 -q   # for cron
    """
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="'--format'")
    with library_errors():
        from neuron_activity import DEFAULT_THRESHOLDS, Threshold, parse_decimal
        from neuron_activity import scan as scan_shards

        thresholds = [Threshold.parse(t) for t in (threshold or DEFAULT_THRESHOLDS)]
        limit = _parse_limit(fail_above)
        show_progress = not quiet and sys.stderr.isatty()
        with _progress(show_progress) as progress:
            result = scan_shards(
                paths,
                keys=key,
                flatten=flatten,
                fire_above=parse_decimal(fire_above, "--fire-above"),
                device=device,
                input_format=input_format,
                chunk_rows=chunk_rows,
                threads=threads,
                on_plan=progress.start if progress else None,
                on_progress=progress.advance if progress else None,
            )
        rows = result.activity.rows(thresholds)
    if not quiet:
        for warning in result.warnings:
            say(f"Warning: {warning}")
        color = output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        width = shutil.get_terminal_size().columns if output is None and sys.stdout.isatty() else 100
        emit(render(fmt, result, rows, color=color, width=width), output)
    elif output is not None:
        emit(render(fmt, result, rows), output)
    breaches = [r for r in rows if limit is not None and Fraction(r.dead, r.num_features) > limit]
    for r in breaches:
        say(
            f"Dead neurons above limit: {r.component} at threshold {r.threshold.text}: "
            f"{r.dead}/{r.num_features} dead ({r.dead_fraction:.2%} > {float(limit):.2%})"
        )
    if breaches:
        raise typer.Exit(1)


def _parse_limit(text: str | None) -> Fraction | None:
    from neuron_activity import BadThreshold, parse_decimal

    if text is None:
        return None
    limit = parse_decimal(text, "--fail-above")
    if not 0 <= limit <= 1:
        raise BadThreshold(f"--fail-above {text!r} is not a portion between 0 and 1")
    return limit


class _ScanProgress:
    """A rich progress bar of bytes and shards, fed from the counting threads."""

    def __init__(self, progress: object) -> None:
        self.progress = progress
        self.lock = threading.Lock()
        self.task = None
        self.left: dict[Path, int] = {}
        self.done = 0

    def start(self, plan: ScanPlan) -> None:
        self.left = plan.shard_bytes()
        self.done = sum(1 for n in self.left.values() if n == 0)
        self.task = self.progress.add_task(  # type: ignore[attr-defined]
            "scanning", total=sum(self.left.values()), shards=self._shards()
        )

    def advance(self, path: Path, nbytes: int) -> None:
        with self.lock:
            self.left[path] -= nbytes
            self.done += self.left[path] == 0
            self.progress.update(self.task, advance=nbytes, shards=self._shards())  # type: ignore[attr-defined]

    def _shards(self) -> str:
        return f"{self.done}/{len(self.left)} shards"


@contextmanager
def _progress(enabled: bool) -> Iterator[_ScanProgress | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
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
        yield _ScanProgress(progress)
