"""The reader interface, and what every reader produces: tensor entries described from
headers, before any counting.

A reader is a module with ``FORMATS`` (the format names it reads), ``SUFFIXES`` (file suffix ->
format, for detection) and ``entries(paths)`` (``Reader``). A dense reader also has
``chunks(slab, rows)`` for entries it cannot have mapped in place (``DenseReader``); a sparse
reader's ``entries`` takes the options of its format, and its ``count(slab, rule, ...)`` counts
its stored entries itself (``SparseReader``). ``registry`` holds them, typed.
"""

from __future__ import annotations

import mmap
import os
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Literal, Protocol

import numpy as np

from ..dtypes import ITEMSIZE, UNSIGNED_VIEW
from ..errors import BadInput
from ..remote.objects import RemoteFile, RemotePath, as_path, read_range

if TYPE_CHECKING:
    from ..dtypes import FireRule

ShardPath = Path | RemotePath  # a shard is a local file or an object of a store

# How an entry's values are stored, which says how the engine reads them.
Storage = Literal["mapped", "fortran", "compressed", "loaded", "swapped", "batches", "sparse"]
MAPPED: Final = "mapped"  # rows lie contiguously at ``offset`` (or in ``regions``): mapped window by window
FORTRAN: Final = "fortran"  # a Fortran-ordered array: its reader gathers rows
COMPRESSED: Final = "compressed"  # a compressed member: its reader decompresses it as a stream
LOADED: Final = "loaded"  # a tensor its reader loads (torch.save files)
SWAPPED: Final = "swapped"  # rows at ``offset`` in big-endian order: its reader maps and byte-swaps them
BATCHES: Final = "batches"  # an Arrow column whose values are not in the file as they lie (compressed)
SPARSE: Final = "sparse"  # stored (location, value) entries: its reader counts them


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor (or sparse cache) as a reader found it, with what is needed to read it again.

    ``offset`` is set when the tensor's rows lie contiguously in ``path`` at that byte offset,
    ``regions`` when they lie in several runs (an Arrow column, a run per record batch): the
    engine then maps them window by window. Otherwise the format's reader streams them.
    """

    path: ShardPath
    key: str
    dtype: str
    shape: tuple[int, ...]
    format: str
    offset: int | None = None
    member: str | None = None  # npz member, torch dict path, arrow column
    files: tuple[ShardPath, ...] = ()  # every file of a multi-file entry (a delphi module)
    file_bytes: tuple[int, ...] = ()  # bytes read from each of ``files``
    note: str | None = None  # shown by inspect and in warnings; never read by code
    storage: Storage = MAPPED
    from_file: bool = False  # the key is the file's name (a single-array file)
    byteswap: bool = False  # values are big-endian: swapped to native order when read
    positions: int | None = None  # rows are sequences of this many positions (the format says so)
    regions: tuple[tuple[int, int], ...] = ()  # (byte offset, rows) of each run of rows, in order

    @property
    def nbytes(self) -> int:
        """Bytes a scan reads for this entry."""
        if self.files:
            return sum(self.file_bytes)
        n = ITEMSIZE.get(self.dtype, 0)
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class TensorSlab:
    """A planned tensor seen as ``[num_rows, width]`` elements: the unit the engine counts.

    ``stream`` names the component group it belongs to (its rows continue that stream).
    ``index`` is set when the tensor's first axis is its component axis: the slab is then the
    block of that index."""

    entry: TensorEntry
    num_rows: int
    width: int
    stream: str = ""
    index: int | None = None
    positions: int | None = None  # its rows are sequences of this many positions, when known

    @property
    def path(self) -> ShardPath:
        return self.entry.path

    @property
    def key(self) -> str:
        return self.stream or self.entry.key

    @property
    def dtype(self) -> str:
        return self.entry.dtype

    @property
    def offset(self) -> int | None:
        if self.entry.offset is None or self.index is None:
            return self.entry.offset
        return self.entry.offset + self.index * self.num_rows * self.row_bytes

    @property
    def row_bytes(self) -> int:
        return self.width * ITEMSIZE[self.dtype]

    @cached_property
    def runs(self) -> tuple[tuple[int, int, int], ...]:
        """``(first row, rows, byte offset)`` of each run of contiguous rows of a mapped slab."""
        if not self.entry.regions:
            return ((0, self.num_rows, self.offset or 0),)
        runs, row = [], 0
        for offset, rows in self.entry.regions:
            runs.append((row, rows, offset))
            row += rows
        return tuple(runs)

    def byte_range(self, start: int, end: int) -> tuple[int, int]:
        """The bytes of rows ``[start, end)``, which lie in one run."""
        runs = self.runs
        first, rows, offset = runs[bisect_right(runs, (start, float("inf"))) - 1]
        assert first <= start and end <= first + rows, "a window crosses a run"
        return offset + (start - first) * self.row_bytes, offset + (end - first) * self.row_bytes

    @property
    def nbytes(self) -> int:
        return self.entry.nbytes if self.entry.files else self.num_rows * self.row_bytes


class Reader(Protocol):
    """A reader module: the formats it reads and the file suffixes that say them."""

    @property
    def FORMATS(self) -> tuple[str, ...]: ...

    @property
    def SUFFIXES(self) -> dict[str, str]: ...


class DenseReader(Reader, Protocol):
    """A reader of tensors whose rows the engine counts (mapped in place, or from ``chunks``)."""

    def entries(self, paths: list[ShardPath]) -> list[TensorEntry]:
        """The tensor entries of ``paths``, from their headers."""
        ...

    def chunks(self, slab: TensorSlab, chunk_rows: int) -> Iterator[np.ndarray]:
        """Rows ``[n, slab.width]`` of raw bits (the dtype's unsigned view), in order."""
        ...


class SparseReader(Reader, Protocol):
    """A reader of stored (location, value) entries, which counts them itself."""

    def entries(
        self,
        paths: list[ShardPath],
        *,
        num_latents: int | None = None,
        num_vectors: int | None = None,
        partial: bool = False,
        named: frozenset[ShardPath] = frozenset(),
    ) -> list[TensorEntry]:
        """The entries of ``paths`` (one per module folder); ``named``: files named one by one."""
        ...

    def count(
        self,
        slab: TensorSlab,
        rule: FireRule,
        track_last: bool = False,
        files: tuple[ShardPath, ...] | None = None,
        native: bool = True,
        skip: tuple[int, ...] = (),
    ) -> Iterator[tuple[ShardPath, dict[str, np.ndarray], int]]:
        """Per chunk of stored entries (of ``files``, default all): the file, its states over the
        whole width (``last_fired`` as stream indices), and the bytes read. ``native``: the C
        kernel may count (else numpy). ``skip``: positions left out of every sequence."""
        ...


_DIGITS = re.compile(r"([0-9]+)")


def mapped_chunks(slab: TensorSlab, chunk_rows: int) -> Iterator[np.ndarray]:
    """Rows of a mapped slab, run by run: copied out of a read-only map of a file, or fetched by
    range requests from an object (the engine maps or fetches windows itself; this is the same
    read for callers that want a reader's chunks)."""
    unsigned = UNSIGNED_VIEW[slab.row_bytes // slab.width] if slab.width else np.uint8
    for _, rows, offset in slab.runs:
        if not rows:
            continue
        if isinstance(slab.path, RemotePath):
            for start in range(0, rows, chunk_rows):
                stop = min(start + chunk_rows, rows)
                begin, end = offset + start * slab.row_bytes, offset + stop * slab.row_bytes
                data = read_range(slab.path, begin, end)
                yield np.frombuffer(data, dtype=unsigned).reshape(stop - start, slab.width)
            continue
        mapped = np.memmap(slab.path, dtype=unsigned, mode="r", offset=offset, shape=(rows, slab.width))
        for start in range(0, rows, chunk_rows):
            yield np.array(mapped[start : start + chunk_rows])


def drop_pages(mapped: mmap.mmap | None, end: int, start: int = 0) -> int:
    """Let the pages of ``[start, end)`` of a read-only file mapping leave the process
    (``MADV_DONTNEED``: a file mapping reads them again from the page cache if they are touched
    after), ``end`` rounded down to a page; where the next call may start. Counting that drops
    behind itself keeps about one window resident, not the file."""
    end -= end % mmap.PAGESIZE
    if mapped is None or not hasattr(mapped, "madvise") or end <= start:
        return start
    mapped.madvise(mmap.MADV_DONTNEED, start, end - start)
    return end


def local_file(path: ShardPath) -> Path:
    """``path`` as a local file, for a reader that reads only local files (planning refuses
    remote objects of the storage kinds they read: this is the last word on it)."""
    if isinstance(path, RemotePath):
        raise BadInput(path, "is read from local files only: download it first")
    return path


def to_path(path: object) -> ShardPath:
    """An input the library is given: a ``Path`` or ``RemotePath`` as it is; text (or a path-like)
    that is a URL becomes a ``RemotePath``, anything else a ``Path``."""
    if isinstance(path, (Path, RemotePath)):
        return path
    return as_path(os.fspath(path))  # type: ignore[call-overload]  # a path-like of the caller's: fspath says if it is not


def open_shard(path: ShardPath) -> BinaryIO:
    """A shard opened for reading its header: the local file, or the remote object through
    range requests. Its size is ``shard_size(f)``."""
    if isinstance(path, RemotePath):
        return RemoteFile(path)
    return open(path, "rb")


def shard_size(f: BinaryIO) -> int:
    size = getattr(f, "size", None)
    return int(size) if isinstance(size, int) else os.fstat(f.fileno()).st_size


def natural_key(path: ShardPath) -> list[object]:
    """Sort key that puts ``2.safetensors`` before ``10.safetensors``."""
    return [int(part) if part.isascii() and part.isdigit() else part for part in _DIGITS.split(str(path))]
