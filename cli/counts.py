"""``nact report``, ``nact merge`` and ``nact diff``: working with saved counts."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import List, Optional

import typer

from .output import emit, library_errors, say
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


def _load_merged(files: list[Path]) -> object:
    from neuron_activity.counts_file import load_counts, merge_counts

    return merge_counts([(f, load_counts(f)) for f in files])


def report(
    files: List[Path] = typer.Argument(..., metavar="FILE", help="Saved counts (nact scan --save-counts).", show_default=False),
    threshold: Optional[List[str]] = THRESHOLD,
    fmt: str = FORMAT,
    output: Optional[Path] = OUTPUT,
    fail_above: Optional[str] = FAIL_ABOVE,
    quiet: bool = QUIET,
    window: Optional[int] = WINDOW,
    dense_above: str = DENSE_ABOVE,
    ultralow_below: str = ULTRALOW_BELOW,
    neurons: bool = NEURONS,
    top: Optional[int] = TOP,
) -> None:
    """Report dead neurons from saved counts, without the activations. Several files are merged.

    Examples:

      nact report counts.safetensors

      nact report part-*.safetensors --format json --fail-above 0.05
    """
    check_format(fmt)
    with library_errors():
        from neuron_activity import DEFAULT_THRESHOLDS, Threshold

        thresholds = [Threshold.parse(t) for t in (threshold or DEFAULT_THRESHOLDS)]
        limit = parse_limit(fail_above)
        saved = _load_merged(files)
        shards = [s.path for s in saved.shards]  # type: ignore[attr-defined]
        report = make_report(
            saved.activity, thresholds, shards, None, [], window, dense_above, ultralow_below, neurons, top  # type: ignore[attr-defined]
        )
        finish(report, fmt, output, quiet, limit)


def merge(
    files: List[Path] = typer.Argument(..., metavar="FILE", help="Saved counts, in stream order.", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", metavar="OUT", help="Where to save the merged counts."),
) -> None:
    """Add up saved counts of disjoint shard sets into one file (written atomically).

    The files must have the same components, feature counts and --fire-above. Give them in
    stream order: the time since a neuron last fired assumes each file's vectors come after
    the previous file's.

    Examples:

      nact merge part-0.safetensors part-1.safetensors -o all.safetensors
    """
    with library_errors():
        from neuron_activity.counts_file import save_counts

        save_counts(output, _load_merged(files))  # type: ignore[arg-type]


def diff(
    old: Path = typer.Argument(..., metavar="OLD", help="Saved counts before.", show_default=False),
    new: Path = typer.Argument(..., metavar="NEW", help="Saved counts after.", show_default=False),
    threshold: str = typer.Option("0", "--threshold", "-t", metavar="P", help="Dead threshold."),
    neurons: bool = typer.Option(False, "--neurons", help="List which neurons died, revived and stayed dead."),
    fail_on_new_dead: bool = typer.Option(False, "--fail-on-new-dead", help="Exit 1 when any neuron died."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help="table or json."),
) -> None:
    """Compare two saved counts (two checkpoints of one SAE): which neurons died, revived, stayed dead.

    Examples:

      nact diff step-1000.safetensors step-2000.safetensors

      nact diff old.safetensors new.safetensors -t 1e-6 --neurons --format json --fail-on-new-dead
    """
    check_format(fmt, ("table", "json"))
    with library_errors():
        from neuron_activity import Threshold
        from neuron_activity.counts_file import load_counts
        from neuron_activity.diff import compare

        changes = compare(load_counts(old).activity, load_counts(new).activity, Threshold.parse(threshold))
    if fmt == "json":
        doc = {
            "schema_version": 1,
            "threshold": float(Threshold.parse(threshold).value),
            "components": [c.as_dict(neurons) for c in changes],
        }
        emit(json.dumps(doc, indent=2) + "\n", None)
    else:
        emit(_diff_table(changes, neurons), None)
    died = sum(len(c.died) for c in changes)
    if fail_on_new_dead and died:
        say(f"Newly dead neurons: {died} ({', '.join(f'{c.component}: {len(c.died)}' for c in changes if c.died)})")
        raise typer.Exit(1)


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
    console = Console(file=buffer, width=100, color_system=None, highlight=False)
    console.print(table)
    if neurons:
        for c in changes:
            for label, items in (("died", c.died), ("revived", c.revived)):
                if items:
                    console.print(f"{c.component} {label}: {' '.join(map(str, items))}", markup=False)
    return buffer.getvalue()
