"""Kernels that turn chunks of raw bits ``[rows, width]`` into exact per-column counts.

A counter is made for one tensor layout (dtype, width) and fire rule, fed chunk by chunk with
``update``, and read once with ``result``. Counts are exact integers (int64 totals).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from .dtypes import FireRule
from .errors import DeviceUnavailable

# Block shape for the numpy kernel, measured on 2-core x86 machines: the comparison output of a
# block stays in L2, and counts are summed in uint8 over at most 255 rows, so they cannot wrap.
BLOCK_BYTES = 256 * 1024
FOLD_WIDTH = 2048  # narrow rows are folded side by side so the row-sum runs over >= this many
MAX_UINT8_ROWS = 255


class Counter(Protocol):
    def update(self, bits: np.ndarray) -> None: ...

    def result(self) -> tuple[np.ndarray, np.ndarray]: ...


class NumpyCounter:
    """Counts on the CPU with numpy, on cache-sized blocks, without converting any value."""

    def __init__(self, rule: FireRule, width: int) -> None:
        self.rule = rule
        self.width = width
        itemsize = np.dtype(rule.unsigned).itemsize
        self.fold = max(1, math.ceil(FOLD_WIDTH / max(width, 1)))
        folded_bytes = self.fold * width * itemsize
        self.block_rows = self.fold * max(1, min(MAX_UINT8_ROWS, BLOCK_BYTES // max(folded_bytes, 1)))
        self._tmp = np.empty((self.block_rows, width), rule.unsigned)
        self._fires = np.empty((self.block_rows, width), np.bool_)
        self._nans = np.empty((self.block_rows, width), np.bool_)
        self._either = np.empty((self.block_rows, width), np.bool_) if len(rule.fire_ranges) > 1 else None
        self._partial = np.empty(self.fold * width, np.uint8)
        self._fire_acc = np.zeros(self.fold * width, np.int64)
        self._nan_counts = np.zeros(width, np.int64)
        self._magnitude_mask = (1 << (8 * itemsize - 1)) - 1  # every bit but the sign

    def update(self, bits: np.ndarray) -> None:
        """Add the counts of ``bits`` (C-contiguous ``[rows, width]`` of the rule's uint type)."""
        if bits.ndim != 2 or bits.shape[1] != self.width or bits.dtype != self.rule.unsigned:
            raise ValueError(f"expected [rows, {self.width}] {self.rule.unsigned}, got {bits.shape} {bits.dtype}")
        rows = bits.shape[0]
        step = self.block_rows
        full = rows - rows % step
        for start in range(0, full, step):
            self._count_block(bits[start : start + step], self.fold)
        for start in range(full, rows, MAX_UINT8_ROWS):
            self._count_block(bits[start : start + MAX_UINT8_ROWS], 1)

    def _count_block(self, block: np.ndarray, fold: int) -> None:
        n = block.shape[0]
        fires = self._fires[:n]
        if self.rule.fire_ranges:
            self._in_ranges(block, self.rule.fire_ranges, fires)
            # rows of the block side by side: [n, width] -> [n / fold, fold * width], summed in uint8
            per_row = fires.reshape(n // fold, fold * self.width).view(np.uint8)
            partial = self._partial[: fold * self.width]
            np.add.reduce(per_row, axis=0, dtype=np.uint8, out=partial)
            acc = self._fire_acc[: fold * self.width]
            np.add(acc, partial, out=acc)
        if self.rule.nan_above is not None:
            tmp, nans = self._tmp[:n], self._nans[:n]
            np.bitwise_and(block, self._magnitude_mask, out=tmp)
            np.greater(tmp, self.rule.nan_above, out=nans)
            if nans.any():
                self._nan_counts += nans.sum(axis=0, dtype=np.int64)

    def _in_ranges(self, block: np.ndarray, ranges: tuple[tuple[int, int], ...], out: np.ndarray) -> None:
        tmp = self._tmp[: block.shape[0]]
        for i, (a, b) in enumerate(ranges):
            target = out if i == 0 else self._either[: block.shape[0]]
            if a == 0:
                np.less_equal(block, b, out=target)
            else:  # a <= x <= b  <=>  (x - a) mod 2^n <= b - a
                np.subtract(block, a, out=tmp)
                np.less_equal(tmp, b - a, out=target)
            if i:
                np.logical_or(out, target, out=out)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        fire_counts = self._fire_acc.reshape(self.fold, self.width).sum(axis=0)
        return fire_counts, self._nan_counts.copy()


TORCH_SIGNED = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}


class TorchCounter:
    """Counts with torch on a device (cuda, mps, or cpu for testing); totals stay on the device."""

    def __init__(self, rule: FireRule, width: int, device: str) -> None:
        import torch

        self.torch = torch
        self.rule = rule
        self.width = width
        self.device = torch.device(device)
        self.signed = getattr(torch, TORCH_SIGNED[np.dtype(rule.unsigned).itemsize])
        self._np_signed = np.dtype(f"i{np.dtype(rule.unsigned).itemsize}")
        self._fire_counts = torch.zeros(width, dtype=torch.int64, device=self.device)
        self._nan_counts = torch.zeros(width, dtype=torch.int64, device=self.device)
        self._ranges = rule.signed_fire_ranges()
        sign = 1 << (8 * np.dtype(rule.unsigned).itemsize - 1)
        self._magnitude_mask = sign - 1

    def update(self, bits: np.ndarray) -> None:
        torch = self.torch
        host = torch.from_numpy(np.ascontiguousarray(bits).view(self._np_signed))
        x = host.to(self.device, non_blocking=False)
        if self._ranges:
            fires = None
            for a, b in self._ranges:
                inside = (x >= a) & (x <= b)
                fires = inside if fires is None else fires | inside
            self._fire_counts += fires.sum(dim=0, dtype=torch.int64)
        if self.rule.nan_above is not None:
            nans = (x & self._magnitude_mask) > self.rule.nan_above
            self._nan_counts += nans.sum(dim=0, dtype=torch.int64)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self._fire_counts.cpu().numpy(), self._nan_counts.cpu().numpy()


def make_counter(rule: FireRule, width: int, device: str) -> Counter:
    if device == "cpu":
        return NumpyCounter(rule, width)
    return TorchCounter(rule, width, device)


def _nvidia_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def resolve_device(requested: str) -> str:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device that is present, or raise DeviceUnavailable.

    ``auto`` looks for a GPU without importing torch first (torch costs seconds to import), so
    CPU scans never pay for it.
    """
    requested = requested.strip().lower()
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        mac = sys.platform == "darwin" and os.uname().machine == "arm64"
        if not (_nvidia_present() or mac) or not _torch_installed():
            return "cpu"
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if mac and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind, _, index = requested.partition(":")
    if kind not in ("cuda", "mps") or (index and (kind == "mps" or not index.isdigit())):
        raise DeviceUnavailable(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps")
    if not _torch_installed():
        raise DeviceUnavailable(f"device {requested!r} needs PyTorch, which is not installed")
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {requested!r} is not available: PyTorch sees no CUDA GPU")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device {requested!r} is not available: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)"
            )
        return requested
    if not torch.backends.mps.is_available():
        raise DeviceUnavailable("device 'mps' is not available on this machine")
    return "mps"
