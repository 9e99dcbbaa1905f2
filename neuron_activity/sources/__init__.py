"""Finding shards, telling their formats apart, and planning what to count.

Planning reads only headers (or schemas), so shape, format and size problems are found before
any counting starts. Format detection lives here, in ``detect``; each format's reader is a
module that follows ``base.DenseReader`` or ``base.SparseReader``, and the registry below is
built from the formats and suffixes the readers declare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ..dtypes import FLOAT_FORMATS, INTEGER_FORMATS, ITEMSIZE
from ..counts_file import is_counts_file
from ..errors import BadInput, KeyNotFound, MixedFormats, NoVectors, ShapeMismatch
from . import arrow_files, delphi_caches, numpy_files, safetensors_files, torch_files
from .base import SPARSE, TensorEntry, TensorSlab, natural_key

DENSE_READERS: tuple[ModuleType, ...] = (safetensors_files, numpy_files, torch_files, arrow_files)
SPARSE_READERS: tuple[ModuleType, ...] = (delphi_caches,)
READERS: dict[str, ModuleType] = {fmt: r for r in (*DENSE_READERS, *SPARSE_READERS) for fmt in r.FORMATS}
INPUT_FORMATS = tuple(READERS)
SUFFIX_FORMATS: dict[str, str] = {
    suffix: fmt for r in (*DENSE_READERS, *SPARSE_READERS) for suffix, fmt in r.SUFFIXES.items()
}


@dataclass(frozen=True)
class ComponentGroup:
    """The components that one key holds, identical in every shard that has the key."""

    key: str
    names: tuple[str, ...]
    num_features: int
    first_path: Path
    first_shape: tuple[int, ...]


@dataclass
class ScanPlan:
    shards: list[Path]
    formats: dict[Path, str] = field(default_factory=dict)
    entries: list[TensorEntry] = field(default_factory=list)
    groups: dict[str, ComponentGroup] = field(default_factory=dict)
    slabs: list[TensorSlab] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def units(self) -> list[Path]:
        """What can be counted apart, in stream order: shard files, or a delphi module's folder."""
        return list(dict.fromkeys(s.path for s in self.slabs))

    def restrict(self, keep: list[Path] | set[Path]) -> None:
        """Count only the slabs of these units; every component keeps its place and shape."""
        keep = set(keep)
        self.slabs = [s for s in self.slabs if s.path in keep]
        self.shards = [p for p in self.shards if p in keep or any(p in s.entry.files for s in self.slabs)]

    def shard_bytes(self) -> dict[Path, int]:
        """Bytes to count per shard (0 for shards with nothing to count)."""
        out = {p: 0 for p in self.shards}
        for s in self.slabs:
            if s.entry.files:
                for path, nbytes in zip(s.entry.files, s.entry.file_bytes):
                    out[path] += nbytes
            else:
                out[s.path] += s.nbytes
        return out


def detect(path: Path) -> str:
    """The format of one file, from its name and, for safetensors, its header."""
    fmt = SUFFIX_FORMATS.get(path.suffix)
    if fmt is None:
        raise BadInput(path, f"unknown file type: nact reads {', '.join(sorted(SUFFIX_FORMATS))} files")
    if fmt == "safetensors":
        try:
            header = safetensors_files.read_header(path)
        except BadInput:
            return fmt  # its reader reports the problem, file by file
        if delphi_caches.is_split(header):
            return "delphi"
    return fmt


def discover(paths: list[Path], input_format: str | None = None) -> dict[Path, str]:
    """Shard files under ``paths`` with their formats, in natural path order.

    Directories are searched recursively for files nact can read. A saved ``datasets`` folder
    gives only the files its ``state.json`` lists. Files of several formats are refused unless
    ``input_format`` picks one (files named on the command line are then read as that format).
    """
    if input_format is not None and input_format not in READERS:
        from ..errors import BadOption

        raise BadOption("input_format", input_format, f"is not a format: use {', '.join(INPUT_FORMATS)}")
    found: dict[Path, str] = {}
    for path in paths:
        if path.is_dir():
            try:
                files = _files_under(path)
            except OSError as e:
                raise BadInput(e.filename or path, f"cannot list: {e.strerror or e}") from None
            formats = {p: detect(p) for p in files}
            if input_format is not None:
                formats = {p: f for p, f in formats.items() if f == input_format}
            if not formats:
                kind = f"{input_format} " if input_format else ""
                raise BadInput(path, f"no {kind}shards found ({', '.join(sorted(SUFFIX_FORMATS))} files)")
            found.update(formats)
        elif path.is_file():
            if path.suffix == ".safetensors" and is_counts_file(path):
                raise BadInput(path, "saved counts, not activations: read it with nact report or nact density")
            found[path] = input_format or detect(path)
        elif path.exists():
            raise BadInput(path, "not a regular file or directory")
        else:
            raise BadInput(path, "no such file or directory")
    kinds = sorted(set(found.values()))
    if len(kinds) > 1:
        raise MixedFormats({k: sum(1 for f in found.values() if f == k) for k in kinds})
    return {p: found[p] for p in sorted(found, key=natural_key)}


