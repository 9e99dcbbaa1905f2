"""Counting on the CPU: the numpy kernel (cache-sized blocks, nothing converted) and the C
kernel (one pass, no temporaries, the GIL released). With ``stats`` each also keeps the
moments of the values (``stats.Moments``): the C kernel in the same pass for F64, F32, F16 and
BF16, numpy for the rest."""

from __future__ import annotations

import math

import numpy as np

from .counters import States, check_rows, states
from .dtypes import MOMENT_KINDS, FireRule
from .errors import BadOption
from .native import NATIVE_PROBLEM, kernels
from .stats import Moments

# Block shape for the numpy kernel, measured on 2-core x86 machines: the comparison output of a
# block stays in L2, and counts are summed in uint8 over at most 255 rows, so they cannot wrap.
BLOCK_BYTES = 256 * 1024
FOLD_WIDTH = 2048  # narrow rows are folded side by side so the row-sum runs over >= this many
MAX_UINT8_ROWS = 255


def in_ranges(
    values: np.ndarray, ranges: tuple[tuple[int, int], ...], out: np.ndarray, tmp: np.ndarray, spare: np.ndarray
) -> None:
    """``out`` = whether each unsigned value lies in one of the inclusive ``ranges`` (at least one).

    ``tmp`` (the values' dtype) and ``spare`` (bool) are scratch arrays of the same shape.
    """
    for i, (a, b) in enumerate(ranges):
        target = out if i == 0 else spare
        if a == 0:
            np.less_equal(values, b, out=target)
        else:  # a <= x <= b  <=>  (x - a) mod 2^n <= b - a
            np.subtract(values, a, out=tmp)
            np.less_equal(tmp, b - a, out=target)
        if i:
            np.logical_or(out, target, out=out)


