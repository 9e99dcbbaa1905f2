"""The command line's options, each declared once (flags, metavar, help, help panel) and used by
every command that takes it; an option whose help differs between commands is made by one
function (``thresholds``, ``output``, ...) with each command's help. ``Inputs`` gathers the
options that say what the inputs hold, which ``scan``, ``inspect`` and ``density`` share;
``Reporting`` those that say what a report shows, which ``scan`` and ``report`` share."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast, get_type_hints

import typer

# Help panels of `nact scan --help`, in the order shown.
INPUT = "Input"
COUNT = "What to count"
SAE_PANEL = "SAE latents"
OUTPUT = "Output"
AUDIT = "Audits and cron"
REMOTE = "Remote caches"
PERFORMANCE = "Performance"

FORMATS = ("table", "json", "csv", "markdown")


def paths_argument(help: str) -> Any:
    """The ``PATH...`` argument of a command that reads activations, with that command's help."""
    return typer.Argument(metavar="PATH...", show_default=False, help=help)


def counts_files_argument(help: str) -> Any:
    """The ``FILE...`` argument of a command that reads saved counts, with that command's help."""
    return typer.Argument(metavar="FILE...", help=help, show_default=False)


def threshold_option(help: str, show_default: bool | str = True, panel: str | None = COUNT) -> Any:
    """The ``--threshold/-t P`` option, with a command's help, default shown and help panel."""
    return typer.Option("--threshold", "-t", metavar="P", help=help, show_default=show_default, rich_help_panel=panel)


def neurons_option(help: str, panel: str | None = OUTPUT) -> Any:
    """The ``--neurons`` switch, with a command's help and help panel."""
    return typer.Option("--neurons", help=help, rich_help_panel=panel)


def output_option(help: str, metavar: str = "FILE", panel: str | None = OUTPUT) -> Any:
    """The ``--output/-o`` option, with a command's help, metavar and help panel."""
    return typer.Option("--output", "-o", metavar=metavar, help=help, rich_help_panel=panel)


def format_option(help: str, show_default: bool | str = True) -> Any:
    """The ``--format/-f FORMAT`` option, with a command's help and default shown."""
    return typer.Option(
        "--format", "-f", metavar="FORMAT", help=help, show_default=show_default, rich_help_panel=OUTPUT
    )


