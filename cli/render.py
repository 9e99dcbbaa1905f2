"""Rendering a report (rows per component and threshold) as a rich table, JSON, CSV or Markdown,
and finishing a command the same way everywhere: output, warnings, --fail-above."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .output import EXIT_BREACH, emit, on_terminal, say

if TYPE_CHECKING:
    from neuron_activity import ActivityRow
    from neuron_activity.report import Report

FORMATS = ("table", "json", "csv", "markdown")
HEADERS = ["component", "threshold", "dead", "alive", "num_features", "num_vectors", "dead_fraction"]


DENSE_ABOVE_HELP = "Count neurons denser than this as dense."
ULTRALOW_HELP = "Alive neurons sparser than this form the ultralow band."

# Options that scan and report share: one definition, the same flags and help in both.
THRESHOLD = typer.Option(
    None, "--threshold", "-t", metavar="P", help="Dead threshold, a portion of vectors (repeatable).",
    show_default="0, 1e-5, 1e-6",
)
FORMAT = typer.Option("table", "--format", "-f", metavar="FORMAT", help=f"One of {', '.join(FORMATS)}.")
OUTPUT = typer.Option(
    None, "--output", "-o", metavar="FILE", help="Write the result to FILE (atomically) instead of stdout."
)
FAIL_ABOVE = typer.Option(
    None, "--fail-above", metavar="FRACTION", help="Exit 1 when any dead_fraction shown is above FRACTION."
)
QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing unless --fail-above is breached.")
WINDOW = typer.Option(None, "--window", metavar="N", help="Also report neurons that did not fire in the last N vectors.")
# Options that say what the inputs hold: scan, inspect and density share them.
KEY = typer.Option(
    None, "--key", "-k", metavar="KEY", help="Only tensors whose key or component matches KEY, a name or glob (repeatable)."
)
FLATTEN = typer.Option(False, "--flatten", help="Treat every axis before the last as a batch axis.")
COMPONENT_AXIS = typer.Option(
    None, "--component-axis", metavar="A", help="Take axis A (0, or the one before the features) as the component axis."
)
GROUP_BY = typer.Option(
    "auto", "--group-by", metavar="RULE",
    help="Which files make one component: auto, key (across files and folders), file, or folder.",
)
INPUT_FORMAT = typer.Option(
    None, "--input-format", metavar="FORMAT", help="Read the shards as safetensors, npy, npz, torch, arrow or delphi.",
    show_default="detected",
)
NUM_LATENTS = typer.Option(None, "--num-latents", metavar="N", help="delphi: the width of caches saved whole (LatentCache.save).")
NUM_VECTORS = typer.Option(None, "--num-vectors", metavar="N", help="delphi: the vectors of caches saved without tokens.")
PARTIAL_LATENTS = typer.Option(
    False, "--partial-latents", help="delphi: count the splits that are there, each run of latents apart, naming the rest."
)
DENSE_ABOVE = typer.Option("0.01", "--dense-above", metavar="D", help=DENSE_ABOVE_HELP)
ULTRALOW_BELOW = typer.Option("1e-4", "--ultralow-below", metavar="D", help=ULTRALOW_HELP)
NEURONS = typer.Option(False, "--neurons", help="List the dead neurons (indices and fire counts) per threshold.")
TOP = typer.Option(None, "--top", metavar="K", help="List the K most and K least active neurons per component.")


def check_format(fmt: str, formats: tuple[str, ...] = FORMATS) -> None:
    if fmt not in formats:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(formats)}", param_hint="'--format'")


def finish(report: Report, fmt: str, output: Path | None, quiet: bool) -> None:
    """Print (or write) the report and its warnings; exit 1 when a --fail-above limit is breached."""
    if not quiet:
        for warning in report.warnings:
            say(f"Warning: {warning}")
    if not quiet or output is not None:
        tty = output is None and on_terminal(sys.stdout)
        color = tty and "NO_COLOR" not in os.environ
        width = shutil.get_terminal_size().columns if tty else 100
        emit(render(fmt, report, color=color, width=width), output)
    limit = report.options.fail_above
    breaches = report.breaches()
    for r in breaches:
        say(
            f"Dead neurons above limit: {r.component} at threshold {r.threshold.text}: "
            f"{r.dead}/{r.num_features} dead ({r.dead_fraction:.2%} > {float(limit):.2%})"  # type: ignore[arg-type]
        )
    if breaches:
        raise typer.Exit(EXIT_BREACH)


def render(fmt: str, report: Report, color: bool = False, width: int = 100) -> str:
    return {"table": render_table, "json": render_json, "csv": render_csv, "markdown": render_markdown}[fmt](
        report, color=color, width=width
    )


def render_json(report: Report, **_: object) -> str:
    return json.dumps(report.to_json(), indent=2) + "\n"


def cells(report: Report, row: ActivityRow) -> list[str]:
    """A row as the table and Markdown show it."""
    shown = [
        row.component,
        row.threshold.text,
        str(row.dead),
        str(row.alive),
        str(row.num_features),
        str(row.num_vectors),
        f"{row.dead_fraction:.2%}",
    ]
    if report.window is not None:
        shown.append(str(report.dead_in_window(row)))
    return shown


def headers(report: Report) -> list[str]:
    return HEADERS + ([f"dead_in_window({report.window})"] if report.window is not None else [])


def render_csv(report: Report, **_: object) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=report.columns(), lineterminator="\n")
    writer.writeheader()
    writer.writerows(report.row_dict(r, flat=True) for r in report.rows)
    return out.getvalue()


def render_markdown(report: Report, **_: object) -> str:
    names = headers(report)
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(names) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(report, r)) + " |" for r in report.rows]
    if report.density:
        lines += ["", density_title(report), "", "| " + " | ".join(DENSITY_HEADERS) + " |", "|" + "|".join([" --- "] + [" ---: "] * 5) + "|"]
        lines += ["| " + " | ".join(density_cells(d)) + " |" for d in report.density]
    grouped = grouping_lines(report)
    if grouped:
        lines += [""] + grouped
    return "\n".join(lines) + "\n"


DENSITY_HEADERS = ["component", "never_fired", "dense", "log10_density q05 q50 q95", "ultralow", "cluster"]


def density_title(report: Report) -> str:
    d = report.density[0]
    return f"Feature density (dense: > {d.dense_above:g}; ultralow: alive and < {d.ultralow_below:g})"


def density_cells(d: object) -> list[str]:
    q = d.log10_quantiles  # type: ignore[attr-defined]
    quantiles = " ".join(f"{q[k]:.2f}" for k in (0.05, 0.5, 0.95)) if q else "-"
    return [
        d.component,  # type: ignore[attr-defined]
        str(d.never_fired),  # type: ignore[attr-defined]
        str(d.dense),  # type: ignore[attr-defined]
        quantiles,
        str(d.ultralow),  # type: ignore[attr-defined]
        "yes" if d.ultralow_present else "no",  # type: ignore[attr-defined]
    ]


def grouping_lines(report: Report) -> list[str]:
    """One line per set of files that several files make one component of."""
    lines = []
    for names, files in report.file_groups():
        listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        lines.append(f"{listed}: read from {len(files)} files, {files[0]} ... {files[-1]}")
    return lines


def render_table(report: Report, color: bool = False, width: int = 100) -> str:
    from rich.console import Console
    from rich.table import Table

    fire_above = report.activity.fire_above
    table = Table(
        title=f"Dead neurons (fire = activation > {float(fire_above):g})",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("component", overflow="fold")
    for name in headers(report)[1:]:
        table.add_column(name, justify="right")
    previous = None
    for r in report.rows:
        if previous is not None and r.component != previous:
            table.add_section()
        table.add_row(*cells(report, r), style="red" if r.dead else None)
        previous = r.component
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system="standard" if color else None, highlight=False)
    console.print(table)
    if report.density:
        density = Table(title=density_title(report), title_justify="left", header_style="bold")
        for i, name in enumerate(DENSITY_HEADERS):
            density.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
        for d in report.density:
            density.add_row(*density_cells(d))
        console.print(density)
    for line in grouping_lines(report):
        console.print(line, markup=False, overflow="ignore", crop=False)
    if report.neurons:
        for r in report.rows:
            dead = report.dead_neurons(r)
            if dead:
                console.print(f"{r.component} dead at {r.threshold.text}: {' '.join(map(str, dead))}", markup=False)
    if report.top:
        for name, top in report.top_neurons().items():
            for label, items in top.items():
                listed = " ".join(f"{e['neuron']}:{e['fire_count']}" for e in items)
                console.print(f"{name} {label.replace('_', ' ')} (neuron:fires): {listed}", markup=False)
    return buffer.getvalue()
