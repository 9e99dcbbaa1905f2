"""Kernels that turn chunks of raw bits ``[rows, width]`` into exact per-column counts.

A counter is made for one tensor layout (dtype, width) and fire rule, fed chunk by chunk with
``update``, and read once with ``result``. Counts are exact integers (int64 totals).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from .dtypes import TORCH_SIGNED, FireRule
from .errors import BadOption, DeviceUnavailable

# Block shape for the numpy kernel, measured on 2-core x86 machines: the comparison output of a
# block stays in L2, and counts are summed in uint8 over at most 255 rows, so they cannot wrap.
BLOCK_BYTES = 256 * 1024
FOLD_WIDTH = 2048  # narrow rows are folded side by side so the row-sum runs over >= this many
MAX_UINT8_ROWS = 255


States = dict[str, np.ndarray]  # per-column states by field name (see state.FIELDS)


class Counter(Protocol):
    """Counts chunks of one layout. ``update`` numbers the chunk's rows from ``first_vector``
    (their index in the component's stream); ``result`` gives the states (``last_fired`` in
    that numbering, -1 where a column never fired, present only when tracked)."""

    name: str  # the kernel: native, numpy or torch

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None: ...

    def result(self) -> States: ...


def _states(fire_counts: np.ndarray, nan_counts: np.ndarray, last_fired: np.ndarray | None) -> States:
    out = {"fire_counts": fire_counts, "nan_counts": nan_counts}
    if last_fired is not None:
        out["last_fired"] = last_fired
    return out


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


def _check(bits: np.ndarray, width: int, unsigned: type) -> None:
    if bits.ndim != 2 or bits.shape[1] != width or bits.dtype != unsigned:
        raise ValueError(f"expected [rows, {width}] {np.dtype(unsigned)}, got {list(bits.shape)} {bits.dtype}")


class NumpyCounter:
    """Counts on the CPU with numpy, on cache-sized blocks, without converting any value."""

    name = "numpy"

    def __init__(self, rule: FireRule, width: int, track_last: bool = False) -> None:
        self.rule = rule
        self.width = width
        itemsize = np.dtype(rule.unsigned).itemsize
        self.fold = max(1, math.ceil(FOLD_WIDTH / max(width, 1)))
        folded_bytes = self.fold * width * itemsize
        self.block_rows = self.fold * max(1, min(MAX_UINT8_ROWS, BLOCK_BYTES // max(folded_bytes, 1)))
        self._tmp = np.empty((self.block_rows, width), rule.unsigned)
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
        _check(bits, self.width, self.rule.unsigned)
        rows = bits.shape[0]
        step = self.block_rows
        full = rows - rows % step
        for start in range(0, full, step):
            self._count_block(bits[start : start + step], self.fold, first_vector + start)
        for start in range(full, rows, MAX_UINT8_ROWS):
            self._count_block(bits[start : start + MAX_UINT8_ROWS], 1, first_vector + start)

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
        return _states(fire_counts, self._nan_counts.copy(), last)


KERNEL_SOURCE = Path(__file__).with_name("_kernels.c")


def _sha256(data: bytes) -> str:
    """SHA-256 from CPython's own module where there is one: hashlib loads OpenSSL, which costs
    about as much start-up as the rest of nact's modules."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found]  # Python 3.12 and later
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found, no-redef]  # Python 3.11 and earlier
        except ImportError:
            from hashlib import sha256  # type: ignore[no-redef]
    return sha256(data).hexdigest()


def _load_native() -> tuple[object | None, str | None]:
    """The C kernel, or None and why it cannot be used.

    The extension carries the SHA-256 of the ``_kernels.c`` it was built from; where that
    source is present (a checkout, or the installed package) and differs, the build is stale
    and is not used.
    """
    try:
        from . import _kernels
    except ImportError:
        return None, "not built (no C compiler when nact was installed)"
    try:
        source = _sha256(KERNEL_SOURCE.read_bytes())
    except OSError:
        return _kernels, None  # no source to compare with
    if getattr(_kernels, "SOURCE_SHA256", None) != source:
        return None, (
            f"stale: built from another version of {KERNEL_SOURCE} "
            "(rebuild it: pip install ., or python setup.py build_ext --inplace)"
        )
    return _kernels, None


_kernels, NATIVE_PROBLEM = _load_native()


