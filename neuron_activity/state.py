"""Per-neuron state, declared once: what is kept for every neuron and how two parts combine.

Everything that combines counts loops over ``FIELDS``: adding a chunk's counts to a total,
merging saved counts, saving and loading them, and the torchrun all-reduce. A new per-neuron
statistic is one more ``Field`` here (and a kernel that produces it).

Parts combine in stream order: the part that is added comes after what is there, starting at
stream index ``first_vector`` (the index, in its component's stream, of the part's first vector).

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

Reduce = Literal["sum", "max", "last"]
SUM: Final = "sum"
MAX: Final = "max"
LAST: Final = "last"


@dataclass(frozen=True, slots=True)
class Field:
    """One per-neuron state: its name (also its name in saved counts), how parts combine, the
    value of a neuron that has seen nothing, and whether it is kept only when asked for."""

    name: str
    reduce: Reduce  # SUM: added; MAX: the larger; LAST: a stream index, shifted then the larger
    empty: int | float
    dtype: str = "int64"
    optional: bool = False
    doc: str = ""


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
)
BY_NAME = {f.name: f for f in FIELDS}
TRACK_LAST = ("last_fired",)  # the optional fields that tracking the time since last fired keeps
SAE_STATS = ("act_sums", "act_max")  # the optional fields a scan of SAE latents keeps


def empty(width: int, optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The states of ``width`` neurons that have seen nothing: every required field, and the
    optional ones named in ``optional``."""
    return {f.name: np.full(width, f.empty, dtype=f.dtype) for f in FIELDS if not f.optional or f.name in optional}


def shifted(field: Field, values: np.ndarray, first_vector: int) -> np.ndarray:
    """``values`` of a part as they read in a stream where the part starts at ``first_vector``."""
    if field.reduce != LAST or not first_vector:
        return values
    return np.where(values >= 0, values + first_vector, -1)


def combine(into: dict[str, np.ndarray], part: dict[str, np.ndarray], first_vector: int) -> None:
    """Add ``part`` (whose stream starts at ``first_vector``) into ``into``, in place.

    An optional field that only one side has cannot be known for the whole: it is dropped.
    """
    for field in FIELDS:
        if field.name not in into:
            continue
        if field.name not in part:
            del into[field.name]
            continue
        value = shifted(field, part[field.name], first_vector)
        if field.reduce == SUM:
            into[field.name] += value
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
