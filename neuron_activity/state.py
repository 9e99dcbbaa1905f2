"""Per-neuron state, declared once: what is kept for every neuron and how two parts combine.

Everything that combines counts loops over ``FIELDS``: adding a chunk's counts to a total,
merging saved counts, saving and loading them, and the torchrun all-reduce. A new per-neuron
statistic is one more ``Field`` here (and a kernel that produces it).

Parts combine in stream order: the part that is added comes after what is there, starting at
stream index ``first_vector`` (the index, in its component's stream, of the part's first vector).
A mean and its sum of squared deviations (``MEAN``, ``M2``) combine with Chan's formula, weighted
by the count they are over (``over``), so that the same values give the same moments however
they were cut into parts.

>>> a = {"fire_counts": np.array([1, 0]), "nan_counts": np.array([0, 0]), "last_fired": np.array([3, -1])}
>>> b = {"fire_counts": np.array([2, 1]), "nan_counts": np.array([0, 1]), "last_fired": np.array([0, 5])}
>>> combine(a, b, first_vector=10)
>>> a["fire_counts"].tolist(), a["last_fired"].tolist()
([3, 1], [10, 15])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from .stats import merge_moments

Reduce = Literal["sum", "max", "min", "last", "mean", "m2"]
SUM: Final = "sum"
MAX: Final = "max"
MIN: Final = "min"
LAST: Final = "last"
MEAN: Final = "mean"
M2: Final = "m2"


@dataclass(frozen=True, slots=True)
class Field:
    """One per-neuron state: its name (also its name in saved counts), how parts combine, the
    value of a neuron that has seen nothing, and whether it is kept only when asked for."""

    name: str
    reduce: Reduce  # SUM: added; MAX, MIN: the larger, the smaller; LAST: a stream index, shifted
    empty: int | float  # then the larger; MEAN, M2: Chan's formula over the counts named by ``over``
    dtype: str = "int64"
    optional: bool = False
    doc: str = ""
    over: str = ""  # MEAN: the SUM field of the count it is over; M2: its MEAN field


FIELDS: tuple[Field, ...] = (
    Field("fire_counts", SUM, 0, doc="vectors on which the neuron fired"),
    Field("nan_counts", SUM, 0, doc="NaN values the neuron had"),
    Field("last_fired", LAST, -1, optional=True, doc="stream index of the last vector it fired on; -1: never"),
    Field(
        "act_sums",
        SUM,
        0.0,
        "float64",
        optional=True,
        doc="sum of its activation over the vectors it fired on (SAE latents)",
    ),
    Field(
        "act_max",
        MAX,
        float("-inf"),
        "float64",
        optional=True,
        doc="its largest activation; -inf: none seen (SAE latents)",
    ),
    Field("value_counts", SUM, 0, optional=True, doc="values that were not NaN: what the mean is over (stats)"),
    Field("value_means", MEAN, 0.0, "float64", optional=True, over="value_counts", doc="mean of its values (stats)"),
    Field(
        "value_m2",
        M2,
        0.0,
        "float64",
        optional=True,
        over="value_means",
        doc="sum of squared deviations of its values from their mean (stats)",
    ),
    Field(
        "pre_max",
        MAX,
        float("-inf"),
        "float64",
        optional=True,
        doc="its largest pre-activation; -inf: none seen (SAE latents, stats)",
    ),
    Field(
        "margins",
        MIN,
        float("inf"),
        "float64",
        optional=True,
        doc="its firing boundary minus its pre-activation, the smallest seen; inf: none seen (SAE latents, stats)",
    ),
)
BY_NAME = {f.name: f for f in FIELDS}
TRACK_LAST = ("last_fired",)  # the optional fields that tracking the time since last fired keeps
SAE_STATS = ("act_sums", "act_max")  # the optional fields a scan of SAE latents keeps
MOMENTS = ("value_counts", "value_means", "value_m2")  # kept with stats, for stored activations
MARGINS = ("pre_max", "margins")  # kept with stats, for SAE latents


def empty(width: int, optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The states of ``width`` neurons that have seen nothing: every required field, and the
    optional ones named in ``optional``."""
    return {f.name: np.full(width, f.empty, dtype=f.dtype) for f in FIELDS if not f.optional or f.name in optional}


def shifted(field: Field, values: np.ndarray, first_vector: int) -> np.ndarray:
    """``values`` of a part as they read in a stream where the part starts at ``first_vector``."""
    if field.reduce != LAST or not first_vector:
        return values
    return np.where(values >= 0, values + first_vector, -1)


def _m2_of(mean: Field) -> str:
    """The M2 field that goes with a MEAN field."""
    return next(f.name for f in FIELDS if f.reduce == M2 and f.over == mean.name)


def combine(into: dict[str, np.ndarray], part: dict[str, np.ndarray], first_vector: int) -> None:
    """Add ``part`` (whose stream starts at ``first_vector``) into ``into``, in place.

    An optional field that only one side has cannot be known for the whole: it is dropped.
    """
    weights = {f.over: into[f.over].copy() for f in FIELDS if f.reduce == MEAN and f.over in into and f.over in part}
    for field in FIELDS:
        if field.name not in into:
            continue
        if field.name not in part or (field.reduce == MEAN and field.over not in weights):
            del into[field.name]
            continue
        value = shifted(field, part[field.name], first_vector)
        if field.reduce == SUM:
            into[field.name] += value
        elif field.reduce == MIN:
            np.minimum(into[field.name], value, out=into[field.name])
        elif field.reduce == MEAN:
            m2 = _m2_of(field)
            if m2 not in into or m2 not in part:
                del into[field.name]
                continue
            merge_moments(weights[field.over], into[field.name], into[m2], part[field.over], value, part[m2])
        elif field.reduce == M2:
            if field.over not in into:  # merged with its mean, unless that was dropped
                del into[field.name]
        else:
            np.maximum(into[field.name], value, out=into[field.name])


def combined(
    a: dict[str, np.ndarray], a_vectors: int, b: dict[str, np.ndarray], b_vectors: int
) -> dict[str, np.ndarray]:
    """The states of ``a`` followed by ``b`` (new arrays). A side with no vectors constrains
    nothing, so an optional field the other side has is kept."""
    if not a_vectors and not b_vectors:
        names = set(a) | set(b)
    elif not a_vectors:
        names = set(b)
    elif not b_vectors:
        names = set(a)
    else:
        names = set(a) & set(b)
    width = len(next(iter(a.values())))
    optional = tuple(n for n in names if BY_NAME[n].optional)
    out = empty(width, optional)
    for side, first in ((a, 0), (b, a_vectors)):
        combine(out, {**empty(width, optional), **side}, first)
    return out


def select(states: dict[str, np.ndarray], part: slice) -> dict[str, np.ndarray]:
    """The states of the neurons in ``part`` (copies)."""
    return {name: values[part].copy() for name, values in states.items()}