class NativeCounter:
    """Counts on the CPU with the C kernel: one pass over the data, no temporaries, GIL released."""

    name = "native"

    def __init__(self, rule: FireRule, width: int, track_last: bool = False) -> None:
        if _kernels is None:
            raise BadOption("kernel", "native", f"is not available: the C kernel is {NATIVE_PROBLEM}")
        self.width = width
        self.itemsize = np.dtype(rule.unsigned).itemsize
        self.unsigned = rule.unsigned
        self.ranges = list(rule.fire_ranges)
        has_nan = rule.nan_above is not None
        self.nan_mask = rule.magnitude_mask if has_nan else 0
        self.nan_above = rule.nan_above if has_nan else 0
        self._fire_counts = np.zeros(width, np.int64)
        self._nan_counts = np.zeros(width, np.int64)
        self._last = np.full(width, -1, np.int64) if track_last else None

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None:
        _check(bits, self.width, self.unsigned)
        bits = np.ascontiguousarray(bits)
        _kernels.count(  # type: ignore[union-attr]
            bits, bits.shape[0], self.width, self.itemsize, self.ranges, self.nan_mask, self.nan_above,
            self._fire_counts, self._nan_counts, self._last, first_vector,
        )

    def result(self) -> States:
        last = None if self._last is None else self._last.copy()
        return _states(self._fire_counts.copy(), self._nan_counts.copy(), last)




class _CudaStager:
    """Moves chunks to one CUDA device through two reused pinned host buffers.

    While the GPU counts chunk i from one buffer, the host fills the other with chunk i+1 and a
    side stream copies it over (``non_blocking``), so reading, copying and counting overlap.
    One stager per counting thread; it is shared by every counter of that thread.
    """

    def __init__(self, torch: object, device: object) -> None:
        self.torch = torch
        self.device = device
        self.copy_stream = torch.cuda.Stream(device=device)  # type: ignore[attr-defined]
        self.slots: list[dict] = [{}, {}]
        self.turn = 0

    def to_device(self, host_bits: np.ndarray) -> tuple[object, dict]:
        """A device tensor holding ``host_bits`` (int8/16/32/64), and its slot to release."""
        torch = self.torch
        slot = self.slots[self.turn]
        self.turn ^= 1
        nbytes = host_bits.nbytes
        if slot.get("capacity", 0) < nbytes:
            torch.cuda.synchronize(self.device)  # nothing may still use the buffers being replaced
            slot.update(
                capacity=nbytes,
                host=torch.empty(nbytes, dtype=torch.uint8, pin_memory=True),
                dev=torch.empty(nbytes, dtype=torch.uint8, device=self.device),
                copied=torch.cuda.Event(),
                consumed=torch.cuda.Event(),
            )
        slot["copied"].synchronize()  # the host buffer's previous copy is done: it may be refilled
        np.copyto(slot["host"].numpy()[:nbytes].view(host_bits.dtype), host_bits.reshape(-1))
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(slot["consumed"])  # the device buffer's last chunk is counted
            slot["dev"][:nbytes].copy_(slot["host"][:nbytes], non_blocking=True)
            slot["copied"].record(self.copy_stream)
        torch.cuda.current_stream(self.device).wait_event(slot["copied"])
        dtype = getattr(torch, TORCH_SIGNED[host_bits.itemsize])
        return slot["dev"][:nbytes].view(dtype).view(host_bits.shape), slot

    def release(self, slot: dict) -> None:
        slot["consumed"].record(self.torch.cuda.current_stream(self.device))


_stagers = threading.local()


def fire_mask(bits: object, signed_ranges: tuple[tuple[int, int], ...]) -> object:
    """Where a torch tensor of raw bits (as signed integers) fires, on its own device; None when
    nothing can fire. ``signed_ranges``: ``FireRule.signed_fire_ranges()``."""
    fires = None
    for a, b in signed_ranges:
        inside = (bits >= a) & (bits <= b)  # type: ignore[operator]
        fires = inside if fires is None else fires | inside
    return fires


def nan_mask(bits: object, rule: FireRule) -> object:
    """Where a torch tensor of raw bits holds NaN (None for integer dtypes, which have none)."""
    if rule.nan_above is None:
        return None
    return (bits & rule.magnitude_mask) > rule.nan_above  # type: ignore[operator]


