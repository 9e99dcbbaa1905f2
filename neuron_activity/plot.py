"""A log10 feature-density figure: one panel per component (in rows, or side by side in
columns), dead neurons as their own bar, thresholds marked; PNG, SVG or PDF. Needs matplotlib
(``pip install matplotlib``)."""

from __future__ import annotations

import math
from pathlib import Path

from .density import DensityHistogram
from .errors import BadOutput, NactError
from .files import write_atomic

PANEL_INCHES = (9.0, 2.6)  # the legend stands right of the plot, clear of the bars
DPI = 200  # print quality by default: 1800 x 520 pixels per panel
FONT_SIZE = 9.5  # the axis labels'; titles are a little larger, ticks and legends a little smaller
FONT = {"title": 10 / FONT_SIZE, "label": 1.0, "tick": 8.5 / FONT_SIZE, "legend": 8.5 / FONT_SIZE}  # relative
COLORS = ("#4c72b0", "#dd8452")
SUFFIXES = (".png", ".svg", ".pdf")


def check_plot_path(path: Path) -> str:
    """The suffix of a figure file nact can draw (.png, .svg or .pdf), or BadOutput."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise BadOutput(path, "a figure is written as a .png, .svg or .pdf file")
    return suffix


def plot_histograms(
    histograms: list[DensityHistogram],
    path: Path,
    thresholds: list[float],
    dense_above: float,
    ultralow_below: float,
    *,
    dpi: int = DPI,
    log_y: bool = False,
    compare: list[DensityHistogram] | None = None,
    labels: tuple[str, str] | None = None,
    panel: tuple[float, float] = PANEL_INCHES,
    font_size: float = FONT_SIZE,
    columns: int = 1,
) -> None:
    """Write the figure to ``path`` (.png, .svg or .pdf), atomically: one panel per component
    (``panel`` inches each, ``columns`` of them side by side), alive neurons per log10-density
    bin, never-fired neurons as a bar of their own, thresholds dashed, the dense bound dotted,
    the ultralow band shaded; ``font_size`` points for the axis labels. ``compare``: histograms
    of the same components from other counts, drawn as outlines in the same panels (``labels``
    names both)."""
    suffix = check_plot_path(path)
    try:
        import matplotlib  # optional (the plot extra), and ~0.5 s with pyplot: only --plot needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NactError("drawing a figure needs matplotlib: pip install 'nact[plot]'") from None

    font = {part: size * font_size for part, size in FONT.items()}
    width, height = panel
    columns = max(1, min(columns, len(histograms)))
    rows = math.ceil(len(histograms) / columns)
    fig, grid = plt.subplots(rows, columns, figsize=(width * columns, height * rows), dpi=dpi, squeeze=False)
    axes = grid.reshape(-1)
    for unused in axes[len(histograms) :]:
        unused.set_visible(False)
    everything = histograms + list(compare or [])
    lowest = min(h.edges[0] for h in everything)
    step = min(h.edges[1] - h.edges[0] for h in everything)
    dead_x = lowest - 3 * step  # the dead bar stands apart, left of every density bin
    names = labels or ("", "")
    for i, (ax, h) in enumerate(zip(axes, histograms)):
        widths = h.edges[1:] - h.edges[:-1]
        first = f"{names[0]}: " if compare else ""
        ax.bar(
            h.edges[:-1],
            h.counts,
            width=widths,
            align="edge",
            color=COLORS[0],
            edgecolor="white",
            linewidth=0.5,
            label=f"{first}alive neurons",
            alpha=0.85 if compare else 1.0,
        )
        ax.bar([dead_x], [h.dead], width=step * 1.5, color="#c44e52", label=f"{first}never fired ({h.dead})")
        if compare:
            o = compare[i]
            ax.stairs(o.counts, o.edges, color=COLORS[1], linewidth=1.6, label=f"{names[1]}: alive neurons")
            ax.bar(
                [dead_x + step * 1.6],
                [o.dead],
                width=step * 1.5,
                color="none",
                edgecolor=COLORS[1],
                linewidth=1.6,
                label=f"{names[1]}: never fired ({o.dead})",
            )
        for t in thresholds:
            if t > 0 and math.log10(t) >= lowest:
                ax.axvline(math.log10(t), color="#555555", linestyle="--", linewidth=1)
                ax.text(
                    math.log10(t),
                    1.0,
                    f" {t:g}",
                    transform=ax.get_xaxis_transform(),
                    fontsize=font["tick"],
                    va="top",
                    color="#555555",
                )
        ax.axvline(
            math.log10(dense_above), color="#8c613c", linestyle=":", linewidth=1.4, label=f"dense (> {dense_above:g})"
        )
        ax.axvspan(
            lowest,
            math.log10(ultralow_below),
            color="#8172b3",
            alpha=0.08,
            label=f"ultralow band (< {ultralow_below:g})",
        )
        ax.set_title(
            f"{h.component}  ({h.num_vectors:,} vectors, {int(h.counts.sum()) + h.dead:,} neurons)",
            fontsize=font["title"],
            loc="left",
        )
        ax.set_ylabel("neurons", fontsize=font["label"])
        if log_y:
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylim(bottom=0)
        else:
            ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xlim(dead_x - step, 0.2)
        ticks = list(range(math.ceil(lowest), 1))
        ax.set_xticks([dead_x] + ticks)
        ax.set_xticklabels(["dead"] + [f"1e{t}" if t else "1" for t in ticks], fontsize=font["tick"])
        ax.tick_params(axis="y", labelsize=font["tick"])
        ax.legend(fontsize=font["legend"], loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        if i >= len(histograms) - columns:  # the bottom panel of its column
            ax.set_xlabel("feature density (fraction of vectors a neuron fires on), log scale", fontsize=font["label"])
    fig.tight_layout()
    try:
        write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format=suffix[1:], dpi=dpi))
    finally:
        plt.close(fig)
