"""Consoles, errors at the CLI edge, and atomic writes of results."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import typer


def say(line: str) -> None:
    """One line on stderr: warnings, errors, breaches. stdout carries only the result."""
    print(line, file=sys.stderr, flush=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``Error: message`` on stderr; return the Exit to raise."""
    say(f"Error: {message}")
    return typer.Exit(code)


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Turn the library's errors into one line on stderr and exit code 2."""
    from neuron_activity import NactError

    try:
        yield
    except NactError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise fail(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise fail(f"{path}: cannot write: {e.strerror or e}") from None
        raise


def emit(text: str, output: Path | None) -> None:
    """The result goes to ``output`` (atomically) or to stdout, and nothing else goes to stdout."""
    if output is not None:
        write_atomic(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
