"""Rendering a report (rows per component and threshold) as a rich table, JSON, CSV or Markdown,
and finishing a command the same way everywhere: output, warnings, --fail-above."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .output import emit, say

if TYPE_CHECKING:
    from neuron_activity import ActivityRow, NeuronActivity

FORMATS = ("table", "json", "csv", "markdown")
SCHEMA_VERSION = 1
HEADERS = ["component", "threshold", "dead", "alive", "num_features", "num_vectors", "dead_fraction"]


@dataclass
class Report:
    """What scan and report print: rows, and what they came from."""

    activity: NeuronActivity
    rows: list[ActivityRow]
    shards: list[str]
    device: str | None = None
    warnings: list[str] = field(default_factory=list)
    window: int | None = None
    density: list = field(default_factory=list)  # DensitySummary per component
    neurons: bool = False  # list dead neurons per row
    top: int | None = None  # list the most and least active neurons

    def dead_neurons(self, row: ActivityRow) -> list[int]:
        import numpy as np

        return np.flatnonzero(self.activity.components[row.component].dead(row.threshold)).tolist()

    def top_neurons(self) -> dict[str, dict[str, list[dict[str, object]]]]:
        from neuron_activity.density import densities, top_neurons

        out = {}
        for c in self.activity.components.values():
            if not c.num_vectors:
                continue
            most, least = top_neurons(c, self.top or 0)
            density = densities(c)
            entries = {
                label: [{"neuron": i, "fire_count": int(c.fire_counts[i]), "density": float(density[i])} for i in found]
                for label, found in (("most_active", most), ("least_active", least))
            }
            out[c.name] = entries
        return out

    def dead_in_window(self, row: ActivityRow) -> int:
        assert self.window is not None
        return int(self.activity.components[row.component].dead_in_window(self.window).sum())

    def row_dict(self, row: ActivityRow, flat: bool = False) -> dict[str, object]:
        d = row.as_dict()
        if self.window is not None:
            d["window"] = self.window
            d["dead_in_window"] = self.dead_in_window(row)
        if self.neurons:
            dead = self.dead_neurons(row)
            counts = self.activity.components[row.component].fire_counts[dead].tolist()
            d["dead_neurons"] = " ".join(map(str, dead)) if flat else dead
            d["dead_neuron_fire_counts"] = " ".join(map(str, counts)) if flat else counts
        return d

    def cells(self, row: ActivityRow) -> list[str]:
        cells = [
            row.component,
            row.threshold.text,
            str(row.dead),
            str(row.alive),
            str(row.num_features),
            str(row.num_vectors),
            f"{row.dead_fraction:.2%}",
        ]
        if self.window is not None:
            cells.append(str(self.dead_in_window(row)))
        return cells

    @property
    def headers(self) -> list[str]:
        return HEADERS + ([f"dead_in_window({self.window})"] if self.window is not None else [])


def make_report(
    activity: NeuronActivity,
    thresholds: list,
    shards: list[str],
    device: str | None,
    warnings: list[str],
    window: int | None,
    dense_above: str,
    ultralow_below: str,
    neurons: bool,
    top: int | None,
) -> Report:
    """The report of ``activity``: rows per threshold, and the density summary per component."""
    from neuron_activity import BadThreshold, parse_decimal
    from neuron_activity.density import summarize

    bounds = []
    for text, option in ((dense_above, "--dense-above"), (ultralow_below, "--ultralow-below")):
        value = parse_decimal(text, option)
        if not 0 < value <= 1:
            raise BadThreshold(f"{option} {text!r} is not a density between 0 and 1")
        bounds.append(value)
    if top is not None and top < 1:
        raise BadThreshold(f"--top {top} must be at least 1")
    if window is not None and window < 1:
        raise BadThreshold(f"--window {window} must be at least 1")
    rows = activity.rows(thresholds)
    density = [summarize(c, *bounds) for c in activity.components.values() if c.num_vectors]
    return Report(activity, rows, shards, device, warnings, window, density, neurons, top)


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
DENSE_ABOVE = typer.Option("0.01", "--dense-above", metavar="D", help=DENSE_ABOVE_HELP)
ULTRALOW_BELOW = typer.Option("1e-4", "--ultralow-below", metavar="D", help=ULTRALOW_HELP)
NEURONS = typer.Option(False, "--neurons", help="List the dead neurons (indices and fire counts) per threshold.")
TOP = typer.Option(None, "--top", metavar="K", help="List the K most and K least active neurons per component.")


def check_format(fmt: str, formats: tuple[str, ...] = FORMATS) -> None:
    if fmt not in formats:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(formats)}", param_hint="'--format'")


def parse_limit(text: str | None) -> Fraction | None:
    from neuron_activity import BadThreshold, parse_decimal

    if text is None:
        return None
    limit = parse_decimal(text, "--fail-above")
    if not 0 <= limit <= 1:
        raise BadThreshold(f"--fail-above {text!r} is not a portion between 0 and 1")
    return limit


def finish(report: Report, fmt: str, output: Path | None, quiet: bool, limit: Fraction | None) -> None:
    """Print (or write) the report, its warnings, and exit 1 when ``limit`` is breached."""
    if not quiet:
        for warning in report.warnings:
            say(f"Warning: {warning}")
    if not quiet or output is not None:
        tty = output is None and sys.stdout.isatty()
        color = tty and "NO_COLOR" not in os.environ
        width = shutil.get_terminal_size().columns if tty else 100
        emit(render(fmt, report, color=color, width=width), output)
    breaches = [r for r in report.rows if limit is not None and Fraction(r.dead, r.num_features) > limit]
    for r in breaches:
        say(
            f"Dead neurons above limit: {r.component} at threshold {r.threshold.text}: "
            f"{r.dead}/{r.num_features} dead ({r.dead_fraction:.2%} > {float(limit):.2%})"  # type: ignore[arg-type]
        )
    if breaches:
        raise typer.Exit(1)


def render(fmt: str, report: Report, color: bool = False, width: int = 100) -> str:
    return {"table": render_table, "json": render_json, "csv": render_csv, "markdown": render_markdown}[fmt](
        report, color=color, width=width
    )


def render_json(report: Report, **_: object) -> str:
    from neuron_activity import __version__

    activity = report.activity
    doc: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "nact_version": __version__,
        "fire_above": float(activity.fire_above),
        "thresholds": list(dict.fromkeys(float(r.threshold.value) for r in report.rows)),
        "device": report.device,
        "shards": report.shards,
        "components": [
            {
                "component": c.name,
                "num_features": c.num_features,
                "num_vectors": c.num_vectors,
                "nan_count": c.nan_count,
            }
            for c in activity.components.values()
        ],
        "warnings": report.warnings,
        "rows": [report.row_dict(r) for r in report.rows],
    }
    if report.window is not None:
        doc["window"] = report.window
    doc["density"] = [d.as_dict() for d in report.density]
    if report.top:
        doc["top"] = report.top_neurons()
    return json.dumps(doc, indent=2) + "\n"


def render_csv(report: Report, **_: object) -> str:
    from neuron_activity import ROW_COLUMNS

    columns = list(ROW_COLUMNS) + (["window", "dead_in_window"] if report.window is not None else [])
    columns += ["dead_neurons", "dead_neuron_fire_counts"] if report.neurons else []
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(report.row_dict(r, flat=True) for r in report.rows)
    return out.getvalue()


def render_markdown(report: Report, **_: object) -> str:
    headers = report.headers
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in report.cells(r)) + " |" for r in report.rows]
    if report.density:
        lines += ["", density_title(report), "", "| " + " | ".join(DENSITY_HEADERS) + " |", "|" + "|".join([" --- "] + [" ---: "] * 5) + "|"]
        lines += ["| " + " | ".join(density_cells(d)) + " |" for d in report.density]
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
        str(d.dead),  # type: ignore[attr-defined]
        str(d.dense),  # type: ignore[attr-defined]
        quantiles,
        str(d.ultralow),  # type: ignore[attr-defined]
        "yes" if d.ultralow_present else "no",  # type: ignore[attr-defined]
    ]


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
    for name in report.headers[1:]:
        table.add_column(name, justify="right")
    previous = None
    for r in report.rows:
        if previous is not None and r.component != previous:
            table.add_section()
        table.add_row(*report.cells(r), style="red" if r.dead else None)
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
