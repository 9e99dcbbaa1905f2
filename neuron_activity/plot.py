"""A log10 feature-density figure: one panel per component, dead neurons as their own bar,
thresholds marked. Needs matplotlib (``pip install matplotlib``)."""

from __future__ import annotations

import math
from pathlib import Path

from .density import DensityHistogram
from .errors import BadOutput, NactError
from .files import write_atomic

PANEL_INCHES = (9.0, 2.6)  # the legend stands right of the plot, clear of the bars
DPI = 200  # print quality by default: 1800 x 520 pixels per panel
FONT = {"title": 10, "label": 9.5, "tick": 8.5, "legend": 8.5}
COLORS = ("#4c72b0", "#dd8452")


def check_plot_path(path: Path) -> str:
    """The suffix of a figure file nact can draw (.png or .svg), or BadOutput."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".png", ".svg"):
        raise BadOutput(path, "a figure is written as a .png or .svg file")
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
) -> None:
    """Write the figure to ``path`` (.png or .svg), atomically: one panel per component, alive
    neurons per log10-density bin, never-fired neurons as a bar of their own, thresholds dashed,
    the dense bound dotted, the ultralow band shaded. ``compare``: histograms of the same
    components from other counts, drawn as outlines in the same panels (``labels`` names both)."""
    suffix = check_plot_path(path)
    try:
        import matplotlib  # optional (the plot extra), and ~0.5 s with pyplot: only --plot needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NactError("drawing a figure needs matplotlib: pip install matplotlib") from None

    width, height = PANEL_INCHES
    fig, axes = plt.subplots(len(histograms), 1, figsize=(width, height * len(histograms)), dpi=dpi, squeeze=False)
    everything = histograms + list(compare or [])
    lowest = min(h.edges[0] for h in everything)
    step = min(h.edges[1] - h.edges[0] for h in everything)
    dead_x = lowest - 3 * step  # the dead bar stands apart, left of every density bin
    names = labels or ("", "")
    for i, (ax, h) in enumerate(zip(axes[:, 0], histograms)):
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
                    fontsize=FONT["tick"],
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
            fontsize=FONT["title"],
            loc="left",
        )
        ax.set_ylabel("neurons", fontsize=FONT["label"])
        if log_y:
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylim(bottom=0)
        else:
            ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xlim(dead_x - step, 0.2)
        ticks = list(range(math.ceil(lowest), 1))
        ax.set_xticks([dead_x] + ticks)
        ax.set_xticklabels(["dead"] + [f"1e{t}" if t else "1" for t in ticks], fontsize=FONT["tick"])
        ax.tick_params(axis="y", labelsize=FONT["tick"])
        ax.legend(fontsize=FONT["legend"], loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1, 0].set_xlabel("feature density (fraction of vectors a neuron fires on), log scale", fontsize=FONT["label"])
    fig.tight_layout()
    try:
        write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format=suffix[1:], dpi=dpi))
    finally:
        plt.close(fig)