class TorchCounter:
    """Counts with torch on a device (cuda, mps, or cpu for testing); totals stay on the device
    and come back in one transfer at the end."""

    name = "torch"

    def __init__(self, rule: FireRule, width: int, device: str, track_last: bool = False) -> None:
        import torch

        self.torch = torch
        self.rule = rule
        self.width = width
        self.device = torch.device(device)
        itemsize = np.dtype(rule.unsigned).itemsize
        self._np_signed = np.dtype(f"i{itemsize}")
        self._fire_counts = torch.zeros(width, dtype=torch.int64, device=self.device)
        self._nan_counts = torch.zeros(width, dtype=torch.int64, device=self.device)
        self._ranges = rule.signed_fire_ranges()
        self._last = torch.full((width,), -1, dtype=torch.int64, device=self.device) if track_last else None
        self._stager = None
        if self.device.type == "cuda":
            stagers = getattr(_stagers, "by_device", None)
            if stagers is None:
                stagers = _stagers.by_device = {}
            if self.device not in stagers:
                stagers[self.device] = _CudaStager(torch, self.device)
            self._stager = stagers[self.device]

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None:
        _check(bits, self.width, self.rule.unsigned)
        signed = bits.view(self._np_signed)
        if self._stager is not None:
            x, slot = self._stager.to_device(signed)
            self._count(x, first_vector)
            self._stager.release(slot)
        elif self.device.type == "mps":
            try:
                self._count(self.torch.from_numpy(signed.copy()).to(self.device), first_vector)
            except (RuntimeError, TypeError) as e:  # int64 sums need a recent macOS
                raise DeviceUnavailable(
                    f"device 'mps' cannot count {self.rule.dtype} tensors on this macOS ({e}); count on the cpu instead"
                ) from None
        else:  # a copy: the chunk may be a read-only mapping that is closed after this call
            self._count(self.torch.from_numpy(signed.copy()).to(self.device), first_vector)

    def _count(self, x: object, first_vector: int) -> None:
        torch = self.torch
        fires = fire_mask(x, self._ranges)
        if fires is not None:
            self._fire_counts += fires.sum(dim=0, dtype=torch.int64)
            if self._last is not None and fires.shape[0]:
                rows = fires.shape[0]
                last_in_chunk = first_vector + rows - 1 - fires.flip(0).to(torch.uint8).argmax(dim=0)
                candidate = torch.where(fires.any(dim=0), last_in_chunk, -1)
                torch.maximum(self._last, candidate, out=self._last)
        nans = nan_mask(x, self.rule)
        if nans is not None:
            self._nan_counts += nans.sum(dim=0, dtype=torch.int64)

    def result(self) -> States:
        last = None if self._last is None else self._last.cpu().numpy()
        return _states(self._fire_counts.cpu().numpy(), self._nan_counts.cpu().numpy(), last)


CPU_KERNELS = ("native", "numpy") if _kernels is not None else ("numpy",)


def kernel_for(device: str, kernel: str | None = None) -> str:
    """The kernel that counts on ``device``: on the CPU ``kernel`` (native, numpy or torch;
    default: the first of ``CPU_KERNELS``); torch on every other device."""
    if device != "cpu":
        return "torch"
    return kernel or CPU_KERNELS[0]


def make_counter(
    rule: FireRule, width: int, device: str, kernel: str | None = None, track_last: bool = False
) -> Counter:
    """A counter for ``device`` with the kernel ``kernel_for(device, kernel)``."""
    chosen = kernel_for(device, kernel)
    if chosen == "torch":
        return TorchCounter(rule, width, device, track_last)
    if chosen == "native":
        return NativeCounter(rule, width, track_last)
    return NumpyCounter(rule, width, track_last)


def describe_kernels() -> str:
    """One line on the CPU kernels: which counts by default, and why the C one does not."""
    if _kernels is not None:
        return f"cpu kernel: native (C extension, source sha256 {_kernels.SOURCE_SHA256[:12]})"  # type: ignore[attr-defined]
    return f"cpu kernel: numpy (the C kernel is {NATIVE_PROBLEM})"


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
    from .options import check_device_name

    requested = check_device_name(requested)
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
    if not _torch_installed():
        raise DeviceUnavailable(f"device {requested!r} needs PyTorch, which is not installed (pip install torch)")
    import torch

    kind, _, index = requested.partition(":")
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


def describe_devices() -> str:
    """One line on the devices nact could count on, found without importing torch."""
    gpu = "an NVIDIA driver is present" if _nvidia_present() else "no NVIDIA driver found"
    torch = "PyTorch is installed" if _torch_installed() else "PyTorch is not installed (pip install torch)"
    return f"devices: cpu; cuda: {gpu}, {torch}"
