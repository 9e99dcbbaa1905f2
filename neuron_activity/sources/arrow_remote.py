"""SAELens Arrow caches in an object store, read without reading them whole.

An Arrow IPC stream has no index, but each message starts with its metadata, which gives the
length of its body. A remote file is planned by reading only the messages' metadata (a small
range request per record batch; the bodies are skipped): the schema, then, per batch, its rows
and where each buffer lies in its body. A hook column stored as datasets' Array2D (a fixed-size
list of fixed-size lists of floats, SAELens' layout) has its values in one contiguous buffer per
batch: the column is mapped from those runs, and windows of them counted by range requests on
the I/O threads, as safetensors rows are. Other layouts (variable-length lists, compressed
bodies, nulls) are refused with the reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import ARROW_NAMES, ITEMSIZE
from ..errors import BadInput, first_line
from ..remote.objects import RemotePath, current, info
from .base import MAPPED, TensorEntry

CONTINUATION = 0xFFFFFFFF
MAX_METADATA = 64 << 20
RECORD_BATCH, SCHEMA, DICTIONARY_BATCH = 3, 1, 2


class Unsupported(Exception):
    """A layout this reader does not plan remotely."""


@dataclass(frozen=True, slots=True)
class Column:
    """A float hook column: its dtype, shape per row, and its values' place in each batch."""

    dtype: str
    context: int
    width: int
    regions: tuple[tuple[int, int], ...]  # (byte offset in the object, vectors) per record batch


class Columns(dict[str, Column]):
    """The float hook columns of one object by name: its plan, kept in the scan's session."""


# --- flatbuffers: just enough to read Message and RecordBatch tables --------------------------


class _Table:
    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, i: int) -> int:
        at = 4 + 2 * i
        return int(struct.unpack_from("<H", self.buf, self.vtable + at)[0]) if at < self.vsize else 0

    def scalar(self, i: int, fmt: str, default: int = 0) -> int:
        off = self._field(i)
        return int(struct.unpack_from(fmt, self.buf, self.pos + off)[0]) if off else default

    def _target(self, i: int) -> int | None:
        off = self._field(i)
        if not off:
            return None
        return self.pos + off + int(struct.unpack_from("<I", self.buf, self.pos + off)[0])

    def table(self, i: int) -> _Table | None:
        at = self._target(i)
        return None if at is None else _Table(self.buf, at)

    def structs(self, i: int, fmt: str) -> list[tuple[int, ...]]:
        at = self._target(i)
        if at is None:
            return []
        n = struct.unpack_from("<I", self.buf, at)[0]
        size = struct.calcsize(fmt)
        return [struct.unpack_from(fmt, self.buf, at + 4 + k * size) for k in range(n)]


def _message(buf: bytes) -> tuple[int, _Table | None, int]:
    """A Message's header type, header table and body length."""
    root = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    return root.scalar(1, "<B"), root.table(2), root.scalar(3, "<q")


# --- layouts ------------------------------------------------------------------------------------


def _counts(t: Any) -> tuple[int, int]:
    """Field nodes and buffers an array of Arrow type ``t`` takes in a record batch."""
    import pyarrow as pa  # as in plan(): loaded by then

    t = getattr(t, "storage_type", t)
    types = pa.types
    if types.is_null(t):
        return 1, 0
    if types.is_fixed_size_list(t):
        n, b = _counts(t.value_type)
        return 1 + n, 1 + b
    if types.is_list(t) or types.is_large_list(t) or types.is_map(t):
        n, b = _counts(t.value_type if not types.is_map(t) else pa.struct([t.key_field, t.item_field]))
        return 1 + n, 2 + b
    if types.is_struct(t):
        children = [_counts(t.field(i).type) for i in range(t.num_fields)]
        return 1 + sum(c[0] for c in children), 1 + sum(c[1] for c in children)
    if types.is_dictionary(t):
        return 1, 2
    if types.is_string(t) or types.is_binary(t) or types.is_large_string(t) or types.is_large_binary(t):
        return 1, 3
    if types.is_primitive(t) or types.is_decimal(t) or types.is_fixed_size_binary(t):
        return 1, 2
    raise Unsupported(f"a column of type {t}")


