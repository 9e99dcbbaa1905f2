"""``nact density``: the log10 feature-density histogram per component, in the terminal or a figure."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .counts import load_merged
from .output import emit, on_terminal, say
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
    SAE,
    SKIP_POSITIONS,
    ULTRALOW_HELP,
    check_format,
    count_options,
    input_paths,
)

BAR_WIDTH = 50


def density(
    paths: List[str] = typer.Argument(
        ..., metavar="PATH...", help="Activation shards or folders (or their URLs), saved counts files, or SAELens sparsity.safetensors files.",
        show_default=False
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
    sae: Optional[List[str]] = SAE,
    skip_positions: Optional[str] = SKIP_POSITIONS,
    fire_above: str = typer.Option("0", "--fire-above", metavar="X", help="A neuron fires when above X."),
    device: str = typer.Option("auto", "--device", "-d", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps."),
    bins_per_decade: int = typer.Option(4, "--bins-per-decade", metavar="B", help="Histogram bins per factor of 10."),
    dense_above: str = typer.Option("0.01", "--dense-above", metavar="D", help=DENSE_ABOVE_HELP),
    ultralow_below: str = typer.Option("1e-4", "--ultralow-below", metavar="D", help=ULTRALOW_HELP),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE", help="Also draw the figure to FILE (.png or .svg)."),
    dpi: int = typer.Option(200, "--dpi", metavar="N", help="Resolution of a .png figure (dots per inch)."),
    log_y: bool = typer.Option(False, "--log-y", help="Draw neuron counts on a log scale (shows a small ultralow tail)."),
    compare: Optional[Path] = typer.Option(
        None, "--compare", metavar="OTHER", help="Also draw OTHER (counts or activations) in the same panels, e.g. a later checkpoint."
    ),
    fmt: str = typer.Option("table", "--format", "-f", metavar="FORMAT", help="table or json."),
) -> None:
    """Show the log10 feature-density histogram of every component: dead neurons apart, thresholds marked.

    Density is the fraction of vectors on which a neuron fires. PATH may be activations (like nact scan), counts saved with --save-counts, or a SAELens sparsity.safetensors (log10 densities; --num-vectors says over how many vectors). --plot needs matplotlib: pip install matplotlib.

    Examples:

      nact density shards/

      nact density counts.safetensors --plot density.png --log-y

      nact density step-1000.safetensors --compare step-2000.safetensors --plot compare.png

      nact density cache/ --sae sae/ --compare sae/sparsity.safetensors   # nact's counts against SAELens' own
    """
    check_format(fmt, ("table", "json"))
    from neuron_activity.density import histogram, summarize
    from neuron_activity.options import ReportOptions, check_bins_per_decade
    from neuron_activity.pipeline import check_outputs

    check_bins_per_decade(bins_per_decade)
    if not 10 <= dpi <= 1200:
        raise typer.BadParameter("must be from 10 to 1200", param_hint="'--dpi'")
    marks = ReportOptions.parse(threshold or ["1e-5", "1e-6"], dense_above=dense_above, ultralow_below=ultralow_below)
    options = count_options(
        key, flatten, component_axis, group_by, input_format, num_latents, num_vectors, partial_latents, sae,
        skip_positions, fire_above=fire_above, device=device,
    )
    if plot is not None:
        from neuron_activity.plot import check_plot_path

        check_plot_path(plot)
        check_outputs([plot])
    activity, warnings = _activity(input_paths(paths), options)
    components = [c for c in activity.components.values() if c.num_vectors]
    if not components:
        activity.rows(list(marks.thresholds))  # raises: no vectors at all
    histograms = [histogram(c, bins_per_decade) for c in components]
    summaries = [summarize(c, marks.dense_above, marks.ultralow_below) for c in components]
    others = []
    if compare is not None:
        other, more = _activity([compare], options)
        warnings += more
        shared = [c.name for c in components if c.name in other.components and other.components[c.name].num_vectors]
        if not shared:
            raise typer.BadParameter(f"{compare} has no component of {', '.join(c.name for c in components)}", param_hint="'--compare'")
        histograms = [h for h in histograms if h.component in shared]
        summaries = [s for s in summaries if s.component in shared]
        others = [histogram(other.components[name], bins_per_decade) for name in shared]
    thresholds = [float(t.value) for t in marks.thresholds]
    if plot is not None:
        from neuron_activity.plot import plot_histograms

        labels = (", ".join(map(str, paths)), str(compare)) if compare is not None else None
        plot_histograms(histograms, plot, thresholds, float(marks.dense_above), float(marks.ultralow_below),
                        dpi=dpi, log_y=log_y, compare=others or None, labels=labels)
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
        if others:
            doc["compare"] = [
                {"component": h.component, "num_vectors": h.num_vectors, "never_fired": h.dead,
                 "log10_density_edges": h.edges.tolist(), "alive_per_bin": h.counts.tolist()}
                for h in others
            ]
        emit(json.dumps(doc, indent=2) + "\n", None)
    else:
        text = render_histograms(histograms, thresholds, float(marks.dense_above))
        if others:
            text += f"Compared with {compare}:\n\n" + render_histograms(others, thresholds, float(marks.dense_above))
        emit(text, None)


def _activity(paths: list[Path], options: object) -> tuple[object, list[str]]:
    """The counts of ``paths``: saved counts merged, or activations scanned (with a progress bar
    on a terminal); and warnings."""
    from neuron_activity.activity import NeuronActivity
    from neuron_activity.sparsity import is_sparsity_file, load_sparsity
    from neuron_activity.scan import scan as scan_shards
    from neuron_activity.sources.base import is_remote
    from neuron_activity.sources.safetensors_files import is_counts_file

    from .scan import _progress

    local = bool(paths) and not any(is_remote(p) for p in paths)  # objects in a store: activations
    if local and all(p.is_file() and is_counts_file(p) for p in paths):
        return load_merged(paths).activity, []  # type: ignore[attr-defined]
    if local and all(is_sparsity_file(p) for p in paths):  # SAELens' log10 densities
        activity, notes = NeuronActivity(), []
        for p in paths:
            one, note = load_sparsity(p, options.num_vectors)  # type: ignore[attr-defined]
            if set(one.components) & set(activity.components):
                raise typer.BadParameter(f"{p}: its component {next(iter(one.components))!r} is given twice")
            activity.merge(one)
            notes.append(note)
        return activity, notes
    with _progress(on_terminal(sys.stderr)) as progress:
        hooks = dict(on_plan=progress.start, on_progress=progress.advance) if progress else {}
        result = scan_shards(paths, options=options, **hooks)  # type: ignore[arg-type]
    return result.activity, result.warnings


def render_histograms(histograms: list, marks: list[float], dense_above: float, width: int = 100) -> str:
    """Text histograms, one per component, readable without colour."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False)
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
    return buffer.getvalue()
