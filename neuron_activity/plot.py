"""A log10 feature-density figure: one panel per component, dead neurons as their own bar,
thresholds marked. Needs matplotlib (``pip install matplotlib``)."""

from __future__ import annotations

import math
from pathlib import Path

from .density import DensityHistogram
from .errors import BadOutput, NactError
from .files import write_atomic

PANEL_INCHES = (8.0, 2.6)
DPI = 100


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
) -> None:
    """Write the figure to ``path`` (.png or .svg), atomically."""
    suffix = check_plot_path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NactError("drawing a figure needs matplotlib: pip install matplotlib") from None

    width, height = PANEL_INCHES
    fig, axes = plt.subplots(len(histograms), 1, figsize=(width, height * len(histograms)), dpi=DPI, squeeze=False)
    lowest = min(h.edges[0] for h in histograms)
    step = min(h.edges[1] - h.edges[0] for h in histograms)
    dead_x = lowest - 3 * step  # the dead bar stands apart, left of every density bin
    for ax, h in zip(axes[:, 0], histograms):
        widths = h.edges[1:] - h.edges[:-1]
        ax.bar(h.edges[:-1], h.counts, width=widths, align="edge", color="#4c72b0", edgecolor="white", linewidth=0.5,
               label="alive neurons")
        ax.bar([dead_x], [h.dead], width=step * 1.5, color="#c44e52", label=f"never fired ({h.dead})")
        for t in thresholds:
            if t > 0 and math.log10(t) >= lowest:
                ax.axvline(math.log10(t), color="#555555", linestyle="--", linewidth=1)
                ax.text(math.log10(t), 1.0, f" {t:g}", transform=ax.get_xaxis_transform(), fontsize=7,
                        va="top", color="#555555")
        ax.axvline(math.log10(dense_above), color="#dd8452", linestyle=":", linewidth=1.2,
                   label=f"dense (> {dense_above:g})")
        ax.axvspan(dead_x + step, math.log10(ultralow_below), color="#8172b3", alpha=0.08,
                   label=f"ultralow band (< {ultralow_below:g})")
        ax.set_title(f"{h.component}  ({h.num_vectors:,} vectors, {int(h.counts.sum()) + h.dead:,} neurons)",
                     fontsize=9, loc="left")
        ax.set_ylabel("neurons")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xlim(dead_x - step, 0.2)
        ticks = list(range(math.ceil(lowest), 1))
        ax.set_xticks([dead_x] + ticks)
        ax.set_xticklabels(["dead"] + [f"1e{t}" if t else "1" for t in ticks], fontsize=8)
        ax.legend(fontsize=7, loc="upper right", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1, 0].set_xlabel("feature density (fraction of vectors a neuron fires on), log scale")
    fig.tight_layout()
    try:
        write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format=suffix[1:], dpi=DPI))
    finally:
        plt.close(fig)
