"""The readers nact has, one module per on-disk format, and how a file's format is told: its
suffix, and for safetensors its header (a delphi split is a safetensors file)."""

from __future__ import annotations

from types import ModuleType
from typing import Literal, get_args

from ..errors import BadInput
from . import arrow_files, delphi_caches, numpy_files, safetensors_files, torch_files
from .base import ShardPath

DENSE_READERS: tuple[ModuleType, ...] = (safetensors_files, numpy_files, torch_files, arrow_files)
SPARSE_READERS: tuple[ModuleType, ...] = (delphi_caches,)
READERS: dict[str, ModuleType] = {fmt: r for r in (*DENSE_READERS, *SPARSE_READERS) for fmt in r.FORMATS}
InputFormat = Literal["safetensors", "npy", "npz", "torch", "arrow", "delphi"]  # the readers' formats, in order
INPUT_FORMATS: tuple[InputFormat, ...] = get_args(InputFormat)
SPARSE_FORMATS = tuple(fmt for r in SPARSE_READERS for fmt in r.FORMATS)
SUFFIX_FORMATS: dict[str, str] = {
    suffix: fmt for r in (*DENSE_READERS, *SPARSE_READERS) for suffix, fmt in r.SUFFIXES.items()
}
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
