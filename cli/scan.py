"""``nact scan``: count fires in activation shards and report dead neurons."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional

import typer

from .output import on_terminal, say
from .render import (
    COMPONENT_AXIS,
    DENSE_ABOVE,
    FLATTEN,
    GROUP_BY,
    INPUT_FORMAT,
    IO_THREADS,
    KEY,
    NUM_LATENTS,
    NUM_VECTORS,
    PARTIAL_LATENTS,
    SAE,
    SAE_DTYPE,
    SKIP_POSITIONS,
    SAVE_SPARSITY,
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
    count_options,
    finish,
    input_paths,
)

if TYPE_CHECKING:
    from neuron_activity import ScanPlan


def scan(
    paths: List[str] = typer.Argument(
        ..., metavar="PATH...", help="Shard files or directories (searched recursively), or URLs (s3://, https://).",
        show_default=False,
    ),
    threshold: Optional[List[str]] = THRESHOLD,
    key: Optional[List[str]] = KEY,
    flatten: bool = FLATTEN,
    component_axis: Optional[int] = COMPONENT_AXIS,
    group_by: str = GROUP_BY,
    input_format: Optional[str] = INPUT_FORMAT,
    num_latents: Optional[int] = NUM_LATENTS,
    num_vectors: Optional[int] = NUM_VECTORS,
    partial_latents: bool = PARTIAL_LATENTS,
    sae: Optional[List[str]] = SAE,
    sae_dtype: str = SAE_DTYPE,
    skip_positions: Optional[str] = SKIP_POSITIONS,
    fire_above: str = typer.Option(
        "0", "--fire-above", metavar="X", help="A neuron fires when its activation is above X."
    ),
    device: str = typer.Option("auto", "--device", "-d", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    fmt: Optional[str] = FORMAT,
    output: Optional[Path] = OUTPUT,
    fail_above: Optional[str] = FAIL_ABOVE,
    quiet: bool = QUIET,
    chunk_rows: Optional[int] = typer.Option(
        None, "--chunk-rows", metavar="N", help="Rows read at a time.", show_default="32 MiB worth"
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", metavar="N", help="Counting threads.", show_default="CPU cores, at most 8"
    ),
    io_threads: Optional[int] = IO_THREADS,
    save_counts: Optional[Path] = typer.Option(
        None, "--save-counts", metavar="FILE", help="Also save the exact counts (safetensors) for report/merge/diff."
    ),
    state: Optional[Path] = typer.Option(
        None, "--state", metavar="FILE", help="Incremental audit: count only shards FILE has not counted, add, save."
    ),
    save_sparsity: Optional[Path] = SAVE_SPARSITY,
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

      nact scan cache/ --sae checkpoints/layer_6   # the SAE's dead latents on a model-activation cache

      nact scan s3://bucket/acts/   # a cache in an object store, by range requests (the remote extra)
    """
    fmt = check_format(fmt, output=output)
    from neuron_activity.distributed import launched
    from neuron_activity.options import Part, ReportOptions, ScanRequest
    from neuron_activity.pipeline import run_scan

    distributed = launched()
    request = ScanRequest(
        paths=tuple(input_paths(paths)),
        count=count_options(  # type: ignore[arg-type]
            key, flatten, component_axis, group_by, input_format, num_latents, num_vectors, partial_latents, sae,
            skip_positions, fire_above=fire_above, device=device, chunk_rows=chunk_rows, threads=threads,
            io_threads=io_threads, sae_dtype=sae_dtype,
        ),
        report=ReportOptions.parse(
            threshold, dense_above=dense_above, ultralow_below=ultralow_below, fail_above=fail_above,
            window=window, neurons=neurons, top=top,
        ),
        part=Part.parse(shard) if shard is not None else None,
        state=state,
        rescan=rescan,
        save_counts=save_counts,
        save_sparsity=save_sparsity,
        output=output,
        distributed=distributed,
    )
    show_progress = not quiet and on_terminal(sys.stderr) and not distributed
    with _progress(show_progress) as progress:
        hooks = dict(on_plan=progress.start, on_progress=progress.advance) if progress else {}
        outcome = run_scan(request, **hooks)  # type: ignore[arg-type]
    for note in outcome.notes:
        say(f"Note: {note}")
    if outcome.report is not None:
        finish(outcome.report, fmt, output, quiet)


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
