"""Memory a count needs, checked before it is allocated: a width (of a layer, an SAE, a delphi
cache) or a tensor too large for this machine is one line that says how much memory it would
need, not a fixed bound on widths and not a process killed halfway."""

from __future__ import annotations

import os

from .errors import BadInput

# The most a neuron keeps: fire_counts, nan_counts and last_fired (int64), and for SAE latents
# act_sums and act_max (float64). See state.FIELDS. Stats keep two more at most (a layer's three
# moments; an SAE latent's pre_max and margins), which this bound leaves out.
STATE_BYTES_PER_NEURON = 5 * 8


def available() -> int:
    """Bytes of memory this machine can still give (Linux's MemAvailable; else its physical
    memory; else no bound)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def size_text(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit that keeps it at least 1 (``3.5 GiB``)."""
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def check_fits(path: object, what: str, nbytes: int) -> None:
    """BadInput naming ``path`` when ``what`` would need more memory than is available."""
    have = available()
    if nbytes > have:
        raise BadInput(
            path,
            f"{what} needs {size_text(nbytes)} of memory, more than this machine has available ({size_text(have)})",
        )


def check_width(path: object, what: str, width: int) -> None:
    """The per-neuron states of ``width`` neurons fit in memory."""
    check_fits(path, f"counting {what} ({width:,} neurons)", width * STATE_BYTES_PER_NEURON)
