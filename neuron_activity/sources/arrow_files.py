"""SAELens activation caches (v4 and later): Hugging Face ``datasets`` folders of Arrow files.

Each hook column holds one ``[context_size, d_in]`` array per row (a nested list in Arrow), so
a column is one component of ``rows x context_size`` vectors. ``token_ids`` and other integer
columns are not components. A file is planned from a memory map (its schema and the record
batches' metadata; datasets' Array2D has its shape in the schema). A column's values lie in the
file, contiguous within each record batch: the column is mapped from those runs and the engine
counts windows of them on every thread, as it counts safetensors rows. A compressed file's
values do not lie in it: its batches are decoded one at a time, pages dropped behind each, so a
scan holds about one batch of a file. Needs pyarrow: ``pip install pyarrow``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import ARROW_NAMES, ITEMSIZE, UNSIGNED_VIEW
from ..errors import BadInput, NactError, first_line
from ..json_files import read_json
from ..remote.objects import RemotePath, each
from . import arrow_remote
from .base import BATCHES, MAPPED, ShardPath, TensorEntry, TensorSlab, drop_pages, mapped_chunks

FORMAT = "arrow"
FORMATS = (FORMAT,)
SUFFIXES = {".arrow": FORMAT}


def _pyarrow() -> Any:
    try:
        import pyarrow  # optional (the arrow extra), and ~50 ms: only Arrow caches need it
        import pyarrow.ipc
    except ImportError:
        raise NactError("reading Arrow caches (SAELens) needs pyarrow: pip install 'nact[arrow]'") from None
    return pyarrow


def dataset_files(folder: ShardPath) -> list[ShardPath] | None:
    """The data files a saved ``datasets`` folder lists in ``state.json``, or None."""
    state = folder / "state.json"
    if not state.is_file():
        return None
    try:
        listed = read_json(state)["_data_files"]
        names = [item["filename"] for item in listed]
    except (KeyError, TypeError) as e:
        raise BadInput(state, f"not a valid datasets state.json: {type(e).__name__}: {e}") from None
    files = []
    for name in names:
        if not isinstance(name, str) or Path(name).name != name:
            raise BadInput(state, f"not a valid datasets state.json: data file {name!r} is not a file name")
        if not (folder / name).is_file():
            raise BadInput(state, f"lists data file {name}, which is missing: the cache is incomplete")
        files.append(folder / name)
    return files


def _fixed_shape(arrow_type: Any) -> tuple[int, int] | None:
    """``(context, width)`` when ``arrow_type`` is a fixed-size list of fixed-size lists (datasets'
    Array2D storage): the shape is in the schema, and no row has to be read to know it."""
    pa = _pyarrow()
    t = getattr(arrow_type, "storage_type", arrow_type)
    shape = []
    for _ in range(2):
        if not pa.types.is_fixed_size_list(t):
            return None
        shape.append(t.list_size)
        t = t.value_type
    return shape[0], shape[1]


def _batches(path: ShardPath, drop_behind: bool = False) -> Iterator[tuple[Any, int, int]]:
    """The record batches of an Arrow file, as zero-copy views of a read-only memory map, each
    with the map's address and size (where the file's bytes lie in memory). ``drop_behind``:
    once the caller is done with a batch, the pages read so far leave the process
    (``MADV_DONTNEED``; a file mapping reads them again from the page cache if they are touched
    after), so that counting a file keeps about one batch resident, not the file."""
    pa = _pyarrow()
    mapped = None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        whole = pa.py_buffer(mapped if mapped is not None else b"")
        source = pa.BufferReader(whole)
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            file_reader = pa.ipc.open_file(source)
            reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        dropped = 0
        for batch in reader:
            # lengths and offsets checked against the buffers before any kernel reads them: a
            # corrupt batch is an error here, not an abort inside pyarrow later. Without offsets
            # (only fixed-size lists and primitives) the cheap check of buffer sizes is complete.
            fixed = all(_fixed_shape(f.type) is not None or not _is_nested(f.type) for f in batch.schema)
            batch.validate(full=not fixed)
            yield batch, whole.address, whole.size
            if drop_behind:
                dropped = drop_pages(mapped, source.tell(), dropped)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise BadInput(path, f"not a readable Arrow file: {first_line(e)}") from None


def _is_nested(arrow_type: Any) -> bool:
    pa = _pyarrow()
    t = getattr(arrow_type, "storage_type", arrow_type)
    return bool(pa.types.is_nested(t))


def _storage(column: Any) -> Any:
    return getattr(column, "storage", column)  # extension arrays (datasets' Array2D) wrap lists


def _nested_float(arrow_type: Any) -> str | None:
    """The dtype name when ``arrow_type`` is a list of lists of floats."""
    pa = _pyarrow()
    t = getattr(arrow_type, "storage_type", arrow_type)
    for _ in range(2):
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            return None
        t = t.value_type
    return ARROW_NAMES.get(str(t))


def _values(path: ShardPath, name: str, column: Any) -> tuple[np.ndarray, int, int]:
    """The flat raw bits of a batch's column, with its context size and width, checked."""
    outer = _storage(column)
    if outer.null_count:
        raise BadInput(path, f"column {name!r} has null rows")
    inner = _flat(outer)
    if len(outer) == 0:
        return np.empty(0), 0, 0
    fixed = _fixed_shape(outer.type)
    if fixed is not None:
        shape = list(fixed)
    else:  # lists of any length: every row's lengths checked
        shape = []
        for lo, hi in (_lengths(outer), _lengths(inner)):
            if lo != hi:
                raise BadInput(path, f"column {name!r} has rows of different shapes")
            shape.append(lo)
    values = _flat(inner)
    if inner.null_count or values.null_count:
        raise BadInput(path, f"column {name!r} has null values")
    return _numpy_view(values), shape[0], shape[1]


