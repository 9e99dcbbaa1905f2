"""Finding shards on disk, reading their headers, and planning what to count.

Planning reads only headers, so every shape, dtype and size problem is found before any
counting starts. A planned tensor is a ``TensorSlab``: ``num_rows`` rows of ``width`` elements
stored contiguously at ``offset`` in a file, which the engine maps window by window.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .dtypes import FLOAT_FORMATS, INTEGER_FORMATS, ITEMSIZE
from .errors import BadInput, NactError, NoVectors, ShapeMismatch

SHARD_SUFFIXES = (".safetensors",)
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a file's header describes it."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the first element in the file
    nbytes: int


@dataclass(frozen=True)
class TensorSlab:
    """A tensor to count, seen as ``[num_rows, width]`` elements stored contiguously in a file."""

    path: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    num_rows: int
    width: int

    @property
    def row_bytes(self) -> int:
        return self.width * ITEMSIZE[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.num_rows * self.row_bytes


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
    groups: dict[str, ComponentGroup] = field(default_factory=dict)
    slabs: list[TensorSlab] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.slabs)

    def shard_bytes(self) -> dict[Path, int]:
        """Bytes to count per shard (0 for shards with nothing to count)."""
        out = {p: 0 for p in self.shards}
        for s in self.slabs:
            out[s.path] += s.nbytes
        return out


def discover(paths: list[Path]) -> list[Path]:
    """Shard files under ``paths`` (directories searched recursively), in sorted path order."""
    found: set[Path] = set()
    for path in paths:
        if path.is_dir():
            shards = [p for p in path.rglob("*") if p.suffix in SHARD_SUFFIXES and p.is_file()]
            if not shards:
                raise BadInput(path, f"no shards found ({', '.join(SHARD_SUFFIXES)} files)")
            found.update(shards)
        elif path.is_file():
            found.add(path)
        elif path.exists():
            raise BadInput(path, "not a regular file or directory")
        else:
            raise BadInput(path, "no such file or directory")
    return sorted(found)


def read_safetensors_header(path: Path) -> list[TensorEntry]:
    """The tensors of a safetensors file, each checked against the file's size."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise BadInput(path, f"not a safetensors file: {size} bytes, too short for a header")
            header_len = int.from_bytes(head, "little")
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise BadInput(
                    path,
                    f"not a safetensors file, or truncated: header length {header_len} "
                    f"does not fit in a file of {size} bytes",
                )
            raw = f.read(header_len)
    except OSError as e:
        raise BadInput(path, f"cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(path, f"corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise BadInput(path, "corrupt safetensors header: not a JSON object")
    data_start = 8 + header_len
    entries = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise BadInput(path, f"corrupt safetensors header: bad entry for tensor {key!r}") from None
        if any(n < 0 for n in shape) or not 0 <= begin <= end:
            raise BadInput(path, f"corrupt safetensors header: bad shape or offsets for tensor {key!r}")
        if dtype in ITEMSIZE and end - begin != math.prod(shape) * ITEMSIZE[dtype]:
            raise BadInput(
                path,
                f"corrupt safetensors header: tensor {key!r} of shape {list(shape)} {dtype} "
                f"needs {math.prod(shape) * ITEMSIZE[dtype]} bytes, its offsets give {end - begin}",
            )
        if data_start + end > size:
            raise BadInput(
                path,
                f"truncated: tensor {key!r} ends at byte {data_start + end} but the file has {size} bytes",
            )
        entries.append(TensorEntry(key, dtype, shape, data_start + begin, end - begin))
    return entries


def component_layout(key: str, shape: tuple[int, ...], flatten: bool) -> tuple[tuple[str, ...], int, int]:
    """Component names, number of rows and features of a tensor of ``shape`` under ``key``.

    ``[N, F]`` is one component; ``[..., C, F]`` has a component axis ``C`` (names ``key[i]``)
    and batch axes before it, unless ``flatten`` makes every axis before ``F`` a batch axis.
    """
    features = shape[-1]
    if flatten or len(shape) == 2:
        return (key,), math.prod(shape[:-1]), features
    return tuple(f"{key}[{i}]" for i in range(shape[-2])), math.prod(shape[:-2]), features


def plan_scan(shards: list[Path], keys: list[str] | None = None, flatten: bool = False) -> ScanPlan:
    """Read every shard's header and decide what to count; raises on any problem found."""
    plan = ScanPlan(shards=shards)
    named = set(keys or ())
    seen_keys: set[str] = set()
    skipped: dict[str, tuple[str, str, int]] = {}  # key -> (dtype, why, shard count)
    for path in shards:
        for entry in read_safetensors_header(path):
            seen_keys.add(entry.key)
            if named and entry.key not in named:
                continue
            why = _why_not_counted(entry, explicitly_named=entry.key in named)
            if why is not None:
                if entry.key in named:
                    raise BadInput(path, f"tensor {entry.key!r}: {why}")
                dtype, reason, count = skipped.get(entry.key, (entry.dtype, why, 0))
                skipped[entry.key] = (dtype, reason, count + 1)
                continue
            names, num_rows, num_features = component_layout(entry.key, entry.shape, flatten)
            group = plan.groups.get(entry.key)
            if group is None:
                plan.groups[entry.key] = ComponentGroup(entry.key, names, num_features, path, entry.shape)
            elif (group.names, group.num_features) != (names, num_features):
                raise ShapeMismatch(
                    f"tensor {entry.key!r} has shape {list(group.first_shape)} in {group.first_path} "
                    f"but {list(entry.shape)} in {path}: every shard must give a component the same "
                    "number of features (and components)"
                )
            plan.slabs.append(
                TensorSlab(path, entry.key, entry.dtype, entry.shape, entry.offset, num_rows, len(names) * num_features)
            )
    missing = sorted(named - seen_keys)
    if missing:
        raise NactError(
            f"--key {', '.join(map(repr, missing))} not found in any shard "
            f"(keys seen: {', '.join(sorted(seen_keys)) or 'none'})"
        )
    for key, (dtype, why, count) in skipped.items():
        plan.warnings.append(f"skipped tensor {key!r} ({dtype}) in {count} shard(s): {why}")
    if not plan.groups:
        detail = "; ".join(plan.warnings) or "the shards hold no tensors"
        raise NoVectors(f"nothing to count in {len(shards)} shard(s): {detail}")
    return plan


def _why_not_counted(entry: TensorEntry, explicitly_named: bool) -> str | None:
    if entry.dtype in INTEGER_FORMATS and not explicitly_named:
        return "integer and bool tensors are counted only when named with --key"
    if entry.dtype not in FLOAT_FORMATS and entry.dtype not in INTEGER_FORMATS:
        return f"dtype {entry.dtype} is not supported (supported: {', '.join(ITEMSIZE)})"
    if len(entry.shape) < 2:
        return f"shape {list(entry.shape)} has no batch axis: activations need [N, F] or [..., C, F]"
    if entry.shape[-1] == 0 or (len(entry.shape) > 2 and entry.shape[-2] == 0):
        return f"shape {list(entry.shape)} has no features"
    return None
