"""``nact report``, ``nact merge`` and ``nact diff``: working with saved counts."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .output import EXIT_BREACH, console_width, emit, on_terminal, say
from .render import (
    DENSE_ABOVE,
    FAIL_ABOVE,
    FORMAT,
    NEURONS,
    OUTPUT,
    QUIET,
    SAVE_SPARSITY,
    THRESHOLD,
    TOP,
    ULTRALOW_BELOW,
    WINDOW,
    check_format,
    finish,
)

UNION = typer.Option(False, "--union", help="Merge counts even when their components differ.")


def load_merged(files: list[Path], union: bool = False) -> object:
    """The counts of ``files`` merged in stream order; notes on the order go to stderr."""
    from neuron_activity.counts_file import load_counts, merge_counts

    merged, notes = merge_counts([(f, load_counts(f)) for f in files], union=union)
    for note in notes:
        say(f"Note: {note}")
    return merged


def report(
    files: List[Path] = typer.Argument(..., metavar="FILE...", help="Saved counts (nact scan --save-counts).", show_default=False),
    threshold: Optional[List[str]] = THRESHOLD,
    fmt: Optional[str] = FORMAT,
    output: Optional[Path] = OUTPUT,
    fail_above: Optional[str] = FAIL_ABOVE,
    quiet: bool = QUIET,
    window: Optional[int] = WINDOW,
    dense_above: str = DENSE_ABOVE,
    ultralow_below: str = ULTRALOW_BELOW,
    neurons: bool = NEURONS,
    top: Optional[int] = TOP,
    union: bool = UNION,
    save_sparsity: Optional[Path] = SAVE_SPARSITY,
) -> None:
    """Report dead neurons from saved counts, without the activations. Several files are merged.

    Parts of one split scan are merged in the order of their part numbers, whatever order they are given in.

    Examples:

      nact report counts.safetensors

      nact report part-*.safetensors --format json --fail-above 0.05
    """
    fmt = check_format(fmt, output=output)
    from neuron_activity.options import ReportOptions
    from neuron_activity.pipeline import check_not_inputs, check_outputs
    from neuron_activity.report import make_report

    options = ReportOptions.parse(
        threshold, dense_above=dense_above, ultralow_below=ultralow_below, fail_above=fail_above,
        window=window, neurons=neurons, top=top,
    )
    outputs = [p for p in (output, save_sparsity) if p is not None]
    check_outputs(outputs)
    check_not_inputs(outputs, files)
    saved = load_merged(files, union)
    shards = [s.path for s in saved.shards]  # type: ignore[attr-defined]
    report = make_report(saved.activity, options, shards)  # type: ignore[attr-defined]
    if save_sparsity is not None:
        from neuron_activity.sparsity import save_sparsity as write_sparsity

        write_sparsity(save_sparsity, saved.activity)  # type: ignore[attr-defined]
    finish(report, fmt, output, quiet)


def merge(
    files: List[Path] = typer.Argument(..., metavar="FILE...", help="Saved counts, in stream order.", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", metavar="OUT", help="Where to save the merged counts."),
    union: bool = UNION,
) -> None:
    """Add up saved counts of disjoint shard sets into one file (written atomically).

    The files must have the same components (unless --union), feature counts and --fire-above. Parts of one split scan (--shard I/N) are put in the order of their part numbers; other files are taken in the order given: the time since a neuron last fired assumes each file's vectors come after the previous file's.

    Examples:

      nact merge part-0.safetensors part-1.safetensors -o all.safetensors

      nact merge part-*.safetensors -o all.safetensors
    """
    from neuron_activity.counts_file import save_counts
    from neuron_activity.pipeline import check_not_inputs, check_outputs

    check_outputs([output])
    check_not_inputs([output], files)
    save_counts(output, load_merged(files, union))  # type: ignore[arg-type]


def diff(
    old: Path = typer.Argument(..., metavar="OLD", help="Saved counts before.", show_default=False),
    new: Path = typer.Argument(..., metavar="NEW", help="Saved counts after.", show_default=False),
    threshold: str = typer.Option("0", "--threshold", "-t", metavar="P", help="Dead threshold."),
    neurons: bool = typer.Option(False, "--neurons", help="List which neurons died, revived and stayed dead."),
    fail_on_new_dead: bool = typer.Option(False, "--fail-on-new-dead", help="Exit 1 when any neuron died."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help="table or json."),
) -> None:
    """Compare two saved counts (two checkpoints of one SAE): which neurons died, revived, stayed dead.

    Both must be counted with the same --fire-above.

    Examples:

      nact diff step-1000.safetensors step-2000.safetensors

      nact diff old.safetensors new.safetensors -t 1e-6 --neurons --format json --fail-on-new-dead
    """
    check_format(fmt, ("table", "json"))
    from neuron_activity import Threshold
    from neuron_activity.counts_file import load_counts
    from neuron_activity.diff import compare

    dead_at = Threshold.parse(threshold)
    changes = compare(load_counts(old).activity, load_counts(new).activity, dead_at)
    if fmt == "json":
        doc = {
            "schema_version": 1,
            "threshold": float(dead_at.value),
            "components": [c.as_dict(neurons) for c in changes],
        }
        emit(json.dumps(doc, indent=2) + "\n", None)
    else:
        emit(_diff_table(changes, neurons), None)
    died = sum(len(c.died) for c in changes)
    if fail_on_new_dead and died:
        say(f"Newly dead neurons: {died} ({', '.join(f'{c.component}: {len(c.died)}' for c in changes if c.died)})")
        raise typer.Exit(EXIT_BREACH)


def _diff_table(changes: list, neurons: bool) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Dead neurons, old -> new", title_justify="left", header_style="bold")
    for name in ("component", "died", "revived", "stayed_dead", "dead_old", "dead_new"):
        table.add_column(name, justify="left" if name == "component" else "right", overflow="fold")
    for c in changes:
        table.add_row(c.component, str(len(c.died)), str(len(c.revived)), str(len(c.stayed_dead)),
                      str(c.dead_old), str(c.dead_new))
    buffer = io.StringIO()
    console = Console(file=buffer, width=console_width(on_terminal(sys.stdout)), color_system=None, highlight=False)
    console.print(table)
    if neurons:
        for c in changes:
            for label, items in (("died", c.died), ("revived", c.revived)):
                if items:
                    console.print(f"{c.component} {label}: {' '.join(map(str, items))}", markup=False)
    return buffer.getvalue()
