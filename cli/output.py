"""Consoles, errors at the CLI edge, and atomic writes of results."""

from __future__ import annotations

import contextlib
import sys
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


def emit(text: str, output: Path | None) -> None:
    """The result goes to ``output`` (atomically) or to stdout, and nothing else goes to stdout."""
    if output is not None:
        from neuron_activity.files import write_text_atomic

        with library_errors():
            write_text_atomic(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
