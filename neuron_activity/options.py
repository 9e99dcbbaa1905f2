"""What a scan is asked to do, as typed, frozen values checked when they are made.

``CountOptions`` say what to count and how, ``ReportOptions`` what to report, ``ScanRequest``
which inputs, which mode (plain, a part of N, an incremental state, torchrun) and which files to
write. Making one checks every range and every combination, so a request that exists can run;
the files it names are checked by the pipeline before anything is read or written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

from . import native
from .activity import DEFAULT_THRESHOLDS, Threshold
from .decimals import as_fraction, as_portion, decimal_text, parse_decimal
from .devices import check_device_name
from .errors import BadOption, Conflict, NeedsOption
from .sources.base import ShardPath, to_path
from .sources.grouping import GROUPINGS, Grouping
from .sources.registry import INPUT_FORMATS, InputFormat

MAX_THREADS = 256
MAX_PARTS = 1_000_000
MAX_BINS_PER_DECADE = 100
MAX_FIRE_ABOVE = Fraction(10) ** 308
Kernel = Literal["native", "numpy", "torch"]
KERNELS: tuple[Kernel, ...] = get_args(Kernel)
KERNEL_VARIABLE = "NACT_KERNEL"  # picks the CPU kernel, for tests and benchmarks
SaeDtype = Literal["float32", "bfloat16", "float16"]  # the precisions of an SAE's matrix product
SAE_DTYPES: tuple[SaeDtype, ...] = get_args(SaeDtype)

Choice = TypeVar("Choice", bound=str)


def choice(option: str, value: str, choices: tuple[Choice, ...], what: str) -> Choice:
    """``value`` if it is one of ``choices`` (the values of a Literal type), else BadOption that
    names them: how an enumerated option given as text is checked."""
    for c in choices:
        if value == c:
            return c
    raise BadOption(option, value, f"is not {what}: use {', '.join(choices)}")


def _at_least_one(option: str, value: int | None, most: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadOption(option, value, "must be at least 1")
    if most is not None and value > most:
        raise BadOption(option, value, f"must be at most {most}")


def _density(option: str, value: Fraction) -> None:
    if not 0 < value <= 1:
        raise BadOption(option, decimal_text(value), "is not a density between 0 and 1")


HUB = "hf://"  # an SAE on the Hugging Face Hub


@dataclass(frozen=True)
class SaeRequest:
    """An ``--sae [COMPONENT=]PATH[#NAME]`` as given: the SAE's folder (or file, or an
    ``hf://ORG/REPO/PATH`` on the Hugging Face Hub, kept as text), the component it encodes
    (None: the SAE's own hook) and the name its latents go by (None: the shortest end of its
    path that tells it apart from the other SAEs). A path that exists as given wins over both
    readings, so folders such as ``lr=1e-3`` need no quoting."""

    path: Path | str
    key: str | None = None
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> SaeRequest:
        if Path(text).exists():
            return cls(Path(text))
        rest, hash_sign, name = text.rpartition("#")
        if not hash_sign:
            rest, name = text, ""
        elif not name or "/" in name or ":" in name:
            raise BadOption("sae", text, "names no SAE after '#': use PATH#NAME, a name without '/' or ':'")
        key, equals, path = rest.rpartition("=")
        if equals and Path(rest).exists():
            key, path = "", rest
        elif equals and not key:
            raise BadOption("sae", text, "names no component before '=': use COMPONENT=PATH or PATH")
        if not path:
            raise BadOption("sae", text, "names no SAE folder")
        return cls(path if path.startswith(HUB) else Path(path), key or None, name or None)


@dataclass(frozen=True)
class CountOptions:
    """What to count and how. ``kernel`` None: ``$NACT_KERNEL``, else the fastest built one."""

    keys: tuple[str, ...] = ()
    flatten: bool = False
    fire_above: Fraction = Fraction(0)
    device: str = "auto"
    input_format: InputFormat | None = None
    chunk_rows: int | None = None
    threads: int | None = None
    kernel: Kernel | None = None
    track_last: bool = False
    component_axis: int | None = None
    group_by: Grouping = "auto"
    num_latents: int | None = None  # delphi: the width of caches saved whole
    num_vectors: int | None = None  # delphi: the vectors of splits saved without tokens
    partial_latents: bool = False  # delphi: count the splits there are, each run apart
    saes: tuple[SaeRequest, ...] = ()  # SAEs whose latents are counted, each bound to a component
    sae_dtype: SaeDtype = "float32"  # the precision of the SAEs' matrix products (bf16/fp16 on a GPU)
    skip_positions: tuple[int, ...] = ()  # positions of each sequence left out (0: the BOS token)
    io_threads: int | None = None  # remote objects: range requests in flight (None: remote.IO_THREADS)
    stats: bool = False  # also the moments of stored activations, and how close SAE latents came to firing

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys or ()))
        object.__setattr__(self, "group_by", choice("group_by", self.group_by, GROUPINGS, "a grouping"))
        if self.flatten and self.component_axis is not None:
            raise Conflict(("flatten", "component_axis"), "flatten makes every axis before the features a batch axis")
        saes = tuple(SaeRequest.parse(r) if isinstance(r, str) else r for r in self.saes or ())
        object.__setattr__(self, "saes", saes)
        object.__setattr__(self, "sae_dtype", choice("sae_dtype", self.sae_dtype, SAE_DTYPES, "a dtype"))
        if self.sae_dtype != "float32" and not saes:
            raise NeedsOption("sae_dtype", "sae")
        skip = tuple(self.skip_positions or ())
        for p in skip:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < 1 << 31:
                raise BadOption("skip_positions", p, "is not a position (0, 1, 2, ...)")
        object.__setattr__(self, "skip_positions", tuple(sorted(set(skip))))
        _at_least_one("num_latents", self.num_latents, 1 << 31)
        _at_least_one("num_vectors", self.num_vectors, 1 << 62)
        object.__setattr__(self, "fire_above", as_fraction(self.fire_above, "fire_above"))
        if abs(self.fire_above) > MAX_FIRE_ABOVE:
            raise BadOption(
                "fire_above", decimal_text(self.fire_above), "is out of range: beyond every float format (|x| <= 1e308)"
            )
        object.__setattr__(self, "device", check_device_name(self.device))
        _at_least_one("chunk_rows", self.chunk_rows)
        _at_least_one("threads", self.threads, MAX_THREADS)
        _at_least_one("io_threads", self.io_threads, MAX_THREADS)
        kernel = self.kernel or os.environ.get(KERNEL_VARIABLE) or None
        if kernel is not None:
            named = "kernel" if self.kernel else KERNEL_VARIABLE  # the option, or the variable it came from
            kernel = choice(named, kernel, KERNELS, "a kernel")
            if kernel == "native" and native.kernels is None:
                raise BadOption(named, kernel, f"is not available: the C kernel is {native.NATIVE_PROBLEM}")
        object.__setattr__(self, "kernel", kernel)
        if self.input_format is not None:
            fmt = choice("input_format", self.input_format, INPUT_FORMATS, "a format")
            object.__setattr__(self, "input_format", fmt)

    @classmethod
    def parse(cls, *, fire_above: str = "0", sae_dtype: str = "float32", **rest: Any) -> CountOptions:
        """Options from text as typed (the other settings as ``CountOptions`` takes them)."""
        return cls(
            fire_above=parse_decimal(fire_above, "fire_above"),
            sae_dtype=cast(SaeDtype, sae_dtype),  # checked when made, as every setting is
            **rest,
        )


@dataclass(frozen=True)
class ReportOptions:
    """What a report shows. Repeated thresholds are shown once, in the order first given."""

    thresholds: tuple[Threshold, ...] = tuple(Threshold.parse(t) for t in DEFAULT_THRESHOLDS)
    window: int | None = None
    dense_above: Fraction = Fraction(1, 100)
    ultralow_below: Fraction = Fraction(1, 10_000)
    neurons: bool = False
    top: int | None = None
    fail_above: Fraction | None = None
    stats: bool = False  # each component's activation statistics (where its counts kept them)

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(Threshold.of(t) for t in self.thresholds))
        unique = {t.value: t for t in reversed(self.thresholds)}
        object.__setattr__(self, "thresholds", tuple(t for t in self.thresholds if unique[t.value] is t))
        if not self.thresholds:
            raise BadOption("threshold", "", "is needed: give at least one")
        _at_least_one("window", self.window)
        _at_least_one("top", self.top)
        for name in ("dense_above", "ultralow_below"):
            value = as_fraction(getattr(self, name), name)
            _density(name, value)
            object.__setattr__(self, name, value)
        if self.fail_above is not None:
            given = self.fail_above  # a portion as as_portion takes it: 0.05, "0.05", "5%"
            limit = as_portion(given, "fail_above")
            if not 0 <= limit <= 1:
                shown = given.strip() if isinstance(given, str) else decimal_text(limit)
                raise BadOption("fail_above", shown, "is not a portion between 0 and 1")
            object.__setattr__(self, "fail_above", limit)

    @classmethod
    def parse(
        cls,
        thresholds: list[str] | None = None,
        *,
        dense_above: str = "0.01",
        ultralow_below: str = "1e-4",
        fail_above: str | None = None,
        **rest: Any,
    ) -> ReportOptions:
        """Options from text as typed (``thresholds`` None: the defaults)."""
        return cls(
            thresholds=tuple(Threshold.parse(t) for t in (thresholds or DEFAULT_THRESHOLDS)),
            dense_above=parse_decimal(dense_above, "dense_above"),
            ultralow_below=parse_decimal(ultralow_below, "ultralow_below"),
            fail_above=fail_above,  # type: ignore[arg-type]  # text as typed: __post_init__ reads it as a portion
            **rest,
        )


def check_bins_per_decade(bins: int) -> int:
    _at_least_one("bins_per_decade", bins, MAX_BINS_PER_DECADE)
    return bins


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``of`` (from 0) of the sorted units: a contiguous run of them."""

    index: int
    of: int

    def __post_init__(self) -> None:
        if not 1 <= self.of <= MAX_PARTS:
            raise BadOption("shard", f"{self.index}/{self.of}", f"needs N from 1 to {MAX_PARTS}")
        if not 0 <= self.index < self.of:
            raise BadOption("shard", f"{self.index}/{self.of}", "needs I from 0 to N-1")

    @classmethod
    def parse(cls, text: str) -> Part:
        """``I/N``, as given to ``--shard``."""
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise BadOption("shard", text, "is not I/N (for example 0/4)") from None
        return cls(i, n)

    def bounds(self, units: int) -> tuple[int, int]:
        """The slice ``[start, stop)`` of ``units`` sorted units that this part counts."""
        return self.index * units // self.of, (self.index + 1) * units // self.of

    def of_units(self, units: list[ShardPath]) -> list[ShardPath]:
        start, stop = self.bounds(len(units))
        return units[start:stop]

    def __str__(self) -> str:
        return f"{self.index}/{self.of}"


@dataclass(frozen=True)
class ScanRequest:
    """One scan: inputs, options, mode and outputs, checked together when made.

    Modes: plain; ``part`` (count part I of N, for a scheduler's array of jobs); ``state`` (an
    incremental audit); ``distributed`` (one rank of torchrun: every rank counts its share of
    the shards, or of ``part``'s shards). ``output`` is where the caller writes the rendered
    report: the pipeline only checks it, with the other outputs, before any work.
    """

    paths: tuple[ShardPath, ...]
    count: CountOptions = field(default_factory=CountOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    part: Part | None = None
    state: Path | None = None
    rescan: bool = False
    fail_on_missing: bool = False  # an audit whose counted shards are gone is a breach (exit 1)
    save_counts: Path | None = None
    output: Path | None = None
    distributed: bool = False
    save_sparsity: Path | None = None  # the one component's log10 densities, as SAELens saves them

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(to_path(p) for p in self.paths))
        if self.count.stats and not self.report.stats:  # what is counted for a report is shown in it
            object.__setattr__(self, "report", replace(self.report, stats=True))
        if not self.paths:
            raise BadOption("paths", "", "are needed: give at least one file or folder")
        if self.state is not None and self.save_counts is not None:
            raise Conflict(("state", "save_counts"), "an audit saves its counts in its state")
        if self.state is not None and self.part is not None:
            raise Conflict(("state", "shard"), "an audit counts every new shard; save parts with save_counts instead")
        if self.rescan and self.state is None:
            raise NeedsOption("rescan", "state")
        if self.fail_on_missing and self.state is None:
            raise NeedsOption("fail_on_missing", "state")
        if self.distributed and self.state is not None:
            raise Conflict(
                ("torchrun", "state"),
                "run the audit in one process, or save the ranks' counts with save_counts and merge them",
            )
        if self.save_sparsity is not None:
            for other, why in (("state", "an audit"), ("part", "a part of a split scan"), ("distributed", "torchrun")):
                if getattr(self, other):
                    raise Conflict(
                        (
                            "save_sparsity",
                            "shard" if other == "part" else "torchrun" if other == "distributed" else other,
                        ),
                        f"{why} does not save sparsity: save counts, then nact report them with save_sparsity",
                    )
        named = [
            (n, os.path.abspath(getattr(self, n)))
            for n in ("output", "save_counts", "state", "save_sparsity")
            if getattr(self, n) is not None
        ]
        same = [n for n, p in named if sum(q == p for _, q in named) > 1]
        if same:
            raise Conflict(tuple(same), "they name the same file")

    @classmethod
    def parse(cls, paths: Sequence[str], *, shard: str | None = None, **rest: Any) -> ScanRequest:
        """A request from text as typed: ``paths`` (URLs are objects of a store), ``shard`` as
        ``I/N`` (the ``part``); the other settings as ``ScanRequest`` takes them."""
        return cls(paths=tuple(map(to_path, paths)), part=None if shard is None else Part.parse(shard), **rest)
