"""Feature density: the fraction of vectors on which each neuron fires, and the picture SAE
researchers read from its log10 histogram (dead neurons, an ultralow-density cluster, dense ones).

The ultralow cluster is detected simply: alive neurons whose density is below ``ultralow_below``
(default 1e-4, the top of the 1e-7..1e-4 band where "Towards Monosemanticity" found one); it is
reported present when they are at least ``ultralow_min_fraction`` (default 1%) of alive neurons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .activity import ComponentActivity

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DEFAULT_DENSE_ABOVE = Fraction(1, 100)
DEFAULT_ULTRALOW_BELOW = Fraction(1, 10_000)
DEFAULT_ULTRALOW_MIN_FRACTION = Fraction(1, 100)


def densities(component: ComponentActivity) -> np.ndarray:
    """Fraction of vectors on which each neuron fired (float64)."""
    return component.fire_counts / max(component.num_vectors, 1)


@dataclass(frozen=True)
class DensitySummary:
    component: str
    num_features: int
    never_fired: int
    dense: int  # density > dense_above
    dense_above: float
    log10_quantiles: dict[float, float]  # over alive neurons; empty when none is alive
    ultralow: int  # alive, density < ultralow_below
    ultralow_below: float
    ultralow_present: bool  # ultralow neurons are at least ultralow_min_fraction of the alive ones
    ultralow_fraction: float = 0.0  # ultralow neurons / alive neurons

    def as_dict(self) -> dict[str, object]:
        return {
            "component": self.component,
            "num_features": self.num_features,
            "never_fired": self.never_fired,
            "dense": self.dense,
            "dense_above": self.dense_above,
            "median_log10_density": self.log10_quantiles.get(0.5),
            "log10_density_quantiles": {str(q): v for q, v in self.log10_quantiles.items()},
            "ultralow": self.ultralow,
            "ultralow_below": self.ultralow_below,
            "ultralow_fraction_of_alive": self.ultralow_fraction,
            "ultralow_cluster": self.ultralow_present,
        }


def _quantiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.quantile``'s default (linear) quantiles of a non-empty array, without it: it imports
    ``numpy.ma``, a fifth of nact's start-up."""
    ordered = np.sort(values)
    out = []
    for q in qs:
        at = q * (len(ordered) - 1)
        lo = int(math.floor(at))
        hi = min(lo + 1, len(ordered) - 1)
        a, b, t = float(ordered[lo]), float(ordered[hi]), at - lo
        out.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)  # numpy's _lerp
    return out


def summarize(
    component: ComponentActivity,
    dense_above: Fraction = DEFAULT_DENSE_ABOVE,
    ultralow_below: Fraction = DEFAULT_ULTRALOW_BELOW,
    ultralow_min_fraction: Fraction = DEFAULT_ULTRALOW_MIN_FRACTION,
) -> DensitySummary:
    counts, n = component.fire_counts, component.num_vectors
    alive = counts > 0
    # exact comparisons of count / n with the bounds, as integers
    dense = int((counts > math.floor(dense_above * n)).sum())
    ultralow_mask = alive & (counts < math.ceil(ultralow_below * n))
    ultralow = int(ultralow_mask.sum())
    logs = np.log10(counts[alive] / n) if alive.any() else np.empty(0)
    quantiles = dict(zip(QUANTILES, _quantiles(logs, QUANTILES))) if logs.size else {}
    present = bool(alive.any()) and Fraction(ultralow, int(alive.sum())) >= ultralow_min_fraction and ultralow > 0
    return DensitySummary(
        component.name,
        component.num_features,
        int((~alive).sum()),
        dense,
        float(dense_above),
        quantiles,
        ultralow,
        float(ultralow_below),
        present,
        ultralow / int(alive.sum()) if alive.any() else 0.0,
    )


@dataclass(frozen=True)
class DensityHistogram:
    """Counts of alive neurons per log10-density bin, and the dead ones apart."""

    component: str
    edges: np.ndarray  # log10 density bin edges, ascending, the last one 0
    counts: np.ndarray  # alive neurons per bin
    dead: int  # neurons that never fired (density 0, no log)
    num_vectors: int


def histogram(component: ComponentActivity, bins_per_decade: int = 4) -> DensityHistogram:
    """log10-density histogram: bins of 1/bins_per_decade decades from the lowest possible
    density (one fire in all vectors) up to 1."""
    n = max(component.num_vectors, 1)
    step = 1 / bins_per_decade
    low = math.floor(math.log10(1 / n) * bins_per_decade) * step
    edges = np.round(np.arange(low, step / 2, step), 10)
    if edges.size < 2:
        edges = np.array([low - step, 0.0])
    counts = component.fire_counts
    alive = counts > 0
    logs = np.log10(counts[alive] / n)
    binned, _ = np.histogram(logs, bins=edges)
    return DensityHistogram(component.name, edges, binned.astype(np.int64), int((~alive).sum()), component.num_vectors)


def top_neurons(component: ComponentActivity, k: int) -> tuple[list[int], list[int]]:
    """Indices of the ``k`` most and ``k`` least active neurons (ties by index)."""
    order = np.lexsort((np.arange(component.num_features), -component.fire_counts))
    most = order[:k].tolist()
    least_order = np.lexsort((np.arange(component.num_features), component.fire_counts))
    return most, least_order[:k].tolist()
