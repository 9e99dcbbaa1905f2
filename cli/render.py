"""Rendering a report (rows per component and threshold) as a rich table, JSON, CSV or Markdown,
and finishing a command the same way everywhere: output, warnings, --fail-above."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from .options import FORMATS
from .output import EXIT_BREACH, console_width, emit, on_terminal, say, shown, use_color

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from neuron_activity import ActivityRow
    from neuron_activity.density import DensitySummary
    from neuron_activity.report import ComponentStats, Report

# What an output file's extension says its format is (.txt: text, a table unless --format says
# otherwise); a file without an extension (a device, a FIFO) takes --format, else a table.
SUFFIX_FORMATS = {".json": "json", ".csv": "csv", ".md": "markdown", ".markdown": "markdown", ".txt": "table"}


URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")  # s3://... as a path folds it: s3:/...


def check_format(fmt: str | None, formats: tuple[str, ...] = FORMATS, output: Path | None = None) -> str:
    """The output format: as given, else from the output file's extension, else a table. An
    extension nact does not know (``out.xlsx``) without --format, or one that says another
    format than --format (``-o x.json -f csv``), is a usage error: checked before anything is read."""
    if fmt is not None and fmt not in formats:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(formats)}", param_hint="'--format'")
    if output is not None and URL.match(str(output)):  # the library refuses it: outputs are local files
        return fmt or "table"
    suffix = output.suffix.lower() if output is not None else ""
    implied = SUFFIX_FORMATS.get(suffix)
    if output is not None and suffix and implied is None and fmt is None:
        known = ", ".join(SUFFIX_FORMATS)
        raise typer.BadParameter(
            f"{output}: nact does not know the format of a {suffix} file: name it {known}, or give --format",
            param_hint="'--output'",
        )
    if fmt is not None and implied is not None and implied != fmt and suffix != ".txt":
        raise typer.BadParameter(
            f"{output}: its extension {suffix} says {implied}, --format says {fmt}", param_hint="'--output'"
        )
    return fmt or implied or "table"


def finish(report: Report, fmt: str, output: Path | None, quiet: bool, missing: Sequence[str] = ()) -> None:
    """Print (or write) the report and its warnings; exit 1 when a --fail-above limit is breached,
    or shards an audit counted are gone (``missing``: with --fail-on-missing)."""
    if not quiet:
        for warning in report.warnings:
            say(f"Warning: {warning}")
    if not quiet or output is not None:
        tty = output is None and on_terminal(sys.stdout)
        emit(render(fmt, report, color=use_color(tty), width=console_width(tty)), output)
    limit = report.options.fail_above
    breaches = report.breaches()
    for r in breaches:
        say(
            f"Dead neurons above limit: {r.component} at threshold {r.threshold.text}: "
            f"{r.dead}/{r.num_features} dead ({r.dead_fraction:.2%} > {float(limit or 0):.2%})"
        )
    for path in missing:
        say(f"Counted shard gone: {path}")
    if breaches or missing:
        raise typer.Exit(EXIT_BREACH)


def render(fmt: str, report: Report, color: bool = False, width: int = 100) -> str:
    if fmt == "table":
        return render_table(report, color=color, width=width)
    renderers: dict[str, Callable[[Report], str]] = {
        "json": render_json,
        "csv": render_csv,
        "markdown": render_markdown,
    }
    return renderers[fmt](report)


def render_json(report: Report) -> str:
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
    # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
    from neuron_activity.activity import ROW_COLUMNS

    return list(ROW_COLUMNS) + ([f"dead_in_window({report.window})"] if report.window is not None else [])


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=report.columns(), lineterminator="\n")
    writer.writeheader()
    for r in report.rows:
        writer.writerow({k: shown(v) if isinstance(v, str) else v for k, v in report.row_dict(r, flat=True).items()})
    return out.getvalue()


def dead_title(report: Report) -> str:
    # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
    from neuron_activity.decimals import decimal_text

    order = ", ".join(t.text for t in report.options.thresholds)
    return f"Dead neurons (fire = activation > {decimal_text(report.activity.fire_above)}; thresholds in the order given: {order})"


def top_lines(report: Report) -> list[str]:
    """The most and least active neurons of each component, one line per list."""
    lines = []
    for name, top in (report.top_neurons() if report.top else {}).items():
        for label, items in top.items():
            listed = " ".join(f"{e['neuron']}:{e['fire_count']}" for e in items)
            lines.append(f"{name} {label.replace('_', ' ')} (neuron:fires): {listed}")
    return lines


def dead_lines(report: Report) -> list[str]:
    if not report.neurons:
        return []
    return [
        f"{r.component} dead at {r.threshold.text}: {' '.join(map(str, dead))}"
        for r in report.rows
        if (dead := report.dead_neurons(r))
    ]


def render_markdown(report: Report) -> str:
    names = headers(report)
    lines = [dead_title(report), ""]
    lines += ["| " + " | ".join(names) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(names) - 1)) + "|"]
    lines += ["| " + " | ".join(shown(c).replace("|", "\\|") for c in cells(report, r)) + " |" for r in report.rows]
    if report.density:
        lines += [
            "",
            density_title(report),
            "",
            "| " + " | ".join(DENSITY_HEADERS) + " |",
            "|" + "|".join([" --- "] + [" ---: "] * 5) + "|",
        ]
        lines += [
            "| " + " | ".join(shown(c).replace("|", "\\|") for c in density_cells(d)) + " |" for d in report.density
        ]
    stats = report.stats()
    if stats:
        lines += ["", STATS_TITLE, "", "| " + " | ".join(STATS_HEADERS) + " |"]
        lines += ["|" + "|".join([" --- "] + [" ---: "] * (len(STATS_HEADERS) - 1)) + "|"]
        lines += ["| " + " | ".join(shown(c).replace("|", "\\|") for c in stats_cells(x)) + " |" for x in stats]
    extra = grouping_lines(report) + dead_lines(report) + top_lines(report) + centering_lines(report)
    if extra:
        lines += [""] + [shown(line) for line in extra]
    return "\n".join(lines) + "\n"


STATS_TITLE = (
    "Activation statistics (gamma = mean_norm / std_norm; outlier = dim: mean/std of the dimension furthest "
    "from 0 in standard deviations; never_fired_margin: the median over SAE latents that never fired)"
)
STATS_HEADERS = ["component", "mean_l0", "gamma", "mean_norm", "std_norm", "outlier", "never_fired_margin"]


def stats_cells(summary: ComponentStats) -> list[str]:
    """A component's statistics as the table and Markdown show them ('-': not kept)."""
    a = summary.activations
    cells = [summary.component, f"{float(summary.mean_l0):.4g}"]
    if a is None:
        cells += ["-"] * 4
    else:
        top = a.outlier_dims[0] if a.outlier_dims else None
        outlier = f"{top.dim}: {top.mean:.3g}/{top.std:.3g}" if top is not None else "-"
        cells += [number(a.gamma, 3), number(a.mean_norm, 4), number(a.std_norm, 4), outlier]
    margins = summary.never_fired_margins
    return cells + [number(margins[1], 3) if margins is not None else "-"]