def _float_lists(t: Any) -> tuple[str, list[int]] | None:
    """``(dtype, levels)`` of a list of lists of floats (fixed-size or not, as datasets' Array2D
    stores it): each level is its fixed size, or 0 for a list with offsets (4 bytes; 8 large)."""
    import pyarrow as pa  # as in plan(): loaded by then

    t = getattr(t, "storage_type", t)
    levels = []
    for _ in range(2):
        if pa.types.is_fixed_size_list(t):
            levels.append(t.list_size)
        elif pa.types.is_list(t):
            levels.append(0)
        elif pa.types.is_large_list(t):
            levels.append(-1)
        else:
            return None
        t = t.value_type
    dtype = ARROW_NAMES.get(str(t))
    return (dtype, levels) if dtype else None


# --- planning -----------------------------------------------------------------------------------


def _read(path: RemotePath, start: int, stop: int) -> bytes:
    """Bytes of the object: from its first block where they lie in it, else by a range request."""
    return current().head_or_range(path, start, stop)


GUESS = 4096  # a message's metadata is read with its prefix when it is at most this long


def plan(path: RemotePath) -> Columns:
    """The float hook columns of a remote Arrow stream, from its messages' metadata (and, for
    lists with offsets, their offsets) only."""
    planned = current().planned(path, Columns)  # planned in parallel by arrow_files.entries
    if planned is not None:
        return planned
    import pyarrow as pa  # optional (the arrow extra), and ~50 ms: only Arrow caches need it

    size = info(path).size
    pos, schema = 0, None
    if size >= 8 and _read(path, 0, 6) == b"ARROW1":  # the file format: a stream after 8 bytes of magic
        pos = 8
    layout: list[tuple[str, tuple[str, list[int]] | None, int, int]] = []  # name, float lists, first node, first buffer
    found: dict[str, _Found] = {}
    while pos + 8 <= size:
        ahead = _read(path, pos, min(size, pos + 8 + GUESS))
        prefix = ahead[:8]
        first, second = struct.unpack("<II", prefix)
        header, length = (8, second) if first == CONTINUATION else (4, first)
        if length == 0:
            break  # end of stream
        if length > MAX_METADATA or pos + header + length > size:
            raise BadInput(path, f"not a readable Arrow stream: message metadata of {length} bytes at byte {pos}")
        metadata = ahead[header : header + length]
        if len(metadata) < length:
            metadata = _read(path, pos + header, pos + header + length)
        kind, table, body = _message(metadata)
        body_start = pos + header + length
        if body < 0 or body_start + body > size:
            raise BadInput(path, f"not a readable Arrow stream: a message body runs past the end at byte {pos}")
        if kind == SCHEMA:
            schema = pa.ipc.read_schema(pa.py_buffer(prefix[:header] + metadata))
            names = schema.names
            if len(set(names)) != len(names):
                twice = sorted({n for n in names if names.count(n) > 1})
                raise BadInput(path, f"column {twice[0]!r} appears twice: which one is the hook is unknown")
            node = buffer = 0
            for field in schema:
                node_count, buffer_count = _counts(field.type)
                lists = _float_lists(field.type)
                layout.append((field.name, lists, node, buffer))
                if lists is not None:
                    found[field.name] = _Found(lists[0])
                node, buffer = node + node_count, buffer + buffer_count
        elif kind == RECORD_BATCH and table is not None:
            if schema is None:
                raise BadInput(path, "not a readable Arrow stream: a record batch before the schema")
            if table.table(3) is not None:  # BodyCompression
                raise Unsupported("a compressed record batch")
            rows = table.scalar(0, "<q")
            nodes = table.structs(1, "<qq")  # (length, null_count)
            buffers = table.structs(2, "<qq")  # (offset, length) in the body
            for name, lists, n0, b0 in layout:
                if lists is not None and rows:
                    found[name].add(path, name, rows, lists[1], nodes[n0 : n0 + 3], buffers[b0:], body_start, body)
        elif kind == DICTIONARY_BATCH:
            raise Unsupported("dictionary batches")
        pos = body_start + body
    if schema is None:
        raise BadInput(path, "not a readable Arrow stream: no schema")
    columns = Columns({name: f.column() for name, f in found.items()})
    current().keep_plan(path, columns)
    return columns


