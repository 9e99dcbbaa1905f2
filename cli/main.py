"""The ``nact`` Typer app. Commands import the library lazily so ``nact --help`` stays fast."""

from __future__ import annotations

import typer

from . import counts as counts_commands
from . import density as density_command
from . import inspect as inspect_command
from . import scan as scan_command

app = typer.Typer(
    name="nact",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"nact {version('nact')}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Which of my neurons are dead? Exact per-neuron fire counts over saved activations.

    Exit codes: 0 ok, 1 a --fail-above limit was breached, 2 bad usage or bad input.
    """


app.command("scan")(scan_command.scan)
app.command("inspect")(inspect_command.inspect)
app.command("report")(counts_commands.report)
app.command("merge")(counts_commands.merge)
app.command("diff")(counts_commands.diff)
app.command("density")(density_command.density)


def main() -> None:
    app()