class NumpyCounter:
    """Counts on the CPU with numpy, on cache-sized blocks, without converting any value."""

    name = "numpy"

    def __init__(self, rule: FireRule, width: int, track_last: bool = False, stats: bool = False) -> None:
        self.rule = rule
        self.width = width
        self.moments = Moments(width) if stats else None
        itemsize = np.dtype(rule.unsigned).itemsize
        self.fold = max(1, math.ceil(FOLD_WIDTH / max(width, 1)))
        folded_bytes = self.fold * width * itemsize
        self.block_rows = self.fold * max(1, min(MAX_UINT8_ROWS, BLOCK_BYTES // max(folded_bytes, 1)))
        self._tmp: np.ndarray = np.empty((self.block_rows, width), rule.unsigned)
        self._fires = np.empty((self.block_rows, width), np.bool_)
        self._nans = np.empty((self.block_rows, width), np.bool_)
        self._either = np.empty((self.block_rows, width), np.bool_)
        self._partial = np.empty(self.fold * width, np.uint8)
        self._fire_acc = np.zeros(self.fold * width, np.int64)
        self._nan_counts = np.zeros(width, np.int64)
        self._last = np.full(width, -1, np.int64) if track_last else None

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None:
        """Add the counts of ``bits`` (C-contiguous ``[rows, width]`` of the rule's uint type),
        whose rows are numbered from ``first_vector``."""
        check_rows(bits, self.width, self.rule.unsigned)
        rows = bits.shape[0]
        step = self.block_rows
        full = rows - rows % step
        for start in range(0, full, step):
            self._count_block(bits[start : start + step], self.fold, first_vector + start)
        for start in range(full, rows, MAX_UINT8_ROWS):
            self._count_block(bits[start : start + MAX_UINT8_ROWS], 1, first_vector + start)
        if self.moments is not None:
            self.moments.add(bits, self.rule.dtype)

    def _count_block(self, block: np.ndarray, fold: int, first_vector: int) -> None:
        n = block.shape[0]
        fires = self._fires[:n]
        if self.rule.fire_ranges:
            in_ranges(block, self.rule.fire_ranges, fires, self._tmp[:n], self._either[:n])
            # rows of the block side by side: [n, width] -> [n / fold, fold * width], summed in uint8
            per_row = fires.reshape(n // fold, fold * self.width).view(np.uint8)
            partial = self._partial[: fold * self.width]
            np.add.reduce(per_row, axis=0, dtype=np.uint8, out=partial)
            acc = self._fire_acc[: fold * self.width]
            np.add(acc, partial, out=acc)
            if self._last is not None:
                fired = fires.any(axis=0)
                last_in_block = first_vector + n - 1 - np.argmax(fires[::-1], axis=0)
                np.maximum(self._last, np.where(fired, last_in_block, -1), out=self._last)
        if self.rule.nan_above is not None:
            tmp, nans = self._tmp[:n], self._nans[:n]
            np.bitwise_and(block, self.rule.magnitude_mask, out=tmp)
            np.greater(tmp, self.rule.nan_above, out=nans)
            if nans.any():
                self._nan_counts += nans.sum(axis=0, dtype=np.int64)

    def result(self) -> States:
        fire_counts = self._fire_acc.reshape(self.fold, self.width).sum(axis=0)
        last = None if self._last is None else self._last.copy()
        return states(fire_counts, self._nan_counts.copy(), last, self.moments)


def native_count(
    rule: FireRule,
    bits: np.ndarray,
    fire_counts: np.ndarray,
    nan_counts: np.ndarray,
    last_fired: np.ndarray | None = None,
    first_vector: int = 0,
    moments: Moments | None = None,
) -> None:
    """Add the counts of ``bits`` (C-contiguous ``[rows, width]`` of the rule's uint type) into
    the int64 ``[width]`` arrays, with the C kernel: one pass, no temporaries, the GIL released.
    ``last_fired`` (when given) is raised to the stream index, from ``first_vector``, of each
    column's last fire; ``moments`` (when given) take in the values, in the same pass for the
    formats the kernel reads (``MOMENT_KINDS``)."""
    if kernels is None:
        raise BadOption("kernel", "native", f"is not available: the C kernel is {NATIVE_PROBLEM}")
    has_nan = rule.nan_above is not None
    args = [
        bits,
        bits.shape[0],
        bits.shape[1],
        bits.itemsize,
        list(rule.fire_ranges),
        rule.magnitude_mask if has_nan else 0,
        rule.nan_above or 0,
        fire_counts,
        nan_counts,
        last_fired,
        first_vector,
    ]
    kind = MOMENT_KINDS.get(rule.dtype)
    if moments is not None and kind is not None:
        kernels.count(*args, kind, moments.counts, moments.means, moments.m2)
        return
    kernels.count(*args)
    if moments is not None:
        moments.add(bits, rule.dtype)


def add_counts(rule: FireRule, bits: np.ndarray, fire_counts: np.ndarray, nan_counts: np.ndarray, kernel: str) -> None:
    """Add the fire and NaN counts of ``bits`` (as ``native_count`` takes them) into the int64
    arrays, with ``kernel``: native (the C kernel) or numpy."""
    if kernel == "native":
        native_count(rule, bits, fire_counts, nan_counts)
        return
    counter = NumpyCounter(rule, bits.shape[1])
    counter.update(bits)
    counted = counter.result()
    fire_counts += counted["fire_counts"]
    nan_counts += counted["nan_counts"]


class NativeCounter:
    """Counts on the CPU with the C kernel: one pass over the data, no temporaries, GIL released."""

    name = "native"

    def __init__(self, rule: FireRule, width: int, track_last: bool = False, stats: bool = False) -> None:
        if kernels is None:
            raise BadOption("kernel", "native", f"is not available: the C kernel is {NATIVE_PROBLEM}")
        self.rule = rule
        self.width = width
        self._fire_counts = np.zeros(width, np.int64)
        self._nan_counts = np.zeros(width, np.int64)
        self._last = np.full(width, -1, np.int64) if track_last else None
        self.moments = Moments(width) if stats else None

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None:
        check_rows(bits, self.width, self.rule.unsigned)
        native_count(
            self.rule,
            np.ascontiguousarray(bits),
            self._fire_counts,
            self._nan_counts,
            self._last,
            first_vector,
            self.moments,
        )

    def result(self) -> States:
        last = None if self._last is None else self._last.copy()
        return states(self._fire_counts.copy(), self._nan_counts.copy(), last, self.moments)
