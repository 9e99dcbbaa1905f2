"""An independent reference: plain numpy counts over the whole array, in float64 values.

It shares no code with nact: values are converted to float64 (exact for every dtype nact
reads) and compared with the exact threshold using only float64 arithmetic and Fractions.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def greater_than(values: np.ndarray, t: Fraction) -> np.ndarray:
    """Exact ``values > t`` for float64 ``values`` and an exact rational ``t``."""
    nearest = float(t)  # rounds to the nearest float64
    if Fraction(nearest) == t:
        return values > nearest
    if Fraction(nearest) > t:  # no float64 lies strictly between t and nearest
        return values >= nearest
    return values > nearest


def fire_counts(values: np.ndarray, fire_above: Fraction = Fraction(0)) -> np.ndarray:
    """Per-column count of ``values > fire_above`` over all rows of a float64 ``[N, F]`` array."""
    return greater_than(values, fire_above).sum(axis=0).astype(np.int64)


def dead_count(counts: np.ndarray, num_vectors: int, threshold: str) -> int:
    """Neurons whose count is ``<= threshold * num_vectors``, compared as exact rationals."""
    bound = Fraction(threshold) * num_vectors
    return sum(1 for c in counts.tolist() if Fraction(c) <= bound)


def as_float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.to(torch.float64).numpy()


def write_shard(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def random_activations(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """Activations with many zeros, negatives, a few dead columns, tiny and huge values."""
    x = rng.standard_normal(shape) * rng.choice([1e-7, 1e-5, 1e-3, 1.0, 100.0], size=shape)
    x[rng.random(shape) < 0.5] = 0.0
    if shape[-1] > 1:
        x[..., rng.integers(shape[-1])] = 0.0  # a dead column
    return torch.from_numpy(x).to(TORCH_DTYPES[dtype])


def floor_bound(threshold: str, num_vectors: int) -> int:
    return math.floor(Fraction(threshold) * num_vectors)


def assert_moments(states: dict[str, np.ndarray], values: np.ndarray, rtol: float = 1e-9) -> None:
    """Kept moments (``value_counts``, ``value_means``, ``value_m2``) equal float64 numpy's over
    ``values`` ``[N, F]`` with NaNs left out: the standard deviation to ``rtol``, the mean to
    ``rtol`` of its size plus its spread (a mean near 0 is known only that well)."""
    counts = (~np.isnan(values)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), 0.0)
        std = np.sqrt(np.where(counts > 0, np.nansum((values - mean) ** 2, axis=0) / np.maximum(counts, 1), 0.0))
        got_std = np.sqrt(states["value_m2"] / np.maximum(counts, 1))
    assert states["value_counts"].tolist() == counts.tolist()
    assert (np.abs(states["value_means"] - mean) <= rtol * (np.abs(mean) + std)).all(), (states["value_means"], mean)
    assert (np.abs(got_std - std) <= rtol * std).all(), (got_std, std)
