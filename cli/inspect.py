"""``nact inspect``: what a scan would read, without counting."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

from .options import Inputs, Paths, TableOrJson, with_inputs
from .output import EXIT_USAGE, console_width, emit, on_terminal, say
from .render import check_format, files_span, listed_names, table, to_text

if TYPE_CHECKING:
    from rich.console import Console


@with_inputs
def inspect(ctx: typer.Context, paths: Paths, inputs: Inputs, fmt: TableOrJson = "table") -> None:
    """Show what nact scan would read: formats, tensors, components and their files, sizes, and any problem.

    Exits 2 when there is a problem a scan would stop on (each is listed), 0 otherwise.

    Examples:

      nact inspect shards/

      nact inspect cache/ --format json | jq '.tensors[] | {key, shape, counted}'
    """
    check_format(fmt, ("table", "json"))
    # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
    from neuron_activity import inspect as inspect_shards
    from neuron_activity.options import CountOptions

    from .wording import word  # it imports the library: as above

    result = inspect_shards(paths, CountOptions(**inputs.settings(), device="cpu"))
    problems = [word(p, ctx.command) for p in result.problems]
    if fmt == "json":
        emit(json.dumps(result.to_json(lambda p: word(p, ctx.command)), indent=2) + "\n", None)
    else:
        emit(_table(result, console_width(on_terminal(sys.stdout))), None)
    for problem in problems:
        say(f"Error: {problem}")
    if problems:
        raise typer.Exit(EXIT_USAGE)


def _table(result: Any, width: int) -> str:
    formats = sorted(set(result.shards.values()))
    rows = table(f"{len(result.shards)} shard(s): {', '.join(formats) or 'none'}")
    for name in (
        "path",
        "key",
        "format",
        "dtype",
        "shape",
        "components",
        "num_vectors",
        "num_features",
        "bytes",
        "read",
    ):
        numeric = name in ("components", "num_vectors", "num_features", "bytes")
        rows.add_column(name, justify="right" if numeric else "left", overflow="fold")
    below = []  # why a tensor is not read, and what is said of one that is: under the table, whole
    for t in result.tensors:
        e = t.entry
        status = "yes" if t.skipped is None else "no"
        if t.skipped is not None:
            below.append(f"Not read: {e.key} in {e.path}: {t.skipped}")
        if e.note:
            below.append(f"Note: {e.key} in {e.path}: {e.note}")
        rows.add_row(
            str(e.path),
            e.key,
            e.format,
            e.dtype,
            str(list(e.shape)),
            str(len(t.components)),
            str(t.num_vectors),
            str(t.num_features),
            f"{e.nbytes:,}",
            status,
        )

    def draw(console: Console) -> None:
        console.print(rows)
        for line in dict.fromkeys(below):
            console.print(line, markup=False, overflow="ignore", crop=False)
        if result.groups:
            console.print("Components, as a scan would count them:", markup=False)
            for g in result.groups:
                line = f"  {listed_names(g.names)} ({g.num_features} features): {files_span(g.files)}"
                console.print(line, markup=False, overflow="ignore", crop=False)
        for b in result.saes:
            line = f"SAE {b['path']} encodes {b['component']} into {b['latents']} ({b['d_sae']} latents): {b['encode']}"
            console.print(line, markup=False, overflow="ignore", crop=False)
        for note in result.notes:
            console.print(f"Note: {note}", markup=False, overflow="ignore", crop=False)

    return to_text(draw, width)
