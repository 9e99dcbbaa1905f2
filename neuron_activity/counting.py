"""Which counter counts: the C kernel or numpy on the CPU, torch on every other device."""

from __future__ import annotations

from .counters import Counter
from .cpu_counting import NativeCounter, NumpyCounter
from .dtypes import FireRule
from .native import CPU_KERNELS
from .torch_counting import TorchCounter


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
