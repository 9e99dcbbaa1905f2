"""Rendering result rows as a rich table, JSON, CSV or Markdown."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuron_activity import ActivityRow, ScanResult

FORMATS = ("table", "json", "csv", "markdown")
SCHEMA_VERSION = 1


def render(fmt: str, result: ScanResult, rows: list[ActivityRow], color: bool = False, width: int = 100) -> str:
    return {"table": render_table, "json": render_json, "csv": render_csv, "markdown": render_markdown}[fmt](
        result, rows, color=color, width=width
    )


def render_json(result: ScanResult, rows: list[ActivityRow], **_: object) -> str:
    from neuron_activity import __version__

    activity = result.activity
    doc = {
        "schema_version": SCHEMA_VERSION,
        "nact_version": __version__,
        "fire_above": float(activity.fire_above),
        "thresholds": list(dict.fromkeys(float(r.threshold.value) for r in rows)),
        "device": result.device,
        "shards": [str(p) for p in result.plan.shards],
        "components": [
            {
                "component": c.name,
                "num_features": c.num_features,
                "num_vectors": c.num_vectors,
                "nan_count": c.nan_count,
            }
            for c in activity.components.values()
        ],
        "warnings": result.warnings,
        "rows": [r.as_dict() for r in rows],
    }
    return json.dumps(doc, indent=2) + "\n"


def render_csv(result: ScanResult, rows: list[ActivityRow], **_: object) -> str:
    from neuron_activity import ROW_COLUMNS

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.as_dict() for r in rows)
    return out.getvalue()


def _cells(row: ActivityRow) -> list[str]:
    return [
        row.component,
        row.threshold.text,
        str(row.dead),
        str(row.alive),
        str(row.num_features),
        str(row.num_vectors),
        f"{row.dead_fraction:.2%}",
    ]


HEADERS = ["component", "threshold", "dead", "alive", "num_features", "num_vectors", "dead_fraction"]


def render_markdown(result: ScanResult, rows: list[ActivityRow], **_: object) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join([" --- "] + [" ---: "] * 6) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_table(result: ScanResult, rows: list[ActivityRow], color: bool = False, width: int = 100) -> str:
    from rich.console import Console
    from rich.table import Table

    fire_above = result.activity.fire_above
    table = Table(
        title=f"Dead neurons (fire = activation > {float(fire_above):g})",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("component", overflow="fold")
    for name in HEADERS[1:]:
        table.add_column(name, justify="right")
    previous = None
    for r in rows:
        style = "red" if r.dead else None
        if previous is not None and r.component != previous:
            table.add_section()
        table.add_row(*(_cells(r)), style=style)
        previous = r.component
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system="standard" if color else None, highlight=False)
    console.print(table)
    return buffer.getvalue()