Paths = Annotated[
    list[str], paths_argument("Shard files or directories (searched recursively), or URLs (s3://, https://).")
]
CountsFiles = Annotated[list[Path], counts_files_argument("Saved counts (nact scan --save-counts).")]
Thresholds = Annotated[
    list[str] | None,
    threshold_option("Dead threshold, a portion of vectors: 1e-6, 0.001% (repeatable).", show_default="0, 1e-5, 1e-6"),
]
FireAbove = Annotated[
    str,
    typer.Option(
        "--fire-above", metavar="X", help="A neuron fires when its activation is above X.", rich_help_panel=COUNT
    ),
]
Window = Annotated[
    int | None,
    typer.Option(
        "--window",
        metavar="N",
        help="Also report neurons that did not fire in the last N vectors.",
        rich_help_panel=COUNT,
    ),
]
DenseAbove = Annotated[
    str,
    typer.Option("--dense-above", metavar="D", help="Count neurons denser than this as dense.", rich_help_panel=COUNT),
]
UltralowBelow = Annotated[
    str,
    typer.Option(
        "--ultralow-below",
        metavar="D",
        help="Alive neurons sparser than this form the ultralow band.",
        rich_help_panel=COUNT,
    ),
]
Neurons = Annotated[
    bool, neurons_option("List the dead neurons per threshold (with their fire counts in JSON and CSV).")
]
Stats = Annotated[
    bool,
    typer.Option(
        "--stats",
        help="Also per component: mean L0; for stored activations the mean and standard deviation of every "
        "dimension (gamma, outlier dimensions); for SAE latents how far each stayed from firing (docs/stats.md).",
        rich_help_panel=COUNT,
    ),
]
Top = Annotated[
    int | None,
    typer.Option(
        "--top", metavar="K", help="List the K most and K least active neurons per component.", rich_help_panel=OUTPUT
    ),
]
Format = Annotated[
    str | None,
    format_option(
        f"One of {', '.join(FORMATS)}.",
        show_default="from the -o file's extension (.json, .csv, .md; .txt: table), else table; an extension that says otherwise is refused",
    ),
]
TableOrJson = Annotated[str, format_option("table or json.")]
Output = Annotated[Path | None, output_option("Write the result to FILE (atomically) instead of stdout.")]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Print nothing but the breaches of --fail-above or --fail-on-missing (no warnings).",
        rich_help_panel=OUTPUT,
    ),
]
SaveCounts = Annotated[
    Path | None,
    typer.Option(
        "--save-counts",
        metavar="FILE",
        help="Also save the exact counts (safetensors) for report/merge/diff.",
        rich_help_panel=OUTPUT,
    ),
]
SaveSparsity = Annotated[
    Path | None,
    typer.Option(
        "--save-sparsity",
        metavar="FILE",
        rich_help_panel=OUTPUT,
        help="Also save the one component's log10 feature densities as SAELens' sparsity.safetensors.",
    ),
]
FailAbove = Annotated[
    str | None,
    typer.Option(
        "--fail-above",
        metavar="P",
        help="Exit 1 when any dead_fraction shown is above P: 0.05 or 5%.",
        rich_help_panel=AUDIT,
    ),
]
State = Annotated[
    Path | None,
    typer.Option(
        "--state",
        metavar="FILE",
        help="Incremental audit: count only shards FILE has not counted, add, save.",
        rich_help_panel=AUDIT,
    ),
]
Rescan = Annotated[
    bool, typer.Option("--rescan", help="With --state: count every shard again, from scratch.", rich_help_panel=AUDIT)
]
FailOnMissing = Annotated[
    bool,
    typer.Option(
        "--fail-on-missing",
        help="With --state: exit 1 when shards it counted before are gone (their counts stay).",
        rich_help_panel=AUDIT,
    ),
]
Shard = Annotated[
    str | None,
    typer.Option(
        "--shard", metavar="I/N", help="Count only part I of N of the sorted shards (from 0).", rich_help_panel=AUDIT
    ),
]
Union = Annotated[bool, typer.Option("--union", help="Merge counts even when their components differ.")]
Device = Annotated[
    str,
    typer.Option(
        "--device", "-d", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=PERFORMANCE
    ),
]
ChunkRows = Annotated[
    int | None,
    typer.Option(
        "--chunk-rows",
        metavar="N",
        help="Rows read at a time.",
        show_default="32 MiB worth",
        rich_help_panel=PERFORMANCE,
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        metavar="N",
        help="Counting threads.",
        show_default="CPU cores, at most 8",
        rich_help_panel=PERFORMANCE,
    ),
]
IoThreads = Annotated[
    int | None,
    typer.Option(
        "--io-threads",
        metavar="N",
        help="Range requests in flight (each counted as it arrives).",
        show_default="8",
        rich_help_panel=REMOTE,
    ),
]
SaeDtype = Annotated[
    str,
    typer.Option(
        "--sae-dtype",
        metavar="DTYPE",
        help="Precision of the SAE's matrix product: float32, or bfloat16/float16 on a GPU.",
        rich_help_panel=SAE_PANEL,
    ),
]


@dataclass(frozen=True)
class Inputs:
    """What the inputs hold and how to read them: the options ``scan``, ``inspect`` and
    ``density`` share (each field is one option, declared here once)."""

    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            "-k",
            metavar="KEY",
            rich_help_panel=INPUT,
            help="Only tensors whose key or component matches KEY, a name or glob (repeatable).",
        ),
    ] = None
    flatten: Annotated[
        bool, typer.Option("--flatten", help="Treat every axis before the last as a batch axis.", rich_help_panel=INPUT)
    ] = False
    component_axis: Annotated[
        int | None,
        typer.Option(
            "--component-axis",
            metavar="A",
            rich_help_panel=INPUT,
            help="Take axis A (0, or the one before the features) as the component axis.",
        ),
    ] = None
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by",
            metavar="RULE",
            rich_help_panel=INPUT,
            help="Which files make one component: auto, key (across files and folders), file, or folder.",
        ),
    ] = "auto"
    input_format: Annotated[
        str | None,
        typer.Option(
            "--input-format",
            metavar="FORMAT",
            show_default="detected",
            rich_help_panel=INPUT,
            help="Read the shards as safetensors, npy, npz, torch, arrow or delphi.",
        ),
    ] = None
    num_latents: Annotated[
        int | None,
        typer.Option(
            "--num-latents",
            metavar="N",
            rich_help_panel=INPUT,
            help="delphi: the width of caches saved whole (LatentCache.save).",
        ),
    ] = None
    num_vectors: Annotated[
        int | None,
        typer.Option(
            "--num-vectors",
            metavar="N",
            rich_help_panel=INPUT,
            help="delphi: the vectors of caches saved without tokens; density: the vectors a SAELens sparsity file was "
            "measured on.",
        ),
    ] = None
    partial_latents: Annotated[
        bool,
        typer.Option(
            "--partial-latents",
            rich_help_panel=INPUT,
            help="delphi: count the splits that are there, each run of latents apart, naming the rest.",
        ),
    ] = False
    skip_positions: Annotated[
        str | None,
        typer.Option(
            "--skip-positions",
            metavar="P[,P...]",
            rich_help_panel=COUNT,
            help="Leave out these positions of every sequence (0: the BOS token) where the layout has positions "
            "(batch x position x d tensors, Arrow caches of sequences, delphi caches).",
        ),
    ] = None
    sae: Annotated[
        list[str] | None,
        typer.Option(
            "--sae",
            metavar="[COMPONENT=]PATH[#NAME]",
            rich_help_panel=SAE_PANEL,
            help="Count the latents of the SAE checkpoint PATH (a folder or file of SAELens, sparsify, "
            "dictionary_learning, Gemma Scope, Llama Scope, OpenAI; hf://ORG/REPO/PATH on the Hub) encoding its hook's "
            "component, or COMPONENT; its latents are named NAME, else by the end of PATH (repeatable).",
        ),
    ] = None

    def settings(self) -> dict[str, Any]:
        """These options as ``CountOptions`` settings (a bad value is left to CountOptions to refuse)."""
        return {
            "keys": tuple(self.key or ()),
            "flatten": self.flatten,
            "component_axis": self.component_axis,
            "group_by": self.group_by,
            "input_format": self.input_format,
            "num_latents": self.num_latents,
            "num_vectors": self.num_vectors,
            "partial_latents": self.partial_latents,
            "saes": tuple(self.sae or ()),
            "skip_positions": _positions(self.skip_positions),
        }


