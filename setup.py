"""The optional C kernel; without a compiler nact installs anyway and counts with numpy."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "neuron_activity._kernels",
            ["neuron_activity/_kernels.c"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        )
    ]
)
