"""safetensors files, read from their header: every tensor lies contiguously at a known offset."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np

from ..dtypes import ITEMSIZE
from ..errors import BadInput
from .base import ShardPath, TensorEntry, TensorSlab, mapped_chunks, open_shard, shard_size

FORMAT = "safetensors"
FORMATS = (FORMAT,)
SUFFIXES = {".safetensors": FORMAT}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
COUNTS_FORMAT = "nact-counts"  # the metadata "format" of the safetensors files nact saves counts in


def read_header(path: ShardPath) -> list[TensorEntry]:
    """The tensors of a safetensors file, each checked against the file's size."""
    try:
        with open_shard(path) as f:
            size = shard_size(f)
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
    header = load_json(raw, path, "safetensors header")
    if not isinstance(header, dict):
        raise BadInput(path, "corrupt safetensors header: not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadInput(path, "corrupt safetensors header: __metadata__ is not a map of strings")
    data_start = 8 + header_len
    entries = []
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(_whole(n) for n in info["shape"])
            begin, end = (_whole(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise BadInput(path, f"corrupt safetensors header: bad entry for tensor {key!r}") from None
        if len(shape) > MAX_DIMENSIONS or not 0 <= begin <= end:
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
        entries.append(TensorEntry(path, key, dtype, shape, FORMAT, offset=data_start + begin))
        spans.append((begin, end, key))
    at = 0  # as the safetensors library: tensors lie one after another, and fill the data exactly
    for begin, end, key in sorted(spans):
        if begin != at:
            problem = "overlaps another tensor" if begin < at else f"leaves a gap before byte {begin}"
            raise BadInput(path, f"corrupt safetensors header: the data of tensor {key!r} {problem}")
        at = end
    if data_start + at != size:
        raise BadInput(
            path,
            f"corrupt safetensors header: the tensors hold {at} bytes, the file has {size - data_start} after its header",
        )
    return entries


MAX_DIMENSIONS = 64


def _whole(value: object) -> int:
    """A non-negative JSON integer (``64.9``, ``1e400``, ``true`` and ``-1`` are not)."""
    if type(value) is not int or value < 0:
        raise ValueError(value)
    return value


def load_json(raw: bytes | str, path: ShardPath, what: str) -> object:
    """JSON text of a header or metadata, refused (never crashed on) when corrupt or nested too
    deep for the parser (its RecursionError)."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        problem = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise BadInput(path, f"corrupt {what}: {problem}") from None


def entries(paths: list[ShardPath]) -> list[TensorEntry]:
    return [e for path in paths for e in read_header(path)]


def chunks(slab: TensorSlab, chunk_rows: int) -> Iterator[np.ndarray]:
    """Rows of a tensor through a read-only map (the engine maps windows itself)."""
    return mapped_chunks(slab, chunk_rows)


def read_metadata(path: ShardPath) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file (header only), or None if there is none."""
    try:
        with open_shard(path) as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


def is_counts_file(path: ShardPath) -> bool:
    """Whether ``path`` is a safetensors file that nact saved counts in (reads the header only)."""
    return (read_metadata(path) or {}).get("format") == COUNTS_FORMAT
