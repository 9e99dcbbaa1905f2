"""Errors raised by the library: bad input or bad usage, each with the data a caller needs.

``str(error)`` is a message fit to show as it is; it names options by their library names
(``fire_above``), never by a command-line flag: the CLI words those itself (see ``option``).
"""

from __future__ import annotations

from pathlib import Path


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none): how a third-party
    library's error is quoted in one-line messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class NactError(Exception):
    """Base class: bad input or bad usage, with a message fit to show a user as it is."""


class BadInput(NactError):
    """A file that cannot be read as activations: unreadable, truncated, corrupt, unsupported."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class NotCountsFile(BadInput):
    """A file given as saved counts that nact did not save counts in."""


class BadOutput(BadInput):
    """An output path that cannot be written, or that would overwrite an input."""


class ShapeMismatch(NactError):
    """Two shards (or saved counts) disagree on the shape of one component."""


class AxisProblem(BadInput):
    """A tensor whose axes do not say what its components are; names the component."""

    def __init__(
        self, component: str, shape: tuple[int, ...], problem: str, path: object = "", options: tuple[str, ...] = ()
    ) -> None:
        self.component, self.shape, self.options = component, shape, options  # options that would settle it
        NactError.__init__(self)
        self.path, self.problem = str(path), f"tensor {component!r} of shape {list(shape)}: {problem}"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class NoVectors(NactError):
    """Nothing was counted: no shards, no tensors, or tensors with no rows."""


class DeviceUnavailable(NactError):
    """The requested device is not present or not usable."""


class BadOption(NactError):
    """An option value that is not allowed. ``option`` is its library name (``fire_above``)."""

    def __init__(self, option: str, value: str | int, problem: str) -> None:
        self.option, self.value, self.problem = option, value, problem  # exact values as decimals.decimal_text
        super().__init__(self.worded(option.replace("_", " ")))

    def worded(self, name: str) -> str:
        shown = self.value if isinstance(self.value, int) else repr(self.value)
        return f"{name} {shown} {self.problem}"


class BadThreshold(BadOption):
    """A threshold or activation bound that is not a number in the allowed range."""


class Conflict(NactError):
    """Options that cannot be used together (library names), and why."""

    def __init__(self, options: tuple[str, ...], reason: str) -> None:
        self.options, self.reason = options, reason
        super().__init__(self.worded([o.replace("_", " ") for o in options]))

    def worded(self, names: list[str]) -> str:
        return f"{' and '.join(names)} cannot be used together: {self.reason}"


class NeedsOption(NactError):
    """An option that means something only with another one."""

    def __init__(self, option: str, needed: str) -> None:
        self.option, self.needed = option, needed
        super().__init__(self.worded(option.replace("_", " "), needed.replace("_", " ")))

    def worded(self, option: str, needed: str) -> str:
        return f"{option} goes with {needed}"


class KeyNotFound(NactError):
    """Keys asked for that no shard has."""

    def __init__(self, missing: list[str], seen: list[str]) -> None:
        self.missing, self.seen = missing, seen
        super().__init__(self.worded("key"))

    def worded(self, name: str) -> str:
        return (
            f"{name} {', '.join(map(repr, self.missing))} not found in any shard "
            f"(keys seen: {', '.join(self.seen) or 'none'})"
        )


class MixedFormats(NactError):
    """The inputs hold shards of several formats; one must be picked."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        listed = ", ".join(f"{n} {fmt}" for fmt, n in counts.items())
        super().__init__(f"the inputs mix shard formats ({listed} files)")


class StateLocked(NactError):
    """Another audit holds the lock of a state file."""

    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path, self.lock_path = path, lock_path
        super().__init__(f"{path}: another nact audit is using it (lock {lock_path} is held)")


class ShardChanged(NactError):
    """A shard that a state counted has changed since; ``what`` says how."""

    def __init__(self, path: object, state: Path, what: str) -> None:
        self.path, self.state, self.what = path, state, what
        super().__init__(f"{path}: changed since {state} counted it ({what})")


class StateMismatch(NactError):
    """A state file counted with other settings than this audit's (values as exact decimals)."""

    def __init__(self, state: Path, option: str, before: str, now: str) -> None:
        self.state, self.option, self.before, self.now = state, option, before, now
        super().__init__(f"{state}: counted with {option.replace('_', ' ')} {before}, not {now}")


class CountsMismatch(NactError):
    """Saved counts that cannot be combined or compared as they are (components, fire_above)."""


class NotTracked(NactError):
    """A component whose counts did not record when each neuron last fired."""

    def __init__(self, component: str) -> None:
        self.component = component
        super().__init__(f"component {component!r} has no record of when neurons last fired")


class SaeNotBound(BadInput):
    """An SAE whose hook is not a component of the cache (or that names none): the SAE must be
    bound to a component by name. ``hook`` is None when the checkpoint names no hook."""

    def __init__(self, path: object, hook: str | None, components: list[str]) -> None:
        self.hook, self.components = hook, components
        listed = ", ".join(components[:8]) + (", ..." if len(components) > 8 else "")
        problem = (
            f"its hook {hook!r} is not a component of the cache (components: {listed})"
            if hook is not None
            else f"the checkpoint names no hook: name the component it encodes (components: {listed})"
        )
        super().__init__(path, problem)
