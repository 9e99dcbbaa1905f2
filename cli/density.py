"""``nact density``: the log10 feature-density histogram per component, in the terminal or a figure."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import List, Optional

import typer

from .counts import load_merged
from .output import emit, say
from .render import (
    COMPONENT_AXIS,
    DENSE_ABOVE_HELP,
    FLATTEN,
    GROUP_BY,
    INPUT_FORMAT,
    KEY,
    NUM_LATENTS,
    NUM_VECTORS,
    PARTIAL_LATENTS,
    ULTRALOW_HELP,
    check_format,
)

BAR_WIDTH = 50


def density(
    paths: List[Path] = typer.Argument(
        ..., metavar="PATH...", help="Activation shards or folders, or saved counts files.", show_default=False
    ),
    threshold: Optional[List[str]] = typer.Option(
        None, "--threshold", "-t", metavar="P", help="Dead thresholds to mark (repeatable).", show_default="1e-5, 1e-6"
    ),
    key: Optional[List[str]] = KEY,
    flatten: bool = FLATTEN,
    component_axis: Optional[int] = COMPONENT_AXIS,
    group_by: str = GROUP_BY,
    input_format: Optional[str] = INPUT_FORMAT,
    num_latents: Optional[int] = NUM_LATENTS,
    num_vectors: Optional[int] = NUM_VECTORS,
    partial_latents: bool = PARTIAL_LATENTS,
    fire_above: str = typer.Option("0", "--fire-above", metavar="X", help="A neuron fires when above X."),
    device: str = typer.Option("auto", "--device", "-d", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    bins_per_decade: int = typer.Option(4, "--bins-per-decade", metavar="B", help="Histogram bins per factor of 10."),
    dense_above: str = typer.Option("0.01", "--dense-above", metavar="D", help=DENSE_ABOVE_HELP),
    ultralow_below: str = typer.Option("1e-4", "--ultralow-below", metavar="D", help=ULTRALOW_HELP),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE", help="Also draw the figure to FILE (.png or .svg)."),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help="table or json."),
) -> None:
    """Show the log10 feature-density histogram of every component: dead neurons apart, thresholds marked.

    Density is the fraction of vectors on which a neuron fires. PATH may be activations (like nact scan) or counts saved with --save-counts. --plot needs matplotlib: pip install matplotlib.

    Examples:

      nact density shards/

      nact density counts.safetensors --plot density.png
    """
    check_format(fmt, ("table", "json"))
    from neuron_activity.counts_file import is_counts_file
    from neuron_activity.density import histogram, summarize
    from neuron_activity.options import CountOptions, ReportOptions, check_bins_per_decade
    from neuron_activity.pipeline import check_outputs
    from neuron_activity.scan import scan as scan_shards

    check_bins_per_decade(bins_per_decade)
    marks = ReportOptions.parse(threshold or ["1e-5", "1e-6"], dense_above=dense_above, ultralow_below=ultralow_below)
    count_options = CountOptions(
        keys=tuple(key or ()), flatten=flatten, fire_above=fire_above, device=device, input_format=input_format,
        component_axis=component_axis, group_by=group_by, num_latents=num_latents, num_vectors=num_vectors,
        partial_latents=partial_latents,
    )
    if plot is not None:
        from neuron_activity.plot import check_plot_path

        check_plot_path(plot)
        check_outputs([plot])
    warnings: list[str] = []
    if paths and all(p.is_file() and is_counts_file(p) for p in paths):
        activity = load_merged(paths).activity  # type: ignore[attr-defined]
    else:
        result = scan_shards(paths, options=count_options)
        activity, warnings = result.activity, result.warnings
    components = [c for c in activity.components.values() if c.num_vectors]
    if not components:
        activity.rows(list(marks.thresholds))  # raises: no vectors at all
    histograms = [histogram(c, bins_per_decade) for c in components]
    summaries = [summarize(c, marks.dense_above, marks.ultralow_below) for c in components]
    thresholds = [float(t.value) for t in marks.thresholds]
    if plot is not None:
        from neuron_activity.plot import plot_histograms

        plot_histograms(histograms, plot, thresholds, float(marks.dense_above), float(marks.ultralow_below))
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
        emit(render_histograms(histograms, thresholds, float(marks.dense_above)), None)


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
