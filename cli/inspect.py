"""``nact inspect``: what a scan would read, without counting."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .output import emit, say, word

INSPECT_FORMATS = ("table", "json")


def inspect(
    paths: List[Path] = typer.Argument(..., metavar="PATH", help="Shard files or directories.", show_default=False),
    key: Optional[List[str]] = typer.Option(None, "--key", "-k", metavar="KEY", help="Only these keys (repeatable)."),
    flatten: bool = typer.Option(False, "--flatten", help="Treat every axis before the last as a batch axis."),
    input_format: Optional[str] = typer.Option(
        None, "--input-format", metavar="FORMAT", help="Read the shards as this format (see nact scan --help)."
    ),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help="table or json."),
) -> None:
    """Show what nact scan would read: formats, tensors, components, sizes, and any problem.

    Exits 2 when there is a problem a scan would stop on (each is listed), 0 otherwise.

    Examples:

      nact inspect shards/

      nact inspect cache/ --format json | jq '.tensors[] | {key, shape, counted}'
    """
    if fmt not in INSPECT_FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(INSPECT_FORMATS)}", param_hint="'--format'")
    from neuron_activity import inspect as inspect_shards

    result = inspect_shards(paths, keys=key, flatten=flatten, input_format=input_format)
    problems = [word(p) for p in result.problems]
    if fmt == "json":
        doc = {
            "schema_version": 1,
            "shards": [{"path": str(p), "format": f} for p, f in result.shards.items()],
            "tensors": [t.as_dict() for t in result.tensors],
            "problems": problems,
        }
        emit(json.dumps(doc, indent=2) + "\n", None)
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 250
        emit(_table(result, width), None)
    for problem in problems:
        say(f"Error: {problem}")
    if problems:
        raise typer.Exit(2)


def _table(result: object, width: int) -> str:
    from rich.console import Console
    from rich.table import Table

    formats = sorted(set(result.shards.values()))  # type: ignore[attr-defined]
    table = Table(
        title=f"{len(result.shards)} shard(s): {', '.join(formats) or 'none'}",  # type: ignore[attr-defined]
        title_justify="left",
        header_style="bold",
    )
    for name, justify in [("path", "left"), ("key", "left"), ("format", "left"), ("dtype", "left"),
                          ("shape", "left"), ("components", "right"), ("num_vectors", "right"),
                          ("num_features", "right"), ("bytes", "right"), ("read", "left")]:
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for t in result.tensors:  # type: ignore[attr-defined]
        e = t.entry
        status = "yes" if t.skipped is None else f"no: {t.skipped}"
        if e.note:
            status += f" ({e.note})"
        table.add_row(
            str(e.path), e.key, e.format, e.dtype, str(list(e.shape)), str(len(t.components)),
            str(t.num_vectors), str(t.num_features), f"{e.nbytes:,}", status,
        )
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, highlight=False).print(table)
    return buffer.getvalue()
