"""The command line's options, each declared once (flags, metavar, help, help panel) and used by
every command that takes it; ``Inputs`` gathers the options that say what the inputs hold, which
``scan``, ``inspect`` and ``density`` share."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
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

Paths = Annotated[
    list[str],
    typer.Argument(
        metavar="PATH...",
        show_default=False,
        help="Shard files or directories (searched recursively), or URLs (s3://, https://).",
    ),
]
CountsFiles = Annotated[
    list[Path], typer.Argument(metavar="FILE...", help="Saved counts (nact scan --save-counts).", show_default=False)
]
Thresholds = Annotated[
    list[str] | None,
    typer.Option(
        "--threshold",
        "-t",
        metavar="P",
        help="Dead threshold, a portion of vectors: 1e-6, 0.001% (repeatable).",
        show_default="0, 1e-5, 1e-6",
        rich_help_panel=COUNT,
    ),
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
    bool,
    typer.Option(
        "--neurons", help="List the dead neurons (indices and fire counts) per threshold.", rich_help_panel=OUTPUT
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
    typer.Option(
        "--format",
        "-f",
        metavar="FORMAT",
        help=f"One of {', '.join(FORMATS)}.",
        show_default="from the -o file's extension (.json, .csv, .md), else table",
        rich_help_panel=OUTPUT,
    ),
]
TableOrJson = Annotated[
    str, typer.Option("--format", "-f", metavar="FORMAT", help="table or json.", rich_help_panel=OUTPUT)
]
Output = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Write the result to FILE (atomically) instead of stdout.",
        rich_help_panel=OUTPUT,
    ),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing unless --fail-above is breached.", rich_help_panel=OUTPUT)
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
        metavar="FRACTION",
        help="Exit 1 when any dead_fraction shown is above FRACTION.",
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
            help="Count the latents of the SAE checkpoint PATH (SAELens, sparsify, dictionary_learning) encoding its "
            "hook's component, or COMPONENT; its latents are named NAME, else by the end of PATH (repeatable).",
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


Command = TypeVar("Command", bound=Callable[..., Any])


def with_inputs(command: Command) -> Command:
    """Give ``command`` the options of ``Inputs`` (after its own arguments) and pass them to it as
    one ``inputs: Inputs`` parameter. Typer reads a command's parameters from its signature, so
    the wrapper's signature lists the fields of ``Inputs`` in place of ``inputs``."""
    own = inspect.signature(command, eval_str=True).parameters
    names = [f.name for f in fields(Inputs)]
    hints = get_type_hints(Inputs, include_extras=True)  # the Annotated options, resolved from text
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(Inputs, name), annotation=hints[name])
        for name in names
    ]
    first = [p for p in own.values() if p.name != "inputs" and p.default is inspect.Parameter.empty]
    rest = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.values() if p.name != "inputs" and p not in first
    ]

    def call(*args: Any, **kwargs: Any) -> Any:
        inputs = Inputs(**{name: kwargs.pop(name) for name in names})
        return command(*args, inputs=inputs, **kwargs)

    signature = inspect.Signature([*first, *shared, *rest])
    wrapper: Any = functools.wraps(command)(call)
    wrapper.__signature__ = signature
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return cast(Command, wrapper)
