"""``nact scan``: count fires in activation shards and report dead neurons."""

from __future__ import annotations

from .options import (
    ChunkRows,
    Device,
    FailOnMissing,
    FireAbove,
    Format,
    Inputs,
    IoThreads,
    Output,
    Paths,
    Quiet,
    Reporting,
    Rescan,
    SaeDtype,
    SaveCounts,
    SaveSparsity,
    Shard,
    State,
    Threads,
    with_inputs,
    with_reporting,
)
from .output import say
from .progress import progress_hooks
from .render import check_format, finish


@with_inputs
@with_reporting
def scan(
    paths: Paths,
    inputs: Inputs,
    *,
    fire_above: FireAbove = "0",
    sae_dtype: SaeDtype = "float32",
    fmt: Format = None,
    output: Output = None,
    quiet: Quiet = False,
    reporting: Reporting,
    save_counts: SaveCounts = None,
    save_sparsity: SaveSparsity = None,
    state: State = None,
    rescan: Rescan = False,
    fail_on_missing: FailOnMissing = False,
    shard: Shard = None,
    io_threads: IoThreads = None,
    device: Device = "auto",
    chunk_rows: ChunkRows = None,
    threads: Threads = None,
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

      nact scan cache/ --stats   # gamma and outlier dimensions (docs/stats.md)

      nact scan s3://bucket/acts/   # a cache in an object store, by range requests (the remote extra)
    """
    # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
    from neuron_activity.distributed import launched
    from neuron_activity.options import CountOptions, ReportOptions, ScanRequest
    from neuron_activity.pipeline import run_scan

    distributed = launched()
    request = ScanRequest.parse(
        paths,
        count=CountOptions.parse(
            **inputs.settings(),
            fire_above=fire_above,
            device=device,
            chunk_rows=chunk_rows,
            threads=threads,
            io_threads=io_threads,
            sae_dtype=sae_dtype,
            stats=reporting.stats,
        ),
        report=ReportOptions.parse(**reporting.settings()),
        shard=shard,
        state=state,
        rescan=rescan,
        fail_on_missing=fail_on_missing,
        save_counts=save_counts,
        save_sparsity=save_sparsity,
        output=output,
        distributed=distributed,
    )
    fmt = check_format(fmt, output=output)  # after the options' own checks, before anything is read
    with progress_hooks(not quiet and not distributed) as hooks:
        outcome = run_scan(request, **hooks)
    for note in outcome.notes:
        say(f"Note: {note}")
    if outcome.report is not None:
        finish(outcome.report, fmt, output, quiet, missing=outcome.missing if fail_on_missing else [])
