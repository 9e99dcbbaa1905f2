"""The ``nact`` console script: signals first, then the app, so that a Ctrl-C or SIGTERM at any
moment ends in one line and exit code 130. Kept as small as it can be: until the app runs, an
interruption just says so and exits (there is nothing to clean up yet); while it runs, a signal
unwinds like Ctrl-C, which removes temporary files on the way out."""

import os
import signal
import sys


def _leave(signum: int, frame: object) -> None:
    """Before the app runs (or after it ended): one line, exit 130, nothing else to do."""
    os.write(2, b"Error: interrupted\n")
    os._exit(130)


signal.signal(signal.SIGINT, _leave)  # as soon as this module is read: a Ctrl-C never shows a traceback
signal.signal(signal.SIGTERM, _leave)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: temporary files are removed on the way out


def main() -> None:
    import io  # loaded by Python's start-up already

    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")  # file names that are not UTF-8
    from .main import app

    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _terminate)
        app()  # it says every ending itself, a Ctrl-C included, and exits
    except KeyboardInterrupt:  # one that came before the app's own guard
        _leave(signal.SIGINT, None)
    except SystemExit as e:
        _end(e)
        raise
    finally:
        signal.signal(signal.SIGINT, _leave)
        signal.signal(signal.SIGTERM, _leave)


def _end(exiting: SystemExit) -> None:
    """Never shut the interpreter down under a counting thread that did not stop in time (it may
    be inside a BLAS product, whose exit handler would hang or crash): leave at once instead."""
    engine = sys.modules.get("neuron_activity.engine")
    if engine is None or not engine.counting_threads_alive():
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    code = exiting.code
    os._exit(code if isinstance(code, int) else 1)
