"""Which counter counts: the C kernel or numpy on the CPU, torch on every other device."""

from __future__ import annotations

from .counters import Counter
from .counters import States as States
from .cpu_counting import NativeCounter, NumpyCounter
from .cpu_counting import in_ranges as in_ranges
from .devices import describe_devices as describe_devices
from .devices import resolve_device as resolve_device
from .dtypes import FireRule
from .native import CPU_KERNELS
from .native import NATIVE_PROBLEM as NATIVE_PROBLEM
from .native import describe_kernels as describe_kernels
from .torch_counting import TorchCounter
from .torch_counting import fire_mask as fire_mask
from .torch_counting import nan_mask as nan_mask  # the "x as x" imports: names moved elsewhere, still importable here


def kernel_for(device: str, kernel: str | None = None) -> str:
    """The kernel that counts on ``device``: on the CPU ``kernel`` (native, numpy or torch;
    default: the first of ``CPU_KERNELS``); torch on every other device."""
    if device != "cpu":
        return "torch"
    return kernel or CPU_KERNELS[0]


def make_counter(
    rule: FireRule,
    width: int,
    device: str,
    kernel: str | None = None,
    track_last: bool = False,
    stats: bool = False,
) -> Counter:
    """A counter for ``device`` with the kernel ``kernel_for(device, kernel)``; ``stats``: it
    also keeps the moments of the values (``state.MOMENTS``)."""
    chosen = kernel_for(device, kernel)
    if chosen == "torch":
        return TorchCounter(rule, width, device, track_last, stats)
    if chosen == "native":
        return NativeCounter(rule, width, track_last, stats)
    return NumpyCounter(rule, width, track_last, stats)
