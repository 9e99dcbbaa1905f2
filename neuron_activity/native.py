"""The C kernel (``_kernels``), when it was built: nact installs without a compiler and then
counts with numpy. Whether a build is current is checked where it is built and by the tests
(``SOURCE_SHA256`` is the hash of the ``_kernels.c`` it was built from), not at every run."""

from __future__ import annotations

from types import ModuleType


def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from . import _kernels  # a C extension, built when a compiler is there
    except ImportError:
        return None, "not built (no C compiler when nact was installed)"
    return _kernels, None


kernels, NATIVE_PROBLEM = _load()
CPU_KERNELS = ("native", "numpy") if kernels is not None else ("numpy",)


def describe_kernels() -> str:
    """One line on the CPU kernels: which counts by default, and why the C one does not."""
    if kernels is not None:
        return f"cpu kernel: native (C extension, source sha256 {kernels.SOURCE_SHA256[:12]})"
    return f"cpu kernel: numpy (the C kernel is {NATIVE_PROBLEM})"
