"""``nact scan``: count fires in activation shards and report dead neurons."""

from __future__ import annotations

from .options import (
    ChunkRows,
    DenseAbove,
    Device,
    FailAbove,
    FireAbove,
    Format,
    Inputs,
    IoThreads,
    Neurons,
    Output,
    Paths,
    Quiet,
    Rescan,
    SaeDtype,
    SaveCounts,
    SaveSparsity,
    Shard,
    State,
    Threads,
    Thresholds,
    Top,
    UltralowBelow,
    Window,
    with_inputs,
)
from .output import say
from .progress import progress_hooks
from .render import check_format, finish


@with_inputs
def scan(
    paths: Paths,
    inputs: Inputs,
    threshold: Thresholds = None,
    fire_above: FireAbove = "0",
    window: Window = None,
    dense_above: DenseAbove = "0.01",
    ultralow_below: UltralowBelow = "1e-4",
    sae_dtype: SaeDtype = "float32",
    fmt: Format = None,
    output: Output = None,
    quiet: Quiet = False,
    neurons: Neurons = False,
    top: Top = None,
    save_counts: SaveCounts = None,
    save_sparsity: SaveSparsity = None,
    fail_above: FailAbove = None,
    state: State = None,
    rescan: Rescan = False,
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

      nact scan s3://bucket/acts/   # a cache in an object store, by range requests (the remote extra)
    """
    fmt = check_format(fmt, output=output)
    from neuron_activity.decimals import parse_decimal
    from neuron_activity.distributed import launched  # the library: loaded once a command runs
    from neuron_activity.options import SAE_DTYPES, CountOptions, Part, ReportOptions, ScanRequest, choice
    from neuron_activity.pipeline import run_scan
    from neuron_activity.sources.base import to_path

    distributed = launched()
    request = ScanRequest(
        paths=tuple(to_path(p) for p in paths),
        count=CountOptions(
            **inputs.settings(),
            fire_above=parse_decimal(fire_above, "fire_above"),
            device=device,
            chunk_rows=chunk_rows,
            threads=threads,
            io_threads=io_threads,
            sae_dtype=choice("sae_dtype", sae_dtype, SAE_DTYPES, "a dtype"),
        ),
        report=ReportOptions.parse(
            threshold,
            dense_above=dense_above,
            ultralow_below=ultralow_below,
            fail_above=fail_above,
            window=window,
            neurons=neurons,
            top=top,
        ),
        part=Part.parse(shard) if shard is not None else None,
        state=state,
        rescan=rescan,
        save_counts=save_counts,
        save_sparsity=save_sparsity,
        output=output,
        distributed=distributed,
    )
    with progress_hooks(not quiet and not distributed) as hooks:
        outcome = run_scan(request, **hooks)
    for note in outcome.notes:
        say(f"Note: {note}")
    if outcome.report is not None:
        finish(outcome.report, fmt, output, quiet)
