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

    def dead_in_window(self, row: ActivityRow) -> int:
        assert self.window is not None
        return int(self.activity.components[row.component].dead_in_window(self.window).sum())

    def row_dict(self, row: ActivityRow) -> dict[str, object]:
        d = row.as_dict()
        if self.window is not None:
            d["window"] = self.window
            d["dead_in_window"] = self.dead_in_window(row)
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
    return json.dumps(doc, indent=2) + "\n"


def render_csv(report: Report, **_: object) -> str:
    from neuron_activity import ROW_COLUMNS

    columns = list(ROW_COLUMNS) + (["window", "dead_in_window"] if report.window is not None else [])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(report.row_dict(r) for r in report.rows)
    return out.getvalue()


def render_markdown(report: Report, **_: object) -> str:
    headers = report.headers
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in report.cells(r)) + " |" for r in report.rows]
    return "\n".join(lines) + "\n"


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
    return buffer.getvalue()