def number(value: float, digits: int) -> str:
    """A float in ``digits`` significant digits; '-' when it is not finite (not known)."""
    return f"{value:.{digits}g}" if math.isfinite(value) else "-"


def centering_lines(report: Report) -> list[str]:
    """A note for each component whose gamma says its mean outweighs its spread."""
    # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
    from neuron_activity.stats import MEAN_CENTERING_GAMMA

    return [
        f"Note: {s.component}: gamma {s.activations.gamma:.3g} >= {MEAN_CENTERING_GAMMA:g}: its mean outweighs its "
        "spread, and latents of an SAE trained on it that point away from the mean rarely fire (arXiv 2605.31518): "
        "consider mean-centering (the cutoff is a heuristic: docs/stats.md)"
        for s in report.stats()
        if s.activations is not None and s.activations.consider_centering
    ]


DENSITY_HEADERS = ["component", "never_fired", "dense", "log10_density q05 q50 q95", "ultralow", "ultralow/alive"]


def density_title(report: Report) -> str:
    d = report.density[0]
    return f"Feature density (dense: > {d.dense_above:g}; ultralow: alive and < {d.ultralow_below:g})"


def density_cells(d: DensitySummary) -> list[str]:
    q = d.log10_quantiles
    quantiles = " ".join(f"{q[k]:.2f}" for k in (0.05, 0.5, 0.95)) if q else "-"
    return [d.component, str(d.never_fired), str(d.dense), quantiles, str(d.ultralow), f"{d.ultralow_fraction:.1%}"]


def listed_names(names: list[str] | tuple[str, ...], most: int = 4) -> str:
    """Component names for one line: the first ``most``, and how many more."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def files_span(files: Sequence[Any]) -> str:
    """Where a component is read from, in a few words: one file, or how many, first ... last."""
    return str(files[0]) if len(files) == 1 else f"{len(files)} files, {files[0]} ... {files[-1]}"


def grouping_lines(report: Report) -> list[str]:
    """One line per set of files that several files make one component of."""
    return [f"{listed_names(names)}: read from {files_span(files)}" for names, files in report.file_groups()]


def table(title: str) -> Table:
    """A table as nact draws them: its title on the left, bold headers."""
    from rich.table import Table  # rich draws tables and progress only: ~25 ms a machine-readable run does not pay

    return Table(title=title, title_justify="left", header_style="bold")


def to_text(draw: Callable[[Console], None], width: int, color: bool = False) -> str:
    """What ``draw`` prints on a console ``width`` columns wide (colour only if ``color``), as text.
    Every text it prints (titles, cells, lines) shows names as ``shown`` escapes them."""
    from rich.console import Console  # as in table()

    class Shown(Console):
        def render_str(self, text: str, **kwargs: Any) -> Any:
            return super().render_str(shown(text), **kwargs)

    buffer = io.StringIO()
    draw(Shown(file=buffer, width=width, color_system="standard" if color else None, highlight=False))
    return buffer.getvalue()


def render_table(report: Report, color: bool = False, width: int = 100) -> str:
    rows = table(dead_title(report))
    rows.add_column("component", overflow="fold")
    for name in headers(report)[1:]:
        rows.add_column(name, justify="right")
    previous = None
    for r in report.rows:
        if previous is not None and r.component != previous:
            rows.add_section()
        rows.add_row(*cells(report, r), style="red" if r.dead else None)
        previous = r.component

    def draw(console: Console) -> None:
        console.print(rows)
        if report.density:
            density = table(density_title(report))
            for i, name in enumerate(DENSITY_HEADERS):
                density.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
            for d in report.density:
                density.add_row(*density_cells(d))
            console.print(density)
        stats = report.stats()
        if stats:
            drawn = table(STATS_TITLE)
            for i, name in enumerate(STATS_HEADERS):
                drawn.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
            for summary in stats:
                drawn.add_row(*stats_cells(summary))
            console.print(drawn)
        for line in grouping_lines(report) + dead_lines(report) + top_lines(report) + centering_lines(report):
            console.print(line, markup=False, overflow="ignore", crop=False)

    return to_text(draw, width, color)
