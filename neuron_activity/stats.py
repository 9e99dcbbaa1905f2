"""Activation statistics (``--stats``): per-dimension moments merged with Chan's formula, and
what they say about a component: the norms of the mean and of the standard deviation, their
ratio gamma, and the dimensions furthest from zero in standard deviations.

gamma = ||mean|| / ||std|| is the ratio that arXiv 2605.31518 ("On the Relationship Between
Activation Outliers and Feature Death in Sparse Autoencoders", 2026) finds predicts how many of
an SAE's latents die when it is trained on these activations. See docs/stats.md.

>>> import numpy as np
>>> x = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 13.0]])
>>> n, mean, m2 = chunk_moments(x)
>>> n.tolist(), mean.tolist(), m2.tolist()
([3, 3], [3.0, 11.0], [8.0, 6.0])
>>> half = chunk_moments(x[:1]), chunk_moments(x[1:])
>>> (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = half
>>> merge_moments(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
>>> mean_a.tolist(), m2_a.tolist()
([3.0, 11.0], [8.0, 6.0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dtypes import to_float64

OUTLIER_DIMS = 10  # the dimensions listed, furthest from zero first
# A heuristic, not a finding of the paper (which reports rank correlations, no cutoff): at
# gamma >= 1 the mean's offset along a random encoder direction is as large as the spread of the
# activations along it, so latents that point away from the mean sit below zero on most inputs.
MEAN_CENTERING_GAMMA = 1.0


def chunk_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of float64 ``[rows, width]``: how many values are not NaN, their mean and the
    sum of their squared deviations from it (two passes: the numpy kernel's way)."""
    nan = np.isnan(values)
    counts = values.shape[0] - nan.sum(axis=0, dtype=np.int64)
    has_nan = bool(nan.any())
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sums = np.nansum(values, axis=0) if has_nan else values.sum(axis=0)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        deviations = values - means
        squared = np.square(deviations, out=deviations)
        m2 = np.nansum(squared, axis=0) if has_nan else squared.sum(axis=0)
    return counts, means, np.where(counts > 0, m2, 0.0)


def merge_moments(
    n_a: np.ndarray, mean_a: np.ndarray, m2_a: np.ndarray, n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray
) -> None:
    """Chan et al.'s parallel formula: the moments of values ``a`` then ``b`` into ``mean_a`` and
    ``m2_a``, in place. The counts are not changed (the caller adds ``n_b`` to ``n_a``)."""
    a, b = n_a.astype(np.float64), n_b.astype(np.float64)
    n = a + b
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        share = np.where(n > 0, b / np.where(n > 0, n, 1.0), 0.0)
        delta = mean_b - mean_a
        mean = mean_a + delta * share
        m2 = m2_a + m2_b + delta * delta * (a * share)
    np.copyto(mean_a, np.where(a == 0, mean_b, np.where(b == 0, mean_a, mean)))
    np.copyto(m2_a, np.where(a == 0, m2_b, np.where(b == 0, m2_a, m2)))


BLOCK_BYTES = 1024 * 1024  # float64 values converted and summed at a time by the numpy kernel


class Moments:
    """Running per-dimension moments (see ``state.MOMENTS``): how many values were not NaN, their
    mean and the sum of their squared deviations from it, in float64."""

    def __init__(self, width: int) -> None:
        self.counts = np.zeros(width, np.int64)
        self.means = np.zeros(width, np.float64)
        self.m2 = np.zeros(width, np.float64)

    def add(self, bits: np.ndarray, dtype: str) -> None:
        """Merge in the values of rows of raw bits ``[rows, width]`` (the dtype's unsigned view),
        a block of rows at a time (numpy: the C kernel does it while it counts)."""
        step = max(1, BLOCK_BYTES // (8 * max(bits.shape[1], 1)))
        for start in range(0, bits.shape[0], step):
            n_b, mean_b, m2_b = chunk_moments(to_float64(bits[start : start + step], dtype))
            merge_moments(self.counts, self.means, self.m2, n_b, mean_b, m2_b)
            self.counts += n_b

    def states(self) -> dict[str, np.ndarray]:
        """The moments as the states they are kept in (copies)."""
        return {"value_counts": self.counts.copy(), "value_means": self.means.copy(), "value_m2": self.m2.copy()}


def standard_deviations(counts: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Per dimension, the standard deviation of its values (of the population: ``sqrt(M2 / n)``);
    NaN where it had none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.sqrt(np.maximum(m2, 0.0) / np.maximum(counts, 1)), np.nan)


@dataclass(frozen=True, slots=True)
class OutlierDim:
    """A dimension far from zero in standard deviations: ``|mean| / std`` is large."""

    dim: int
    mean: float
    std: float

    def as_dict(self) -> dict[str, object]:
        return {"dim": self.dim, "mean": json_number(self.mean), "std": json_number(self.std)}


@dataclass(frozen=True, slots=True)
class ActivationStats:
    """What the moments of a component say: ``||mean||``, ``||std||``, ``gamma`` (their ratio;
    NaN when ``||std||`` is 0 or a value was infinite) and the outlier dimensions."""

    mean_norm: float
    std_norm: float
    gamma: float
    outlier_dims: tuple[OutlierDim, ...]

    @property
    def consider_centering(self) -> bool:
        """Whether gamma is at least ``MEAN_CENTERING_GAMMA`` (a heuristic: see the constant)."""
        return math.isfinite(self.gamma) and self.gamma >= MEAN_CENTERING_GAMMA

    def as_dict(self) -> dict[str, object]:
        return {
            "mean_norm": json_number(self.mean_norm),
            "std_norm": json_number(self.std_norm),
            "gamma": json_number(self.gamma),
            "outlier_dims": [d.as_dict() for d in self.outlier_dims],
        }


def summarize(counts: np.ndarray, means: np.ndarray, m2: np.ndarray, first_dim: int = 0) -> ActivationStats:
    """The summary of per-dimension moments (dimensions that had no value are left out);
    dimensions are numbered from ``first_dim``."""
    seen = counts > 0
    mean, std = means[seen], standard_deviations(counts, m2)[seen]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mean_norm, std_norm = float(np.linalg.norm(mean)), float(np.linalg.norm(std))
        gamma = mean_norm / std_norm if std_norm > 0 else math.nan
        score = np.abs(mean) / std  # inf for a constant non-zero dimension; NaN for a constant zero
    scored = np.flatnonzero(~np.isnan(score))  # a dimension that is always 0 is no outlier
    top = scored[np.lexsort((scored, -score[scored]))][:OUTLIER_DIMS]  # largest first, ties by dimension
    dims = np.flatnonzero(seen)[top] + first_dim
    outliers = tuple(OutlierDim(int(d), float(mean[i]), float(std[i])) for d, i in zip(dims, top))
    return ActivationStats(mean_norm, std_norm, gamma if math.isfinite(gamma) else math.nan, outliers)


def json_number(value: float) -> float | None:
    """A float as JSON has it: NaN and infinities (never fired, never seen) are null."""
    value = float(value)
    return value if math.isfinite(value) else None
