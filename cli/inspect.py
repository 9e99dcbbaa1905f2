"""``nact inspect``: what a scan would read, without counting."""

from __future__ import annotations

import io
import json
import sys
from typing import List, Optional

import typer

from .output import console_width, emit, on_terminal, say, word
from .render import (
    COMPONENT_AXIS,
    FLATTEN,
    GROUP_BY,
    INPUT_FORMAT,
    KEY,
    NUM_LATENTS,
    NUM_VECTORS,
    PARTIAL_LATENTS,
    SAE,
    SKIP_POSITIONS,
    count_options,
    files_span,
    input_paths,
    listed_names,
)

INSPECT_FORMATS = ("table", "json")


def inspect(
    paths: List[str] = typer.Argument(..., metavar="PATH...", help="Shard files or directories, or URLs.", show_default=False),
    key: Optional[List[str]] = KEY,
    flatten: bool = FLATTEN,
    component_axis: Optional[int] = COMPONENT_AXIS,
    group_by: str = GROUP_BY,
    input_format: Optional[str] = INPUT_FORMAT,
    num_latents: Optional[int] = NUM_LATENTS,
    num_vectors: Optional[int] = NUM_VECTORS,
    partial_latents: bool = PARTIAL_LATENTS,
    sae: Optional[List[str]] = SAE,
    skip_positions: Optional[str] = SKIP_POSITIONS,
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help="table or json."),
) -> None:
    """Show what nact scan would read: formats, tensors, components and their files, sizes, and any problem.

    Exits 2 when there is a problem a scan would stop on (each is listed), 0 otherwise.

    Examples:

      nact inspect shards/

      nact inspect cache/ --format json | jq '.tensors[] | {key, shape, counted}'
    """
    if fmt not in INSPECT_FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(INSPECT_FORMATS)}", param_hint="'--format'")
    from neuron_activity import inspect as inspect_shards

    options = count_options(
        key, flatten, component_axis, group_by, input_format, num_latents, num_vectors, partial_latents, sae,
        skip_positions, device="cpu",
    )
    result = inspect_shards(input_paths(paths), options)
    problems = [word(p) for p in result.problems]
    if fmt == "json":
        doc = {
            "schema_version": 1,
            "shards": [{"path": str(p), "format": f} for p, f in result.shards.items()],
            "tensors": [t.as_dict() for t in result.tensors],
            "groups": result.groups_as_dicts(),
            "notes": result.notes,
            "saes": result.saes,
            "problems": problems,
        }
        emit(json.dumps(doc, indent=2) + "\n", None)
    else:
        width = console_width(on_terminal(sys.stdout))
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
    console = Console(file=buffer, width=width, color_system=None, highlight=False)
    console.print(table)
    if result.groups:  # type: ignore[attr-defined]
        console.print("Components, as a scan would count them:", markup=False)
        for g in result.groups:  # type: ignore[attr-defined]
            line = f"  {listed_names(g.names)} ({g.num_features} features): {files_span(g.files)}"
            console.print(line, markup=False, overflow="ignore", crop=False)
    for b in result.saes:  # type: ignore[attr-defined]
        line = f"SAE {b['path']} encodes {b['component']} into {b['latents']} ({b['d_sae']} latents): {b['encode']}"
        console.print(line, markup=False, overflow="ignore", crop=False)
    for note in result.notes:  # type: ignore[attr-defined]
        console.print(f"Note: {note}", markup=False, overflow="ignore", crop=False)
    return buffer.getvalue()
