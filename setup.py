"""The optional C kernel; without a compiler nact installs anyway and counts with numpy.

The extension is built with the SHA-256 of its source: the tests check that a build is current,
and ``nact --version`` names it. ``NACT_KERNEL_CFLAGS`` adds compiler and linker flags (CI builds once with sanitizers).
"""

import hashlib
import os
import shlex
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "neuron_activity/_kernels.c"
digest = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()
extra = shlex.split(os.environ.get("NACT_KERNEL_CFLAGS", ""))

setup(
    ext_modules=[
        Extension(
            "neuron_activity._kernels",
            [SOURCE],
            define_macros=[("KERNEL_SOURCE_SHA256", f'"{digest}"')],
            extra_compile_args=["-O3", "-std=c11", *extra],
            extra_link_args=extra,
            optional=True,
        )
    ]
)
