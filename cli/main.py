"""The ``nact`` Typer app. Commands import the library lazily so ``nact --help`` stays fast.

Every failure is turned into one line and an exit code here, in ``NactGroup.main``: the one
edge between the commands and the shell (see ``output`` for the codes). A library error that a
command raises reaches it worded with that command's own flags (``NactCommand``).
"""

from __future__ import annotations

import errno
import gc
import sys
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from importlib import import_module
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

try:
    from typer import _click as click  # typer vendors click from 0.2x on
except ImportError:  # older typer uses click itself
    import click  # type: ignore[no-redef]  # the same module, under its own name

from .output import (
    EXIT_BREACH,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    StdoutGone,
    internal_error,
    one_line,
    quiet_stdout,
    say,
)

EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool ended by SIGPIPE
# what Click (8.2 on) raises for a bare `nact COMMAND`; older Click prints the help and exits 0 itself
NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _plain_metavar(make_metavar: Callable[..., str]) -> Callable[..., str]:
    """Typer writes a required argument as ``{PATH...}`` in usage lines: write ``PATH...``."""

    def metavar(self: Any, *args: Any, **kwargs: Any) -> str:
        var = make_metavar(self, *args, **kwargs)
        return var[1:-1] if var.startswith("{") and var.endswith("}") else var

    return metavar


TyperArgument.make_metavar = _plain_metavar(TyperArgument.make_metavar)  # type: ignore[method-assign]  # Typer has no option for it


# Each command: its name, then the module of this package and the function that run it, in the
# order `nact --help` lists them.
COMMANDS = {
    "scan": ("scan", "scan"),
    "inspect": ("inspect", "inspect"),
    "report": ("counts", "report"),
    "merge": ("counts", "merge"),
    "diff": ("counts", "diff"),
    "density": ("density", "density"),
}


class NactCommand(TyperCommand):
    """A command of nact: once its arguments are parsed (``--help`` has exited by then) it loads
    the library, runs, and words a library error (bad input or usage) with the command's own
    flags, for ``NactGroup.main`` to say in one line with exit code 2.

    Whatever the command writes is put in place only once it has ended well (or with a breach
    of a limit, exit 1), after its result reached stdout: a run that fails, even to print,
    writes nothing (``files.staged``).

    The first command of a process loads the library with the cyclic collector off (numpy and
    the library make hundreds of thousands of objects that live until exit), then freezes them
    out of its passes and turns it back on for the work: 8-13 ms of a 250 ms run
    (``bench/scan_bench.py --startup-only``). A later command of the same process (CliRunner, a
    notebook) finds the library loaded and leaves the collector alone: freezing again would keep
    whatever the process holds then for good.
    """

    def invoke(self, ctx: Any) -> Any:
        if "neuron_activity" not in sys.modules and gc.isenabled():
            gc.disable()
            try:
                import_module("neuron_activity")
            finally:
                gc.freeze()
                gc.enable()
        from neuron_activity.errors import NactError  # the library: loaded just above
        from neuron_activity.files import staged

        from .wording import word  # it imports the library: loaded here, after --help has exited

        try:
            with staged() as outputs:  # files are put in place after the result reached stdout
                try:
                    return super().invoke(ctx)
                except typer.Exit as e:
                    if e.exit_code in (EXIT_OK, EXIT_BREACH):  # an outcome: what it wrote stands
                        outputs.commit()
                    raise
        except NactError as e:
            raise click.ClickException(word(e, self)) from None


class LazyCommands(MutableMapping[str, Any]):
    """The group's commands, each imported and made into a Click command the first time it is
    asked for: a run pays for the command it runs, not for all six (about 30 ms of start-up)."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._made:
            module, function = COMMANDS[name]  # KeyError: no such command, as a dict says it
            one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            one.command(name, cls=NactCommand)(getattr(import_module(f"{__package__}.{module}"), function))
            self._made[name] = typer.main.get_command(one)
        return self._made[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._made[name] = command

    def __delitem__(self, name: str) -> None:
        del self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*COMMANDS, *self._made]))

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._made))


class NactGroup(TyperGroup):
    """Runs a command and turns whatever ends it into one line on stderr and an exit code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands()

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        code = run_guarded(
            lambda: super(NactGroup, self).main(
                args,
                prog_name or "nact",
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        )
        if standalone_mode:
            sys.exit(code)
        return code


def run_guarded(call: Any) -> int:
    """Call ``call`` (a Click main in non-standalone mode) and map its outcome to an exit code."""
    try:
        result = call()
        code = result if isinstance(result, int) else EXIT_OK
        if code == EXIT_INTERRUPTED:
            say("Error: interrupted")
        return code
    except typer.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        if isinstance(e, NO_ARGS_IS_HELP):  # bare `nact COMMAND`: its help, as Click shows it
            e.show()
            return EXIT_USAGE
        hint = ""
        if isinstance(e, click.exceptions.UsageError) and e.ctx is not None:
            hint = f" (see {e.ctx.command_path} --help)"
        say(f"Error: {one_line(e.format_message())}{hint}")
        return EXIT_USAGE
    except (KeyboardInterrupt, typer.Abort):
        say("Error: interrupted")
        return EXIT_INTERRUPTED
    except StdoutGone:
        quiet_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as e:
        if e.errno == errno.EPIPE:
            quiet_stdout()
            return EXIT_BROKEN_PIPE
        if e.errno == errno.ENOSPC or getattr(e, "filename", None) is None:
            say(f"Error: {getattr(e, 'filename', None) or 'stdout'}: cannot write: {e.strerror or e}")
            return EXIT_USAGE
        say(f"Error: {e.filename}: {e.strerror or e}")
        return EXIT_USAGE
    except Exception as e:
        # A library error raised outside a command's run (a parameter's callback) is bad input or
        # usage. Its module is looked up, not imported: a run that never loaded the library raised
        # none, and `nact --help` need not import numpy.
        errors = sys.modules.get("neuron_activity.errors")
        if errors is not None and isinstance(e, errors.NactError):
            say(f"Error: {one_line(str(e))}")
            return EXIT_USAGE
        return internal_error(e)  # a bug: say so in one line, never exit 1


app = typer.Typer(
    name="nact",
    cls=NactGroup,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        # the library (and numpy, ~100 ms): loaded for --version only, never for --help
        from neuron_activity._version import __version__
        from neuron_activity.devices import describe_devices
        from neuron_activity.native import describe_kernels

        typer.echo(f"nact {__version__}\n{describe_kernels()}\n{describe_devices()}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and kernel."
    ),
) -> None:
    """Which of my neurons are dead? Exact per-neuron fire counts over saved activations.

    Exit codes: 0 ok, 1 a limit was breached (--fail-above, --fail-on-missing, diff --fail-on-new-dead), 2 bad usage or bad input, 3 an internal error, 130 interrupted.
    """