def _positions(text: str | None) -> tuple[object, ...]:
    """``--skip-positions 0,1`` as numbers; a part that is not one stays text, for CountOptions
    to refuse by name."""
    if not text:
        return ()
    return tuple(int(p.strip()) if p.strip().isdigit() else p.strip() for p in text.split(","))


@dataclass(frozen=True)
class Reporting:
    """What a report of counts shows: the options ``scan`` and ``report`` share (each field is
    one option, declared here once)."""

    threshold: Thresholds = None
    window: Window = None
    dense_above: DenseAbove = "0.01"
    ultralow_below: UltralowBelow = "1e-4"
    neurons: Neurons = False
    top: Top = None
    fail_above: FailAbove = None
    stats: Stats = False

    def settings(self) -> dict[str, Any]:
        """These options as the arguments of ``ReportOptions.parse`` (which refuses a bad value)."""
        return {
            "thresholds": self.threshold,
            "window": self.window,
            "dense_above": self.dense_above,
            "ultralow_below": self.ultralow_below,
            "neurons": self.neurons,
            "top": self.top,
            "fail_above": self.fail_above,
            "stats": self.stats,
        }


Command = TypeVar("Command", bound=Callable[..., Any])


def sharing(group: type[Any]) -> Callable[[Command], Command]:
    """A decorator that gives a command the options of the dataclass ``group`` (each field one
    option) in place of its one parameter of that type, and passes them to it as one ``group``
    value. Typer reads a command's parameters from its signature, so the wrapper's signature
    lists the fields of ``group`` where that parameter stood (after the arguments)."""
    shared = fields(group)
    names = [f.name for f in shared]
    hints = get_type_hints(group, include_extras=True)  # the Annotated options, resolved from text
    options = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=f.default if f.default_factory is MISSING else f.default_factory(),
            annotation=hints[f.name],
        )
        for f in shared
    ]

    def share(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True).parameters
        slots = [p.name for p in own.values() if p.annotation is group]
        assert len(slots) == 1, f"{command.__name__}: needs one parameter of type {group.__name__}"
        slot = slots[0]
        twice = sorted(set(own) & set(names))
        assert not twice, f"{command.__name__}: parameter(s) {', '.join(twice)} are options of {group.__name__} already"
        arguments = [p for p in own.values() if p.name != slot and p.default is inspect.Parameter.empty]
        rest: list[inspect.Parameter] = []
        for p in own.values():
            if p.name == slot:
                rest += options
            elif p not in arguments:
                rest.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs[slot] = group(**{name: kwargs.pop(name) for name in names})
            return command(*args, **kwargs)

        signature = inspect.Signature([*arguments, *rest])
        wrapper: Any = functools.wraps(command)(call)
        wrapper.__signature__ = signature
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return cast(Command, wrapper)

    return share


with_inputs = sharing(Inputs)
with_reporting = sharing(Reporting)
