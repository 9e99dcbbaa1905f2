"""Library errors as the command line says them: options named by the flags of the command
that runs (taken from Click), with the flag that fixes the problem where there is one.

Imported once a command runs (it imports the library; ``nact --help`` does not)."""

from __future__ import annotations

from typing import Any

from neuron_activity import errors
from neuron_activity.counts_file import ComponentsDiffer
from neuron_activity.pipeline import EmptyPart


def flags(command: Any) -> dict[str, str]:
    """The parameters of a Click ``command``, by their Python names (which are the library's
    option names), as its command line spells them: an option by its long flag, an argument by
    its metavar."""
    out = {}
    for param in command.params:
        if param.name is None:
            continue
        if param.param_type_name == "option":
            out[param.name] = max(param.opts, key=len)
        else:
            out[param.name] = param.human_readable_name.rstrip(".")
    return out


def word(error: BaseException, command: Any) -> str:
    """``error`` in one line, its options named as ``command`` (the Click command that ran) names them."""
    named = flags(command)

    def flag(option: str, elsewhere: str | None = None) -> str:
        """How the command spells ``option``; else ``elsewhere`` (another command's flag), else its name."""
        return named.get(option, elsewhere or option)

    if isinstance(error, errors.BadOption):
        return error.worded(flag(error.option))
    if isinstance(error, errors.Conflict):
        return error.worded([flag(o) for o in error.options])
    if isinstance(error, errors.NeedsOption):
        return error.worded(flag(error.option), flag(error.needed))
    if isinstance(error, errors.AxisProblem) and error.options:
        return f"{error} ({' or '.join(flag(o) for o in error.options)})"
    if isinstance(error, errors.KeyNotFound):
        return error.worded(flag("key"))
    if isinstance(error, errors.SaeNotBound):
        return f"{error}: bind it with {flag('sae')} COMPONENT=PATH"
    if isinstance(error, errors.MixedFormats):
        return f"{error}: pick one with {flag('input_format')}"
    if isinstance(error, errors.ShardChanged):
        return f"{error}: use {flag('rescan')} to count every shard again"
    if isinstance(error, errors.StateMismatch):
        return f"{error}: use the same {flag(error.option)}, or {flag('rescan')} to start over"
    if isinstance(error, errors.NotTracked):
        saved = f"{flag('save_counts', '--save-counts')} or {flag('state', '--state')}"
        return f"{error}: {flag('window', '--window')} needs counts saved with {saved}"
    if isinstance(error, ComponentsDiffer):
        return f"{error}: pass {flag('union', '--union')} to merge them anyway"
    if isinstance(error, errors.NotCountsFile):
        return f"{error} (saved with nact scan --save-counts)"
    if isinstance(error, EmptyPart):
        return f"{flag('shard')} {error}: pass {flag('save_counts')} to save an empty part that merges with the others"
    return str(error)
