"""``nact scan``: count fires in activation shards and report dead neurons."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional

import typer

from .output import library_errors
from .render import (
    DENSE_ABOVE,
    FAIL_ABOVE,
    FORMAT,
    NEURONS,
    OUTPUT,
    QUIET,
    THRESHOLD,
    TOP,
    ULTRALOW_BELOW,
    WINDOW,
    check_format,
    finish,
    make_report,
    parse_limit,
)

if TYPE_CHECKING:
    from neuron_activity import ScanPlan


def scan(
    paths: List[Path] = typer.Argument(
        ..., metavar="PATH", help="Shard files or directories (searched recursively).", show_default=False
    ),
    threshold: Optional[List[str]] = THRESHOLD,
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
    fmt: str = FORMAT,
    output: Optional[Path] = OUTPUT,
    fail_above: Optional[str] = FAIL_ABOVE,
    quiet: bool = QUIET,
    chunk_rows: Optional[int] = typer.Option(
        None, "--chunk-rows", metavar="N", help="Rows read at a time.", show_default="32 MiB worth"
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", metavar="N", help="Counting threads.", show_default="CPU cores, at most 8"
    ),
    save_counts: Optional[Path] = typer.Option(
        None, "--save-counts", metavar="FILE", help="Also save the exact counts (safetensors) for report/merge/diff."
    ),
    state: Optional[Path] = typer.Option(
        None, "--state", metavar="FILE", help="Incremental audit: count only shards FILE has not counted, add, save."
    ),
    rescan: bool = typer.Option(False, "--rescan", help="With --state: count every shard again, from scratch."),
    window: Optional[int] = WINDOW,
    shard: Optional[str] = typer.Option(
        None, "--shard", metavar="I/N", help="Count only part I of N of the sorted shards (from 0)."
    ),
    dense_above: str = DENSE_ABOVE,
    ultralow_below: str = ULTRALOW_BELOW,
    neurons: bool = NEURONS,
    top: Optional[int] = TOP,
) -> None:
    """Count how often every neuron fires; report the dead ones per component and threshold.

    A neuron fires on a vector when its activation is above --fire-above (default 0). It is dead at threshold p when it fired on at most p x (number of vectors) vectors.

    Under torchrun, every rank counts its part of the shards and rank 0 prints the whole result.

    Examples:

      nact scan shards/

      nact scan shards/ -t 1e-6 --format json | jq '.rows[] | select(.dead > 0)'

      nact scan shards/ --format csv -o dead.csv

      nact scan shards/ --fail-above 0.05 -q   # for cron

      nact scan shards/ --state audit.safetensors --window 10000000
    """
    check_format(fmt)
    if state is not None and (save_counts is not None or shard is not None):
        raise typer.BadParameter("--state saves its own counts: use it without --save-counts and --shard")
    if rescan and state is None:
        raise typer.BadParameter("--rescan goes with --state")
    with library_errors():
        from neuron_activity import DEFAULT_THRESHOLDS, Threshold, parse_decimal
        from neuron_activity import scan as scan_shards
        from neuron_activity.audit import audit, parse_part, part_of
        from neuron_activity.counts_file import SavedCounts, ShardRecord, save_counts as save
        from neuron_activity.distributed import launched, scan_distributed

        thresholds = [Threshold.parse(t) for t in (threshold or DEFAULT_THRESHOLDS)]
        limit = parse_limit(fail_above)
        part = parse_part(shard) if shard is not None else None
        distributed = launched()
        show_progress = not quiet and sys.stderr.isatty() and not distributed
        options = dict(
            keys=key,
            flatten=flatten,
            fire_above=parse_decimal(fire_above, "--fire-above"),
            device=device,
            input_format=input_format,
            chunk_rows=chunk_rows,
            threads=threads,
        )
        track_last = window is not None or save_counts is not None
        with _progress(show_progress) as progress:
            if progress:
                options.update(on_plan=progress.start, on_progress=progress.advance)
            if state is not None:
                audited = audit(paths, state, rescan=rescan, **options)
                activity, warnings = audited.saved.activity, audited.scan.warnings if audited.scan else []
                shards, used = [s.path for s in audited.saved.shards], audited.scan.device if audited.scan else None
            else:
                if distributed:
                    result = scan_distributed(paths, **options)
                    if result is None:  # not rank 0: rank 0 reports for everyone
                        return
                else:
                    count_only = (lambda units: part_of(units, *part)) if part else None
                    result = scan_shards(paths, track_last=track_last, count_only=count_only, **options)
                if save_counts is not None:
                    save(save_counts, SavedCounts(result.activity, [ShardRecord.of(u) for u in result.plan.units()]))
                activity, warnings, used = result.activity, result.warnings, result.device
                shards = [str(p) for p in result.plan.shards]
        report = make_report(
            activity, thresholds, shards, used, warnings, window, dense_above, ultralow_below, neurons, top
        )
        finish(report, fmt, output, quiet, limit)


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