class _Found:
    """What the batches of one float column said so far."""

    def __init__(self, dtype: str) -> None:
        self.dtype, self.context, self.width = dtype, 0, 0
        self.regions: list[tuple[int, int]] = []

    def column(self) -> Column:
        return Column(self.dtype, self.context, self.width, tuple(self.regions))

    def add(
        self,
        path: RemotePath,
        name: str,
        rows: int,
        levels: list[int],
        nodes: list[tuple[int, ...]],
        buffers: list[tuple[int, ...]],
        body_start: int,
        body: int,
    ) -> None:
        """One batch: check its nodes and offsets, and keep where its values lie."""
        if len(nodes) < 3 or any(n[1] for n in nodes):
            raise BadInput(path, f"column {name!r} has null rows")
        at, spans = 0, []  # type: tuple[int, list[tuple[int, ...] | None]]  # the buffers of each level: validity [, offsets]; then validity, data
        for level in levels:
            if level > 0:
                spans.append(None)
                at += 1
            else:
                spans.append(buffers[at + 1] if at + 1 < len(buffers) else None)
                if spans[-1] is None:
                    raise BadInput(
                        path, "not a readable Arrow stream: a record batch has fewer buffers than its schema"
                    )
                at += 2
        if at + 1 >= len(buffers):
            raise BadInput(path, "not a readable Arrow stream: a record batch has fewer buffers than its schema")
        data_offset, data_bytes = buffers[at + 1]
        first, count = 0, rows  # the elements of the current level this batch's rows cover
        sizes = []
        for level, span, node in zip(levels, spans, nodes[1:]):
            if level > 0:
                first, count, size = first * level, count * level, level
            else:
                width = 8 if level < 0 else 4
                assert span is not None  # a level with offsets has its buffer (checked above)
                offsets = _offsets(path, span, body_start, body, first, count, width)
                steps = np.diff(offsets)
                size = int(steps[0]) if len(steps) else 0
                if len(steps) and (steps != size).any():
                    raise BadInput(path, f"column {name!r} has rows of different shapes")
                first, count = int(offsets[0]), count * size
            if first < 0 or first + count > node[0]:
                raise BadInput(path, f"not a readable Arrow stream: column {name!r} has offsets out of its values")
            sizes.append(size)
        context, width = sizes
        if (self.context, self.width) not in ((0, 0), (context, width)):
            raise BadInput(path, f"column {name!r} changes shape between record batches")
        self.context, self.width = context, width
        itemsize = ITEMSIZE[self.dtype]
        if (first + count) * itemsize > data_bytes or data_offset + data_bytes > body:
            raise BadInput(path, f"not a readable Arrow stream: column {name!r} has a values buffer out of its batch")
        if count:
            self.regions.append((body_start + data_offset + first * itemsize, rows * context))


def _offsets(
    path: RemotePath, span: tuple[int, ...], body_start: int, body: int, first: int, count: int, width: int
) -> np.ndarray:
    """Offsets ``first .. first + count`` (inclusive) of a list level, read from its buffer."""
    offset, nbytes = span
    if (first + count + 1) * width > nbytes or offset + nbytes > body:
        raise BadInput(path, "not a readable Arrow stream: a list's offsets run past their buffer")
    start = body_start + offset + first * width
    raw = _read(path, start, start + (count + 1) * width)
    return np.frombuffer(raw, dtype="<i8" if width == 8 else "<i4").astype(np.int64)


def entries(path: RemotePath) -> list[TensorEntry]:
    try:
        columns = plan(path)
    except Unsupported as e:
        raise BadInput(path, f"{e}: read from local files only, download it first") from None
    except BadInput:
        raise
    except Exception as e:  # pyarrow's schema parser, struct on a short buffer
        raise BadInput(path, f"not a readable Arrow stream: {first_line(e)}") from None
    out = []
    for name, c in columns.items():
        rows = sum(n for _, n in c.regions) // c.context if c.context else 0
        out.append(
            TensorEntry(
                path,
                name,
                c.dtype,
                (rows * c.context, c.width),
                "arrow",
                member=name,
                note=f"{rows} rows x {c.context} positions",
                storage=MAPPED,
                positions=c.context or None,
                regions=c.regions,
            )
        )
    return out