def _files_under(folder: Path) -> list[Path]:
    files = []
    listed: dict[Path, set[Path] | None] = {}
    for p in folder.rglob("*"):
        if p.suffix not in SUFFIX_FORMATS or not p.is_file():
            continue
        if p.suffix == ".safetensors" and is_counts_file(p):
            continue  # saved counts (an audit's state, say) kept beside the shards
        if p.suffix == ".arrow":
            if p.parent not in listed:
                data = arrow_files.dataset_files(p.parent)
                listed[p.parent] = None if data is None else set(data)
            if listed[p.parent] is not None and p not in listed[p.parent]:  # type: ignore[operator]
                continue  # a datasets cache file, not a data file
        files.append(p)
    return files


def component_layout(key: str, shape: tuple[int, ...], flatten: bool) -> tuple[tuple[str, ...], int, int]:
    """Component names, number of rows and features of a tensor of ``shape`` under ``key``.

    ``[N, F]`` is one component; ``[..., C, F]`` has a component axis ``C`` (names ``key[i]``)
    and batch axes before it, unless ``flatten`` makes every axis before ``F`` a batch axis.
    """
    features = shape[-1]
    if flatten or len(shape) == 2:
        return (key,), math.prod(shape[:-1]), features
    return tuple(f"{key}[{i}]" for i in range(shape[-2])), math.prod(shape[:-2]), features


def read_entries(formats: dict[Path, str]) -> list[TensorEntry]:
    """Every tensor entry of the shards, shard by shard in their order."""
    by_format: dict[str, list[Path]] = {}
    for path, fmt in formats.items():
        by_format.setdefault(fmt, []).append(path)
    found = [e for fmt, paths in by_format.items() for e in READERS[fmt].entries(paths)]
    order = {p: i for i, p in enumerate(formats)}
    return sorted(found, key=lambda e: order.get(e.files[0] if e.files else e.path, 0))


def plan_scan(
    shards: dict[Path, str], keys: list[str] | None = None, flatten: bool = False
) -> ScanPlan:
    """Read every shard's header and decide what to count; raises on any problem found."""
    plan = ScanPlan(shards=list(shards), formats=dict(shards))
    plan.entries = read_entries(shards)
    named = set(keys or ())
    seen_keys: set[str] = set()
    skipped: dict[str, tuple[str, str, int]] = {}  # key -> (dtype, why, shard count)
    notes: dict[str, str] = {}
    for entry in plan.entries:
        seen_keys.add(entry.key)
        if named and entry.key not in named:
            continue
        why = why_not_counted(entry, explicitly_named=entry.key in named)
        if why is not None:
            if entry.key in named:
                raise BadInput(entry.path, f"tensor {entry.key!r}: {why}")
            dtype, reason, count = skipped.get(entry.key, (entry.dtype, why, 0))
            skipped[entry.key] = (dtype, reason, count + 1)
            continue
        names, num_rows, num_features = component_layout(entry.key, entry.shape, flatten)
        group = plan.groups.get(entry.key)
        if group is None:
            plan.groups[entry.key] = ComponentGroup(entry.key, names, num_features, entry.path, entry.shape)
        elif (group.names, group.num_features) != (names, num_features):
            raise ShapeMismatch(
                f"tensor {entry.key!r} has shape {list(group.first_shape)} in {group.first_path} "
                f"but {list(entry.shape)} in {entry.path}: every shard must give a component the same "
                "number of features (and components)"
            )
        if entry.storage == SPARSE:
            notes[entry.key] = entry.note or ""
        plan.slabs.append(TensorSlab(entry, num_rows, len(names) * num_features))
    missing = sorted(named - seen_keys)
    if missing:
        raise KeyNotFound(missing, sorted(seen_keys))
    for key, (dtype, why, count) in skipped.items():
        plan.warnings.append(f"skipped tensor {key!r} ({dtype}) in {count} shard(s): {why}")
    for key, note in notes.items():
        plan.warnings.append(f"component {key!r}: {note}")
    if not plan.groups:
        detail = "; ".join(plan.warnings) or "the shards hold no tensors"
        raise NoVectors(f"nothing to count in {len(shards)} shard(s): {detail}")
    return plan


def why_not_counted(entry: TensorEntry, explicitly_named: bool) -> str | None:
    """Why an entry is not counted (None when it is)."""
    if entry.dtype in INTEGER_FORMATS and not explicitly_named:
        return "integer and bool tensors are counted only when their key is named"
    if entry.dtype not in FLOAT_FORMATS and entry.dtype not in INTEGER_FORMATS:
        return f"dtype {entry.dtype} is not supported (supported: {', '.join(ITEMSIZE)})"
    if len(entry.shape) < 2:
        return f"shape {list(entry.shape)} has no batch axis: activations need [N, F] or [..., C, F]"
    if entry.shape[-1] == 0 or (len(entry.shape) > 2 and entry.shape[-2] == 0):
        return f"shape {list(entry.shape)} has no features"
    return None


__all__ = [
    "INPUT_FORMATS",
    "READERS",
    "ComponentGroup",
    "ScanPlan",
    "TensorEntry",
    "TensorSlab",
    "component_layout",
    "detect",
    "discover",
    "plan_scan",
]
