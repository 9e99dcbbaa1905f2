"""The ``nact`` console script: signals first, then the app, so that even a Ctrl-C while the
app is still being imported ends in one line and exit code 130."""

import io
import signal
import sys


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: temporary files are removed on the way out


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")  # file names that are not UTF-8
    try:
        from .main import app  # in the try: a Ctrl-C while the app loads ends in one line too
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)
    app()
