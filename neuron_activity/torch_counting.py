"""Counting with torch on a device (cuda, mps; cpu for testing): the fire rule on raw bits as
tensors, and a counter whose totals stay on the device until they are read once.

torch is imported by the functions that use it, not at the top (it takes seconds to import): this
module is imported by every scan, and by the SAE package on CPU scans, which never pay for it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from .counters import States, check_rows, states
from .dtypes import FLOAT_FORMATS, TORCH_SIGNED, FireRule
from .errors import DeviceUnavailable
from .stats import Moments

if TYPE_CHECKING:
    import torch


def fire_mask(bits: torch.Tensor, signed_ranges: tuple[tuple[int, int], ...]) -> torch.Tensor | None:
    """Where a torch tensor of raw bits (as signed integers) fires, on its own device; None when
    nothing can fire. ``signed_ranges``: ``FireRule.signed_fire_ranges()``."""
    fires = None
    for a, b in signed_ranges:
        inside = (bits >= a) & (bits <= b)
        fires = inside if fires is None else fires | inside
    return fires


def nan_mask(bits: torch.Tensor, rule: FireRule) -> torch.Tensor | None:
    """Where a torch tensor of raw bits holds NaN (None for integer dtypes, which have none)."""
    if rule.nan_above is None:
        return None
    return (bits & rule.magnitude_mask) > rule.nan_above


COMPARED = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # torch compares these


@functools.lru_cache(maxsize=256)
def compared_bound(rule: FireRule) -> float | None:
    """For a float format torch compares natively, the value ``v`` of the format with
    ``x > v`` exactly where the rule fires: the largest value ``<= fire_above``, read off the
    rule's ranges. ``v`` is one of the format's own values, so the comparison is exact however
    the device compares (in the format or in float32). None: the rule has no such bound (fp8,
    integers, nothing fires), and its bit ranges are tested instead."""
    if rule.dtype not in COMPARED or not rule.fire_ranges:
        return None
    f = FLOAT_FORMATS[rule.dtype]
    if rule.fire_above >= 0:  # ((r + 1, max_bits),): v = value(r)
        return float(f.value(rule.fire_ranges[0][0] - 1))
    # ((0, max_bits), (sign, sign + s - 1)): negatives fire above -value(s)
    return -float(f.value(rule.fire_ranges[1][1] - f.sign_bit + 1))


def masks(bits: torch.Tensor, rule: FireRule) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Where rows of raw bits (signed integers of the rule's width, on any device) fire and
    where they hold NaN (None: nothing can). A fixed few kernels, nothing read back: for F64,
    F32, F16 and BF16 one comparison of the values and one NaN test, which read the data once
    each; for the other types, the bit ranges."""
    import torch  # seconds to import: only counting on a device needs it (see the docstring)

    bound = compared_bound(rule)
    if bound is None:
        return fire_mask(bits, rule.signed_fire_ranges()), nan_mask(bits, rule)
    values = bits.view(getattr(torch, COMPARED[rule.dtype]))
    return torch.gt(values, bound), torch.isnan(values)


def add_counts(bits: torch.Tensor, rule: FireRule, fire_counts: torch.Tensor, nan_counts: torch.Tensor) -> None:
    """Add the fire and NaN counts of ``bits`` (``[rows, ...]`` raw bits as signed integers),
    summed over the rows, into int64 tensors of shape ``bits.shape[1:]`` on the same device: at
    most six kernels (test, sum and add for fires and for NaNs), no host sync."""
    import torch  # seconds to import: only counting on a device needs it (see the docstring)

    fires, nans = masks(bits, rule)
    if fires is not None:
        fire_counts += fires.sum(dim=0, dtype=torch.int64)
    if nans is not None:
        nan_counts += nans.sum(dim=0, dtype=torch.int64)


class CudaStager:
    """Moves chunks to one CUDA device through two reused pinned host buffers.

    While the GPU counts chunk i from one buffer, the host fills the other with chunk i+1 and a
    side stream copies it over (``non_blocking``), so reading, copying and counting overlap.
    One stager per counting thread and device (``for_device``); every counter of that thread
    shares it.
    """

    _per_thread = threading.local()

    @classmethod
    def for_device(cls, device: torch.device) -> CudaStager:
        stagers: dict[torch.device, CudaStager] = cls._per_thread.__dict__.setdefault("by_device", {})
        if device not in stagers:
            stagers[device] = cls(device)
        return stagers[device]

    def __init__(self, device: torch.device) -> None:
        import torch  # seconds to import: only counting on a device needs it (see the docstring)

        self.device = device
        self.copy_stream = torch.cuda.Stream(device=device)
        self.slots: list[dict[str, Any]] = [{}, {}]
        self.turn = 0

    @contextmanager
    def on_device(self, host_bits: np.ndarray) -> Iterator[torch.Tensor]:
        """A device tensor holding ``host_bits`` (int8/16/32/64), valid inside the block."""
        import torch  # seconds to import: only counting on a device needs it (see the docstring)

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
        try:
            yield slot["dev"][:nbytes].view(dtype).view(host_bits.shape)
        finally:
            slot["consumed"].record(torch.cuda.current_stream(self.device))