def _offsets(array: Any) -> np.ndarray:
    """Where each row of a variable-size list array starts in its values, and where the last
    ends (the batch was validated: they rise and stay within the values)."""
    width = 8 if "large" in str(array.type) else 4
    first, rows = array.offset, len(array)
    return np.frombuffer(array.buffers()[1], dtype=f"<i{width}", count=first + rows + 1)[first:]


def _lengths(array: Any) -> tuple[int, int]:
    """The shortest and longest list of a list array, ``(0, 0)`` if it has none."""
    size = getattr(array.type, "list_size", None)
    if size is not None:
        return size, size
    if not len(array):
        return 0, 0
    lengths = np.diff(_offsets(array))
    return int(lengths.min()), int(lengths.max())


def _flat(array: Any) -> Any:
    """The values of a list array's rows, in order. (pyarrow's ``flatten`` and
    ``list_value_length`` would say the same, but import pyarrow.compute: 70 ms.)"""
    size = getattr(array.type, "list_size", None)
    if size is not None:
        first, count = array.offset * size, len(array) * size
    else:
        offsets = _offsets(array) if len(array) else np.zeros(1, np.int64)
        first, count = int(offsets[0]), int(offsets[-1] - offsets[0])
    return array.values.slice(first, count)


def _numpy_view(values: Any) -> np.ndarray:
    """The raw bits of a primitive Arrow float array as a numpy view of its data buffer (no copy,
    and not through ``Array.to_numpy``, which may import pandas)."""
    dtype = UNSIGNED_VIEW[ITEMSIZE[ARROW_NAMES[str(values.type)]]]
    data = values.buffers()[1]
    offset, length = values.offset, len(values)
    return np.frombuffer(data, dtype=dtype, count=offset + length)[offset:]


@contextmanager
def _reading(path: ShardPath) -> Iterator[None]:
    """Whatever pyarrow raises on a corrupt file (schema names that are not UTF-8, ...) is
    BadInput naming the file."""
    try:
        yield
    except NactError:
        raise
    except Exception as e:
        raise BadInput(path, f"not a readable Arrow file: {first_line(e)}") from None


def entries(paths: list[ShardPath]) -> list[TensorEntry]:
    remote = [p for p in paths if isinstance(p, RemotePath)]
    if remote:  # the files' message headers are read one after another: the files at once
        _pyarrow()
        each(remote, arrow_remote.entries)
    out = []
    for path in paths:
        if isinstance(path, RemotePath):  # planned from the messages' metadata (arrow_remote)
            _pyarrow()
            out += arrow_remote.entries(path)
            continue
        with _reading(path):
            out += _file_entries(path)
    return out


def _file_entries(path: ShardPath) -> list[TensorEntry]:
    """A float column's values lie in the file, a run of rows per record batch: the entry is
    mapped from ``regions``, windows of it counted in parallel. Where they do not (a compressed
    file: pyarrow decompresses each batch) it is read batch by batch (``BATCHES``)."""
    out = []
    columns: dict[str, list[Any]] = {}  # name -> [dtype, rows, (context, width)]
    regions: dict[str, list[tuple[int, int]] | None] = {}
    for batch, base, size in _batches(path):
        names = batch.schema.names
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise BadInput(path, f"column {twice[0]!r} appears twice: which one is the hook is unknown")
        for field, column in zip(batch.schema, batch.columns):
            dtype = _nested_float(field.type)
            if dtype is None:
                continue
            values, context, width = _values(path, field.name, column)
            seen = columns.setdefault(field.name, [dtype, 0, None])
            if len(column) and seen[2] is not None and seen[2] != (context, width):
                raise BadInput(path, f"column {field.name!r} changes shape between record batches")
            if len(column):
                seen[1] += len(column)
                seen[2] = (context, width)
                runs = regions.setdefault(field.name, [])
                offset = values.ctypes.data - base
                if runs is not None and 0 <= offset and offset + values.nbytes <= size:
                    runs.append((offset, len(column) * context))
                else:  # not in the file as it lies on disk
                    regions[field.name] = None
    for name, (dtype, rows, shape) in columns.items():
        context, width = shape or (0, 0)
        runs = regions.get(name, [])
        out.append(
            TensorEntry(
                path,
                name,
                dtype,
                (rows * context, width),
                FORMAT,
                member=name,
                note=f"{rows} rows x {context} positions",
                storage=MAPPED if runs is not None else BATCHES,
                positions=context or None,
                regions=tuple(runs or ()),
            )
        )
    return out


def chunks(slab: TensorSlab, chunk_rows: int) -> Iterator[np.ndarray]:
    """Vectors of one column: of a mapped one (every remote column is), from its runs; else a
    record batch at a time, as pyarrow decodes them (batches are written bounded)."""
    if slab.entry.storage == MAPPED:
        yield from mapped_chunks(slab, chunk_rows)
        return
    with _reading(slab.path):
        yield from _column_chunks(slab)


def _column_chunks(slab: TensorSlab) -> Iterator[np.ndarray]:
    width = slab.width
    unsigned = UNSIGNED_VIEW[slab.row_bytes // width]
    for batch, _, _ in _batches(slab.path, drop_behind=True):
        column = batch.column(slab.entry.member)
        values, _, _ = _values(slab.path, slab.key, column)
        if values.size:
            yield values.view(unsigned).reshape(-1, width)
