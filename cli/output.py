"""The CLI's edge: one line on stderr for every failure, the exit codes, and writing results.

Exit codes: 0 ok; 1 a --fail-above, --fail-on-missing or --fail-on-new-dead limit was breached (nothing else);
2 bad usage or bad input; 3 an internal error (a bug; the traceback with NACT_DEBUG=1);
130 interrupted (SIGINT or SIGTERM). A reader of stdout that goes away ends the run quietly.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import traceback
from pathlib import Path
from typing import TextIO

EXIT_OK, EXIT_BREACH, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEBUG_VARIABLE = "NACT_DEBUG"


# C0 and C1 control characters, DEL, line and paragraph separators, and the bidirectional
# overrides and isolates: what lets a name move the cursor, retitle or recolour a terminal, or
# show its text in another order than it has.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """``text`` as nact shows it on a terminal or in a text file: control characters escaped
    (``\\x1b``, ``\\u202e``), so a file or key name shows what it is and does nothing. Every
    line on stderr and every table, CSV and Markdown cell go through it; JSON escapes them itself."""
    return CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


# a URL's userinfo, and an http(s) URL's query (also as a path folds them: https:/u:p@h)
USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*:/{1,2})[^/@\s]+@")
HTTP_QUERY = re.compile(r"\b(https?:/{1,2}[^\s?#]*)[?#][^\s:]*")


def redacted(line: str) -> str:
    """``line`` with no credentials of a URL in it: as the library's ``remote.urls`` shows URLs
    (it also knows the secrets of the URLs it was given), and a URL's userinfo and an http(s)
    query left out wherever the library has not seen them."""
    urls = sys.modules.get("neuron_activity.remote.urls")  # loaded with the library; --help never loads it
    if urls is not None:
        line = urls.redact(line)
    return HTTP_QUERY.sub(r"\1", USERINFO.sub(r"\1***@", line))


def say(line: str) -> None:
    """One line on stderr: warnings, errors, breaches, with no URL credentials (``redacted``) and
    names escaped (``shown``). stdout carries only the result."""
    print(shown(redacted(line)), file=sys.stderr, flush=True)


def on_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` (sys.stdout or sys.stderr, which may be None when closed) is a terminal."""
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):
        return False


UNBOUNDED_WIDTH = 10_000  # off a terminal, a table is as wide as it needs: never cut or folded


def console_width(tty: bool) -> int:
    """Columns to render for: the terminal's (COLUMNS honoured), or unbounded for a pipe or file."""
    return shutil.get_terminal_size().columns if tty else UNBOUNDED_WIDTH


def use_color(tty: bool) -> bool:
    """Colour on a terminal unless NO_COLOR is set to something (an empty NO_COLOR does not count)."""
    return tty and not os.environ.get("NO_COLOR")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def internal_error(error: BaseException) -> int:
    """A bug: one line, and the traceback only when NACT_DEBUG is set."""
    if os.environ.get(DEBUG_VARIABLE):
        traceback.print_exception(error)
    detail = one_line(f"{type(error).__name__}: {error}")[:300]
    say(f"Error: internal error ({detail}); please report it (set {DEBUG_VARIABLE}=1 for the traceback)")
    return EXIT_INTERNAL


def quiet_stdout() -> None:
    """stdout's reader went away: point stdout at /dev/null so nothing more is attempted."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class StdoutGone(Exception):
    """The reader of stdout went away (a broken pipe): the run ends quietly. Not an OSError, so
    that Click's own handling (exit 1) never sees it."""


def emit(text: str, output: Path | None) -> None:
    """The result goes to ``output`` (atomically) or to stdout, and nothing else goes to stdout."""
    if output is not None:
        # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
        from neuron_activity.files import write_text_atomic

        write_text_atomic(output, text)
        return
    if sys.stdout is None:  # started with stdout closed (>&-)
        # the library (and numpy, ~100 ms) loads once a command runs: --help never pays for it
        from neuron_activity.errors import BadOutput

        raise BadOutput("stdout", "is closed: nowhere to write the result (give -o FILE)")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutGone from None
