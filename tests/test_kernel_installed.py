"""Which copy of nact the tests run against, and that its C kernel is the one built for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_c_kernel_is_loaded_and_current() -> None:
    from neuron_activity import native

    assert native.kernels is not None, f"the C kernel is {native.NATIVE_PROBLEM}"
    assert native.CPU_KERNELS[0] == "native"


@pytest.mark.skipif(
    not os.environ.get("NACT_TEST_INSTALLED"), reason="set where the tests must run on an installed wheel"
)
def test_the_tests_run_on_the_installed_package() -> None:
    import nact_cli
    import neuron_activity

    for module, source in ((neuron_activity, "neuron_activity"), (nact_cli, "cli")):
        assert Path(module.__file__).resolve().parent != ROOT / source, module.__file__
        assert "site-packages" in Path(module.__file__).parts, module.__file__
