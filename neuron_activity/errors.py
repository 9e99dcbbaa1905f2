"""Errors raised by the library. The CLI turns each into a one-line message and exit code 2."""

from __future__ import annotations


class NactError(Exception):
    """Base class: bad input or bad usage, with a message fit to show a user as it is."""


class BadInput(NactError):
    """A file that cannot be read as activations: unreadable, truncated, corrupt, unsupported."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ShapeMismatch(NactError):
    """Two shards disagree on the shape of one component."""


class NoVectors(NactError):
    """Nothing was counted: no shards, no tensors, or tensors with no rows."""


class DeviceUnavailable(NactError):
    """The requested device is not present or not usable."""


class BadThreshold(NactError):
    """A threshold or activation bound that is not a number in the allowed range."""
