"""What a counter is: something made for one tensor layout (dtype, width) and fire rule, fed
chunks of raw bits ``[rows, width]`` with ``update``, and read once with ``result``. Counts are
exact integers (int64 totals). The CPU counters are in ``cpu_counting``, the torch one in
``torch_counting``; ``counting.make_counter`` picks one."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .stats import Moments

States = dict[str, np.ndarray]  # per-column states by field name (see state.FIELDS)


class Counted(Protocol):
    """What counted some chunks: its kernel's name and the states it counted."""

    name: str  # the kernel: native, numpy or torch (sae+... when an SAE encoded first)

    def result(self) -> States: ...


class Counter(Counted, Protocol):
    """Counts chunks of one layout. ``update`` numbers the chunk's rows from ``first_vector``
    (their index in the component's stream); ``result`` gives the states (``last_fired`` in
    that numbering, -1 where a column never fired, present only when tracked; the moments of
    the values, ``state.MOMENTS``, when asked for)."""

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None: ...


def states(
    fire_counts: np.ndarray, nan_counts: np.ndarray, last_fired: np.ndarray | None, moments: Moments | None = None
) -> States:
    """A counter's result: the required states, ``last_fired`` when it was tracked, and the
    moments of the values when they were kept."""
    out = {"fire_counts": fire_counts, "nan_counts": nan_counts}
    if last_fired is not None:
        out["last_fired"] = last_fired
    if moments is not None:
        out.update(moments.states())
    return out


def check_rows(bits: np.ndarray, width: int, unsigned: type) -> None:
    """A chunk is ``[rows, width]`` of the rule's unsigned type (a bug otherwise, not bad input)."""
    if bits.ndim != 2 or bits.shape[1] != width or bits.dtype != unsigned:
        raise ValueError(f"expected [rows, {width}] {np.dtype(unsigned)}, got {list(bits.shape)} {bits.dtype}")
