"""The readers nact has, one module per on-disk format, and how a file's format is told: its
suffix, and for safetensors its header (a delphi split is a safetensors file)."""

from __future__ import annotations

from typing import Literal, get_args

from ..errors import BadInput
from . import arrow_files, delphi_caches, numpy_files, safetensors_files, torch_files
from .base import DenseReader, Reader, ShardPath, SparseReader, TensorEntry

_DENSE: tuple[DenseReader, ...] = (safetensors_files, numpy_files, torch_files, arrow_files)
_SPARSE: tuple[SparseReader, ...] = (delphi_caches,)
DENSE_READERS: dict[str, DenseReader] = {fmt: r for r in _DENSE for fmt in r.FORMATS}
SPARSE_READERS: dict[str, SparseReader] = {fmt: r for r in _SPARSE for fmt in r.FORMATS}
READERS: dict[str, Reader] = {**DENSE_READERS, **SPARSE_READERS}
InputFormat = Literal["safetensors", "npy", "npz", "torch", "arrow", "delphi"]  # the readers' formats, in order
INPUT_FORMATS: tuple[InputFormat, ...] = get_args(InputFormat)
SPARSE_FORMATS = tuple(SPARSE_READERS)
SUFFIX_FORMATS: dict[str, str] = {suffix: fmt for r in READERS.values() for suffix, fmt in r.SUFFIXES.items()}
# formats whose layout lets a remote object be read by range requests: a header (or a zip
# directory), then windows of rows (of entries, for delphi splits)
REMOTE_FORMATS = ("safetensors", "npy", "npz", "torch", "delphi", "arrow")


def detect(path: ShardPath) -> str:
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


def entries_of(
    fmt: str,
    paths: list[ShardPath],
    *,
    num_latents: int | None = None,
    num_vectors: int | None = None,
    partial: bool = False,
    named: frozenset[ShardPath] = frozenset(),
) -> list[TensorEntry]:
    """The entries the reader of ``fmt`` finds in ``paths``; the options after ``paths`` are those
    of sparse caches (``named``: files named one by one, not found in a folder)."""
    sparse = SPARSE_READERS.get(fmt)
    if sparse is not None:
        return sparse.entries(paths, num_latents=num_latents, num_vectors=num_vectors, partial=partial, named=named)
    return DENSE_READERS[fmt].entries(paths)
