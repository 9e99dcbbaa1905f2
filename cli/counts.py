"""``nact report``, ``nact merge`` and ``nact diff``: working with saved counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .options import (
    CountsFiles,
    Format,
    Output,
    Quiet,
    Reporting,
    SaveSparsity,
    TableOrJson,
    Union,
    counts_files_argument,
    neurons_option,
    output_option,
    threshold_option,
    with_reporting,
)
from .output import EXIT_BREACH, console_width, emit, on_terminal, say
from .render import check_format, finish, table, to_text

if TYPE_CHECKING:
    from rich.console import Console


@with_reporting
def report(
    files: CountsFiles,
    reporting: Reporting,
    fmt: Format = None,
    output: Output = None,
    quiet: Quiet = False,
    union: Union = False,
    save_sparsity: SaveSparsity = None,
) -> None:
    """Report dead neurons from saved counts, without the activations. Several files are merged.

    Parts of one split scan are merged in the order of their part numbers, whatever order they are given in.

    Examples:

      nact report counts.safetensors

      nact report part-*.safetensors --format json --fail-above 0.05
    """
    # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
    from neuron_activity import saved
    from neuron_activity.options import ReportOptions

    options = ReportOptions.parse(**reporting.settings())
    fmt = check_format(fmt, output=output)  # after the options' own checks, before anything is read
    reported = saved.report(files, options, union=union, sparsity=save_sparsity, output=output)
    for note in reported.notes:
        say(f"Note: {note}")
    finish(reported.report, fmt, output, quiet)


def merge(
    files: Annotated[list[Path], counts_files_argument("Saved counts, in stream order.")],
    output: Annotated[Path, output_option("Where to save the merged counts.", metavar="OUT", panel=None)],
    union: Union = False,
) -> None:
    """Add up saved counts of disjoint shard sets into one file (written atomically).

    The files must have the same components (unless --union), feature counts and --fire-above. Parts of one split scan (--shard I/N) are put in the order of their part numbers; other files are taken in the order given: the time since a neuron last fired assumes each file's vectors come after the previous file's.

    Examples:

      nact merge part-0.safetensors part-1.safetensors -o all.safetensors

      nact merge part-*.safetensors -o all.safetensors
    """
    # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
    from neuron_activity import saved

    for note in saved.merge(files, output, union=union):
        say(f"Note: {note}")


def diff(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="Saved counts before.", show_default=False)],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="Saved counts after.", show_default=False)],
    threshold: Annotated[
        list[str] | None, threshold_option("Dead threshold (one).", panel=None, show_default="0")
    ] = None,
    neurons: Annotated[bool, neurons_option("List which neurons died, revived and stayed dead.", panel=None)] = False,
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
    # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
    from neuron_activity import Threshold, saved

    given = threshold or ["0"]
    if len(given) > 1:
        raise typer.BadParameter(f"{', '.join(given)}: diff compares at one threshold", param_hint="'--threshold'")
    changes = saved.diff(old, new, Threshold.parse(given[0]))
    if fmt == "json":
        emit(json.dumps(changes.to_json(neurons), indent=2) + "\n", None)
    else:
        emit(_diff_table(changes.components, neurons, changes.threshold.text), None)
    if fail_on_new_dead and changes.died:
        listed = ", ".join(f"{c.component}: {len(c.died)}" for c in changes.components if c.died)
        say(f"Newly dead neurons: {changes.died} ({listed})")
        raise typer.Exit(EXIT_BREACH)


def _diff_table(changes: list[Any], neurons: bool, threshold: str) -> str:
    rows = table(f"Dead neurons at threshold {threshold}, old -> new")
    for name in ("component", "died", "revived", "stayed_dead", "dead_old", "dead_new"):
        rows.add_column(name, justify="left" if name == "component" else "right", overflow="fold")
    for c in changes:
        rows.add_row(
            c.component,
            str(len(c.died)),
            str(len(c.revived)),
            str(len(c.stayed_dead)),
            str(c.dead_old),
            str(c.dead_new),
        )

    def draw(console: Console) -> None:
        console.print(rows)
        if neurons:
            for c in changes:
                for label, items in (("died", c.died), ("revived", c.revived), ("stayed dead", c.stayed_dead)):
                    if items:
                        console.print(f"{c.component} {label}: {' '.join(map(str, items))}", markup=False)

    return to_text(draw, console_width(on_terminal(sys.stdout)))
