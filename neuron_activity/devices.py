"""Devices: the names nact takes (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked
without importing anything, and resolved once per scan to a device that is present."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Literal, get_args

from .errors import BadOption, DeviceUnavailable

DeviceKind = Literal["auto", "cpu", "cuda", "mps"]
DEVICE_KINDS: tuple[str, ...] = get_args(DeviceKind)


def check_device_name(device: str) -> str:
    """``device`` in its canonical spelling, if it is a name nact knows (nothing is imported)."""
    name = device.strip().lower()
    kind, colon, index = name.partition(":")
    if kind not in DEVICE_KINDS or (colon and (kind != "cuda" or not index.isdigit() or len(index) > 4)):
        raise BadOption("device", device, "is not a device: use auto, cpu, cuda, cuda:N or mps")
    return name


def nvidia_present() -> bool:
    """Whether an NVIDIA driver is installed (looked up in /proc and /dev, not through torch)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def resolve_device(requested: str) -> str:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device that is present, or raise DeviceUnavailable.

    ``auto`` looks for a GPU without importing torch first (torch costs seconds to import), so
    CPU scans never pay for it.
    """
    requested = check_device_name(requested)
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        mac = sys.platform == "darwin" and os.uname().machine == "arm64"
        if not (nvidia_present() or mac) or not torch_installed():
            return "cpu"
        import torch  # seconds to import: only where a GPU may be there

        if torch.cuda.is_available():
            return "cuda"
        if mac and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if not torch_installed():
        raise DeviceUnavailable(
            f"device {requested!r} needs PyTorch, which is not installed (pip install 'nact[torch]')"
        )
    import torch  # seconds to import: only a GPU asked for by name gets here

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
    gpu = "an NVIDIA driver is present" if nvidia_present() else "no NVIDIA driver found"
    torch = "PyTorch is installed" if torch_installed() else "PyTorch is not installed (pip install 'nact[torch]')"
    return f"devices: cpu; cuda: {gpu}, {torch}"
