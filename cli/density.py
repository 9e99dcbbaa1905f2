"""``nact density``: the log10 feature-density histogram per component, in the terminal or a figure."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import List, Optional

import typer

from .output import emit, library_errors, say
from .render import DENSE_ABOVE_HELP, ULTRALOW_HELP, check_format

BAR_WIDTH = 50


def density(
    paths: List[Path] = typer.Argument(
        ..., metavar="PATH", help="Activation shards or folders, or saved counts files.", show_default=False
    ),
    threshold: Optional[List[str]] = typer.Option(
        None, "--threshold", "-t", metavar="P", help="Dead thresholds to mark (repeatable).", show_default="1e-5, 1e-6"
    ),
    key: Optional[List[str]] = typer.Option(None, "--key", "-k", metavar="KEY", help="Only these keys (repeatable)."),
    flatten: bool = typer.Option(False, "--flatten", help="Treat every axis before the last as a batch axis."),
    input_format: Optional[str] = typer.Option(None, "--input-format", metavar="FORMAT", help="Force a reader."),
    fire_above: str = typer.Option("0", "--fire-above", metavar="X", help="A neuron fires when above X."),
    device: str = typer.Option("auto", "--device", "-d", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    bins_per_decade: int = typer.Option(4, "--bins-per-decade", metavar="B", help="Histogram bins per factor of 10."),
    dense_above: str = typer.Option("0.01", "--dense-above", metavar="D", help=DENSE_ABOVE_HELP),
    ultralow_below: str = typer.Option("1e-4", "--ultralow-below", metavar="D", help=ULTRALOW_HELP),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE", help="Also draw the figure to FILE (.png or .svg)."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help="table or json."),
) -> None:
    """Show the log10 feature-density histogram of every component: dead neurons apart, thresholds marked.

    Density is the fraction of vectors on which a neuron fires. PATH may be activations (like nact scan) or counts saved with --save-counts. --plot needs matplotlib: pip install 'nact[plot]'.

    Examples:

      nact density shards/

      nact density counts.safetensors --plot density.png
    """
    check_format(fmt, ("table", "json"))
    if bins_per_decade < 1:
        raise typer.BadParameter("must be at least 1", param_hint="'--bins-per-decade'")
    with library_errors():
        from neuron_activity import Threshold, parse_decimal
        from neuron_activity import scan as scan_shards
        from neuron_activity.counts_file import is_counts_file, load_counts, merge_counts
        from neuron_activity.density import histogram, summarize
        from neuron_activity.plot import plot_histograms

        marks = [Threshold.parse(t) for t in (threshold or ["1e-5", "1e-6"])]
        dense, ultralow = parse_decimal(dense_above, "--dense-above"), parse_decimal(ultralow_below, "--ultralow-below")
        warnings: list[str] = []
        if paths and all(p.is_file() and is_counts_file(p) for p in paths):
            activity = merge_counts([(p, load_counts(p)) for p in paths]).activity
        else:
            result = scan_shards(
                paths,
                keys=key,
                flatten=flatten,
                fire_above=parse_decimal(fire_above, "--fire-above"),
                device=device,
                input_format=input_format,
            )
            activity, warnings = result.activity, result.warnings
        components = [c for c in activity.components.values() if c.num_vectors]
        if not components:
            activity.rows(marks)  # raises: no vectors at all
        histograms = [histogram(c, bins_per_decade) for c in components]
        summaries = [summarize(c, dense, ultralow) for c in components]
        if plot is not None:
            plot_histograms(histograms, plot, [float(t.value) for t in marks], float(dense), float(ultralow))
    for w in warnings:
        say(f"Warning: {w}")
    if fmt == "json":
        doc = {
            "schema_version": 1,
            "bins_per_decade": bins_per_decade,
            "components": [
                {
                    **s.as_dict(),
                    "num_vectors": h.num_vectors,
                    "log10_density_edges": h.edges.tolist(),
                    "alive_per_bin": h.counts.tolist(),
                }
                for h, s in zip(histograms, summaries)
            ],
        }
        emit(json.dumps(doc, indent=2) + "\n", None)
    else:
        emit(render_histograms(histograms, [float(t.value) for t in marks], float(dense)), None)


def render_histograms(histograms: list, marks: list[float], dense_above: float, width: int = 100) -> str:
    """Text histograms, one per component, readable without colour."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False)
    for h in histograms:
        total = int(h.counts.sum()) + h.dead
        console.print(f"{h.component}: {total:,} neurons, {h.num_vectors:,} vectors", markup=False)
        tallest = max(int(h.counts.max(initial=0)), h.dead, 1)
        nonzero = [i for i, n in enumerate(h.counts) if n]
        first = nonzero[0] if nonzero else len(h.counts) - 1
        lines = [("never fired", h.dead, "")]
        for i in range(first, len(h.counts)):
            lo, hi = h.edges[i], h.edges[i + 1]
            notes = [f"<- {m:g}" for m in marks if m > 0 and lo <= math.log10(m) < hi]
            if lo <= math.log10(dense_above) < hi:
                notes.append(f"<- dense > {dense_above:g}")
            lines.append((f"{lo:6.2f} .. {hi:5.2f}", int(h.counts[i]), "  ".join(notes)))
        console.print(f"  {'log10 density':<16} {'neurons':>8}", markup=False)
        for label, n, note in lines:
            bar = "█" * math.ceil(BAR_WIDTH * n / tallest) if n else ""
            console.print(f"  {label:<16} {n:>8} {bar} {note}".rstrip(), markup=False)
        console.print("")
    return buffer.getvalue()