FLOAT_VIEWS = {**COMPARED, "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}  # floats torch reads as such


class TorchMoments:
    """``stats.Moments`` with torch on a device: float64 tensors, two passes over each chunk,
    merged with Chan's formula, nothing read back until ``states``."""

    def __init__(self, width: int, device: torch.device) -> None:
        import torch  # seconds to import: only counting on a device needs it (see the docstring)

        self.counts = torch.zeros(width, dtype=torch.int64, device=device)
        self.means = torch.zeros(width, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(width, dtype=torch.float64, device=device)

    def add(self, values: torch.Tensor) -> None:
        """Merge in the values of rows ``[rows, width]`` (any float dtype, on the device)."""
        import torch  # seconds to import: only counting on a device needs it (see the docstring)

        v = values.double()
        nan = torch.isnan(v)
        n_b = (~nan).sum(dim=0)
        mean_b = torch.where(nan, 0.0, v).sum(dim=0) / n_b.clamp(min=1)
        deviations = torch.where(nan, 0.0, v - mean_b)
        m2_b = (deviations * deviations).sum(dim=0)
        a, b = self.counts.double(), n_b.double()
        share = torch.where(a + b > 0, b / (a + b).clamp(min=1), 0.0)
        delta = mean_b - self.means
        merged_mean = self.means + delta * share
        merged_m2 = self.m2 + m2_b + delta * delta * (a * share)
        self.means = torch.where(a == 0, mean_b, torch.where(b == 0, self.means, merged_mean))
        self.m2 = torch.where(a == 0, m2_b, torch.where(b == 0, self.m2, merged_m2))
        self.counts += n_b

    def states(self) -> dict[str, np.ndarray]:
        return {
            "value_counts": self.counts.cpu().numpy(),
            "value_means": self.means.cpu().numpy(),
            "value_m2": self.m2.cpu().numpy(),
        }


class TorchCounter:
    """Counts with torch on a device; totals stay on the device and come back in one transfer
    at the end. Follows ``counters.Counter``; ``on_device`` and ``count_bits`` let an encoder
    count what it computed on the device without a trip to the host. With ``stats`` the moments
    of float values are kept on the device too (on mps, which has no float64, and for integers,
    on the host with numpy)."""

    name = "torch"

    def __init__(self, rule: FireRule, width: int, device: str, track_last: bool = False, stats: bool = False) -> None:
        import torch  # seconds to import: only counting on a device needs it (see the docstring)

        self.rule = rule
        self.width = width
        self.device = torch.device(device)
        self._fire_counts = torch.zeros(width, dtype=torch.int64, device=self.device)
        self._nan_counts = torch.zeros(width, dtype=torch.int64, device=self.device)
        self._last = torch.full((width,), -1, dtype=torch.int64, device=self.device) if track_last else None
        self._stager = CudaStager.for_device(self.device) if self.device.type == "cuda" else None
        on_device = stats and rule.dtype in FLOAT_VIEWS and self.device.type != "mps"
        self._moments = TorchMoments(width, self.device) if on_device else None
        self._host_moments = Moments(width) if stats and not on_device else None

    @contextmanager
    def on_device(self, bits: np.ndarray) -> Iterator[torch.Tensor]:
        """Rows of raw bits (any integer view) as a signed-integer tensor on the device, valid
        inside the block (on cuda, through the thread's pinned double buffer)."""
        import torch  # seconds to import: only counting on a device needs it (see the docstring)

        signed = bits.view(np.dtype(f"i{bits.itemsize}"))
        if self._stager is not None:
            with self._stager.on_device(signed) as x:
                yield x
        else:  # a copy: the chunk may be a read-only mapping that is closed after this call
            yield torch.from_numpy(signed.copy()).to(self.device)

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None:
        import torch  # seconds to import: only counting on a device needs it (see the docstring)

        check_rows(bits, self.width, self.rule.unsigned)
        try:
            with self.on_device(bits) as x:
                self.count_bits(x, first_vector)
                if self._moments is not None:
                    self._moments.add(x.view(getattr(torch, FLOAT_VIEWS[self.rule.dtype])))
            if self._host_moments is not None:
                self._host_moments.add(bits, self.rule.dtype)
        except (RuntimeError, TypeError) as e:
            if self.device.type != "mps":
                raise
            raise DeviceUnavailable(  # int64 sums need a recent macOS
                f"device 'mps' cannot count {self.rule.dtype} tensors on this macOS ({e}); count on the cpu instead"
            ) from None

    def count_bits(self, x: torch.Tensor, first_vector: int = 0) -> torch.Tensor | None:
        """Add the counts of rows of raw bits that are already on the device (signed integers of
        the rule's width), numbered from ``first_vector`` in the stream; where they fire (None:
        nothing can), for a caller that sums what fired."""
        import torch  # seconds to import: only counting on a device needs it (see the docstring)

        fires, nans = masks(x, self.rule)
        if fires is not None:
            self._fire_counts += fires.sum(dim=0, dtype=torch.int64)
            if self._last is not None and fires.shape[0]:
                rows = fires.shape[0]
                last_in_chunk = first_vector + rows - 1 - fires.flip(0).to(torch.uint8).argmax(dim=0)
                candidate = torch.where(fires.any(dim=0), last_in_chunk, -1)
                torch.maximum(self._last, candidate, out=self._last)
        if nans is not None:
            self._nan_counts += nans.sum(dim=0, dtype=torch.int64)
        return fires

    def result(self) -> States:
        last = None if self._last is None else self._last.cpu().numpy()
        out = states(self._fire_counts.cpu().numpy(), self._nan_counts.cpu().numpy(), last, self._host_moments)
        if self._moments is not None:
            out.update(self._moments.states())
        return out
