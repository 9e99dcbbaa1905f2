"""``nact density``: the log10 feature-density histogram per component, in the terminal or a figure."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .options import (
    OUTPUT,
    DenseAbove,
    Device,
    FireAbove,
    Inputs,
    TableOrJson,
    UltralowBelow,
    paths_argument,
    threshold_option,
    with_inputs,
)
from .output import emit, say
from .progress import progress_hooks
from .render import check_format, to_text

if TYPE_CHECKING:
    from rich.console import Console

BAR_WIDTH = 50


@with_inputs
def density(
    paths: Annotated[
        list[str],
        paths_argument(
            "Activation shards or folders (or their URLs), saved counts files, or SAELens sparsity.safetensors files."
        ),
    ],
    inputs: Inputs,
    threshold: Annotated[
        list[str] | None, threshold_option("Dead thresholds to mark (repeatable).", show_default="1e-5, 1e-6")
    ] = None,
    fire_above: FireAbove = "0",
    device: Device = "auto",
    bins_per_decade: Annotated[
        int,
        typer.Option("--bins-per-decade", metavar="B", help="Histogram bins per factor of 10.", rich_help_panel=OUTPUT),
    ] = 4,
    dense_above: DenseAbove = "0.01",
    ultralow_below: UltralowBelow = "1e-4",
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", metavar="FILE", help="Also draw the figure to FILE (.png, .svg or .pdf).", rich_help_panel=OUTPUT
        ),
    ] = None,
    figsize: Annotated[
        str | None,
        typer.Option(
            "--figsize",
            metavar="W,H",
            help="Each panel's width and height in inches.",
            show_default="9,2.6",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    font_size: Annotated[
        float,
        typer.Option("--font-size", metavar="PT", help="The figure's label size in points.", rich_help_panel=OUTPUT),
    ] = 9.5,
    columns: Annotated[
        int,
        typer.Option(
            "--columns", metavar="N", help="Draw N panels side by side (several SAEs, say).", rich_help_panel=OUTPUT
        ),
    ] = 1,
    dpi: Annotated[
        int,
        typer.Option("--dpi", metavar="N", help="Resolution of a .png figure (dots per inch).", rich_help_panel=OUTPUT),
    ] = 200,
    log_y: Annotated[
        bool,
        typer.Option(
            "--log-y", help="Draw neuron counts on a log scale (shows a small ultralow tail).", rich_help_panel=OUTPUT
        ),
    ] = False,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            metavar="[COMPONENT=]OTHER",
            rich_help_panel=OUTPUT,
            help="Also draw OTHER (counts or activations) in the same panels, e.g. a later checkpoint; COMPONENT= "
            "binds the one component of OTHER (a sparsity file away from its SAE) to a component of PATH.",
        ),
    ] = None,
    fmt: TableOrJson = "table",
) -> None:
    """Show the log10 feature-density histogram of every component: dead neurons apart, thresholds marked.

    Density is the fraction of vectors on which a neuron fires. PATH may be activations (like nact scan), counts saved with --save-counts, or a SAELens sparsity.safetensors (log10 densities; --num-vectors says over how many vectors). --plot needs matplotlib: pip install 'nact\\[plot]'.

    Examples:

      nact density shards/

      nact density counts.safetensors --plot density.png --log-y

      nact density step-1000.safetensors --compare step-2000.safetensors --plot compare.png

      nact density cache/ --sae sae/ --compare sae/sparsity.safetensors   # nact's counts against SAELens' own

      nact density cache/ --sae a/ --sae b/ --plot saes.pdf --columns 2 --figsize 6,3   # two SAEs side by side
    """
    check_format(fmt, ("table", "json"))
    # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
    from neuron_activity.density_report import Figure, density_report
    from neuron_activity.options import CountOptions, ReportOptions

    marks = ReportOptions.parse(threshold or ["1e-5", "1e-6"], dense_above=dense_above, ultralow_below=ultralow_below)
    options = CountOptions.parse(**inputs.settings(), fire_above=fire_above, device=device)
    figure = (
        Figure.parse(plot, figsize, dpi=dpi, log_y=log_y, font_size=font_size, columns=columns)
        if plot is not None
        else None
    )
    labels = (", ".join(map(str, paths)), str(compare))
    with progress_hooks() as hooks:
        report = density_report(
            paths,
            options,
            marks,
            bins_per_decade=bins_per_decade,
            compare=compare,
            figure=figure,
            labels=labels,
            **hooks,
        )
    for w in report.warnings:
        say(f"Warning: {w}")
    if fmt == "json":
        emit(json.dumps(report.to_json(), indent=2) + "\n", None)
        return
    text = render_histograms(report.histograms, report.thresholds, float(marks.dense_above))
    if report.compared:
        text += f"Compared with {compare}:\n\n" + render_histograms(
            report.compared, report.thresholds, float(marks.dense_above)
        )
    emit(text, None)


def render_histograms(histograms: list[Any], marks: list[float], dense_above: float, width: int = 100) -> str:
    """Text histograms, one per component, readable without colour."""

    def draw(console: Console) -> None:
        for h in histograms:
            total = int(h.counts.sum()) + h.dead
            console.print(f"{h.component}: {total:,} neurons, {h.num_vectors:,} vectors", markup=False)
            tallest = max(int(h.counts.max(initial=0)), h.dead, 1)
            lines = [("never fired", h.dead, "")]
            for i in range(len(h.counts)):
                lo, hi = h.edges[i], h.edges[i + 1]
                notes = [f"<- {m:g}" for m in marks if m > 0 and lo <= math.log10(m) < hi]
                if lo <= math.log10(dense_above) < hi:
                    notes.append(f"<- dense > {dense_above:g}")
                lines.append((f"{lo:6.2f} .. {hi:5.2f}", int(h.counts[i]), "  ".join(notes)))
            console.print(f"  {'log10 density':<16} {'neurons':>8}", markup=False)
            for label, n, note in lines:
                bar = "█" * math.ceil(BAR_WIDTH * n / tallest) if n else ""
                console.print(f"  {label:<16} {n:>8} {bar} {note}".rstrip(), markup=False)
            below = [m for m in marks if 0 < m and m * h.num_vectors < 1]
            for m in below:
                console.print(
                    f"  (threshold {m:g} is below one fire in {h.num_vectors:,} vectors: dead at it means never fired)",
                    markup=False,
                    soft_wrap=True,
                )
            console.print("")

    return to_text(draw, width)
