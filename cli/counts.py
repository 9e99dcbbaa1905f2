"""``nact report``, ``nact merge`` and ``nact diff``: working with saved counts."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .options import (
    CountsFiles,
    DenseAbove,
    FailAbove,
    Format,
    Neurons,
    Output,
    Quiet,
    SaveSparsity,
    TableOrJson,
    Thresholds,
    Top,
    UltralowBelow,
    Union,
    Window,
)
from .output import EXIT_BREACH, console_width, emit, on_terminal, say
from .render import check_format, finish


def report(
    files: CountsFiles,
    threshold: Thresholds = None,
    fmt: Format = None,
    output: Output = None,
    fail_above: FailAbove = None,
    quiet: Quiet = False,
    window: Window = None,
    dense_above: DenseAbove = "0.01",
    ultralow_below: UltralowBelow = "1e-4",
    neurons: Neurons = False,
    top: Top = None,
    union: Union = False,
    save_sparsity: SaveSparsity = None,
) -> None:
    """Report dead neurons from saved counts, without the activations. Several files are merged.

    Parts of one split scan are merged in the order of their part numbers, whatever order they are given in.

    Examples:

      nact report counts.safetensors

      nact report part-*.safetensors --format json --fail-above 0.05
    """
    fmt = check_format(fmt, output=output)
    from neuron_activity import saved  # the library: loaded once a command runs
    from neuron_activity.options import ReportOptions

    options = ReportOptions.parse(
        threshold,
        dense_above=dense_above,
        ultralow_below=ultralow_below,
        fail_above=fail_above,
        window=window,
        neurons=neurons,
        top=top,
    )
    reported = saved.report(files, options, union=union, sparsity=save_sparsity, output=output)
    for note in reported.notes:
        say(f"Note: {note}")
    finish(reported.report, fmt, output, quiet)


def merge(
    files: Annotated[
        list[Path], typer.Argument(metavar="FILE...", help="Saved counts, in stream order.", show_default=False)
    ],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="OUT", help="Where to save the merged counts.")],
    union: Union = False,
) -> None:
    """Add up saved counts of disjoint shard sets into one file (written atomically).

    The files must have the same components (unless --union), feature counts and --fire-above. Parts of one split scan (--shard I/N) are put in the order of their part numbers; other files are taken in the order given: the time since a neuron last fired assumes each file's vectors come after the previous file's.

    Examples:

      nact merge part-0.safetensors part-1.safetensors -o all.safetensors

      nact merge part-*.safetensors -o all.safetensors
    """
    from neuron_activity import saved  # as in report

    for note in saved.merge(files, output, union=union):
        say(f"Note: {note}")


def diff(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="Saved counts before.", show_default=False)],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="Saved counts after.", show_default=False)],
    threshold: Annotated[str, typer.Option("--threshold", "-t", metavar="P", help="Dead threshold.")] = "0",
    neurons: Annotated[
        bool, typer.Option("--neurons", help="List which neurons died, revived and stayed dead.")
    ] = False,
    fail_on_new_dead: Annotated[bool, typer.Option("--fail-on-new-dead", help="Exit 1 when any neuron died.")] = False,
    fmt: TableOrJson = "table",
) -> None:
    """Compare two saved counts (two checkpoints of one SAE): which neurons died, revived, stayed dead.

    Both must be counted with the same --fire-above.

    Examples:

      nact diff step-1000.safetensors step-2000.safetensors

      nact diff old.safetensors new.safetensors -t 1e-6 --neurons --format json --fail-on-new-dead
    """
    check_format(fmt, ("table", "json"))
    from neuron_activity import Threshold, saved  # as in report

    changes = saved.diff(old, new, Threshold.parse(threshold))
    if fmt == "json":
        emit(json.dumps(changes.to_json(neurons), indent=2) + "\n", None)
    else:
        emit(_diff_table(changes.components, neurons), None)
    if fail_on_new_dead and changes.died:
        listed = ", ".join(f"{c.component}: {len(c.died)}" for c in changes.components if c.died)
        say(f"Newly dead neurons: {changes.died} ({listed})")
        raise typer.Exit(EXIT_BREACH)


def _diff_table(changes: list[Any], neurons: bool) -> str:
    from rich.console import Console  # as in render.render_table
    from rich.table import Table

    table = Table(title="Dead neurons, old -> new", title_justify="left", header_style="bold")
    for name in ("component", "died", "revived", "stayed_dead", "dead_old", "dead_new"):
        table.add_column(name, justify="left" if name == "component" else "right", overflow="fold")
    for c in changes:
        table.add_row(
            c.component,
            str(len(c.died)),
            str(len(c.revived)),
            str(len(c.stayed_dead)),
            str(c.dead_old),
            str(c.dead_new),
        )
    buffer = io.StringIO()
    console = Console(file=buffer, width=console_width(on_terminal(sys.stdout)), color_system=None, highlight=False)
    console.print(table)
    if neurons:
        for c in changes:
            for label, items in (("died", c.died), ("revived", c.revived)):
                if items:
                    console.print(f"{c.component} {label}: {' '.join(map(str, items))}", markup=False)
    return buffer.getvalue()
