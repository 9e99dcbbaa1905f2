"""numpy ``.npy`` and ``.npz`` files.

A ``.npy`` file, and a member stored uncompressed in a ``.npz``, hold their rows contiguously at
a known offset, so the engine maps them like safetensors. A compressed ``.npz`` member is
decompressed as a stream, chunk by chunk, and never loaded whole.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import IO

import numpy as np

from ..dtypes import NUMPY_NAMES, UNSIGNED_VIEW
from ..errors import BadInput, first_line
from .base import COMPRESSED, FORTRAN, SWAPPED, ShardPath, TensorEntry, TensorSlab, local_file, open_shard, shard_size

NPY, NPZ = "npy", "npz"
FORMATS = (NPY, NPZ)
SUFFIXES = {".npy": NPY, ".npz": NPZ}
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then file name and extra field lengths


def read_npy_header(f: IO[bytes], path: ShardPath, what: str = "") -> tuple[str, tuple[int, ...], bool, bool]:
    """dtype name, shape, Fortran order and big-endianness of the ``.npy`` stream ``f``, left at
    the data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except Exception as e:  # numpy's header parser raises many kinds (ValueError, SyntaxError, TokenError, ...)
        raise BadInput(path, f"{what}not a valid .npy array: {first_line(e)}") from None
    if any(type(n) is not int or n < 0 for n in shape) or len(shape) > 64:
        raise BadInput(path, f"{what}not a valid .npy array: shape {shape} is not a list of sizes")
    swapped = dtype.byteorder == ">" and dtype.itemsize > 1
    name = NUMPY_NAMES.get(dtype.name)
    if name is None:
        raise BadInput(path, f"{what}dtype {dtype} is not supported (floating, integer or bool arrays only)")
    return name, tuple(int(n) for n in shape), bool(fortran and len(shape) > 1), swapped


def _big_endian(entry: TensorEntry) -> TensorEntry:
    """A big-endian entry: read through its reader, which swaps the bytes (mapped rows become
    ``SWAPPED``)."""
    storage = SWAPPED if entry.storage == "mapped" else entry.storage
    return replace(entry, byteswap=True, storage=storage, note=", ".join(filter(None, [entry.note, "big-endian"])))


def npy_entries(path: ShardPath) -> list[TensorEntry]:
    try:
        with open_shard(path) as f:
            dtype, shape, fortran, swapped = read_npy_header(f, path)
            offset = f.tell()
            size = shard_size(f)
    except OSError as e:
        raise BadInput(path, f"cannot read: {e.strerror or e}") from None
    entry = TensorEntry(path, path.stem, dtype, shape, NPY, offset=offset, from_file=True)
    if offset + entry.nbytes > size:
        raise BadInput(path, f"truncated: the array needs {offset + entry.nbytes} bytes but the file has {size}")
    if fortran:  # columns are contiguous, rows are not: gather rows chunk by chunk
        entry = replace(entry, offset=None, note="Fortran order", storage=FORTRAN)
    return [_big_endian(entry) if swapped else entry]


def npz_entries(path: ShardPath) -> list[TensorEntry]:
    import zipfile  # ~4 ms that a scan of other formats does not pay: .npz files only

    out = []
    try:
        with open_shard(path) as raw, zipfile.ZipFile(raw) as z:
            members = [i.filename for i in z.infolist()]
            if len(set(members)) != len(members):
                twice = sorted({m for m in members if members.count(m) > 1})
                raise BadInput(path, f"member {twice[0]!r} appears twice: which one to read is unknown")
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                if info.flag_bits & 0x1:
                    raise BadInput(path, f"member {info.filename!r} is encrypted")
                key = info.filename[: -len(".npy")]
                what = f"member {info.filename!r}: "
                if info.compress_type == zipfile.ZIP_STORED:
                    raw.seek(info.header_offset)
                    signature, name_len, extra_len = ZIP_LOCAL_HEADER.unpack(raw.read(ZIP_LOCAL_HEADER.size))
                    if signature != b"PK\x03\x04":
                        raise BadInput(path, f"{what}corrupt zip local header")
                    start = info.header_offset + ZIP_LOCAL_HEADER.size + name_len + extra_len
                    raw.seek(start)
                    dtype, shape, fortran, swapped = read_npy_header(raw, path, what)
                    data = raw.tell()
                    entry = TensorEntry(path, key, dtype, shape, NPZ, offset=data, member=info.filename)
                    if data + entry.nbytes > start + info.file_size:
                        raise BadInput(path, f"{what}truncated: the array is larger than the member")
                    if fortran:
                        entry = TensorEntry(
                            path, key, dtype, shape, NPZ, member=info.filename, note="Fortran order", storage=FORTRAN
                        )
                else:
                    with z.open(info) as member:
                        dtype, shape, fortran, swapped = read_npy_header(member, path, what)
                    if fortran:
                        raise BadInput(path, f"{what}a compressed Fortran-ordered array cannot be streamed by rows")
                    entry = TensorEntry(
                        path, key, dtype, shape, NPZ, member=info.filename, note="compressed", storage=COMPRESSED
                    )
                out.append(_big_endian(entry) if swapped else entry)
    except (zipfile.BadZipFile, struct.error, EOFError, NotImplementedError, RuntimeError, zlib.error, ValueError) as e:
        raise BadInput(path, f"not a valid .npz archive: {first_line(e)}") from None
    except OSError as e:
        raise BadInput(path, f"cannot read: {e.strerror or e}") from None
    return out


def entries(paths: list[ShardPath]) -> list[TensorEntry]:
    return [e for p in paths for e in (npz_entries(p) if p.suffix == ".npz" else npy_entries(p))]


def chunks(slab: TensorSlab, chunk_rows: int) -> Iterator[np.ndarray]:
    """Rows of an entry that is not mapped directly: Fortran order, or a compressed member."""
    entry = slab.entry
    unsigned = UNSIGNED_VIEW[slab.row_bytes // slab.width]
    swap = entry.byteswap
    if entry.storage == SWAPPED:
        rows = np.memmap(
            local_file(entry.path),
            dtype=unsigned,
            mode="r",
            offset=entry.offset or 0,
            shape=(slab.num_rows, slab.width),
        )
        for start in range(0, slab.num_rows, chunk_rows):
            yield rows[start : start + chunk_rows].byteswap()
        return
    if entry.storage == FORTRAN:
        for block in _fortran_chunks(slab, chunk_rows, unsigned):
            yield block.byteswap() if swap else block
        return
    import zipfile  # ~4 ms that a scan of other formats does not pay: .npz files only

    try:
        with open_shard(entry.path) as raw, zipfile.ZipFile(raw) as z, z.open(entry.member or "") as member:
            yield from _member_rows(slab, member, chunk_rows, unsigned, swap)
    # what zipfile raises on a member it cannot read: corrupt, encrypted, an unknown method
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError, RuntimeError, ValueError) as e:
        raise BadInput(entry.path, f"member {entry.member!r}: corrupt compressed data: {first_line(e)}") from None


def _member_rows(
    slab: TensorSlab, member: IO[bytes], chunk_rows: int, unsigned: type, swap: bool
) -> Iterator[np.ndarray]:
    entry = slab.entry
    read_npy_header(member, entry.path)
    for start in range(0, slab.num_rows, chunk_rows):
        rows = min(chunk_rows, slab.num_rows - start)
        data = member.read(rows * slab.row_bytes)
        if len(data) < rows * slab.row_bytes:
            raise BadInput(entry.path, f"member {entry.member!r}: truncated compressed data")
        values: np.ndarray = np.frombuffer(data, dtype=unsigned).reshape(rows, slab.width)
        yield values.byteswap() if swap else values


def _fortran_chunks(slab: TensorSlab, chunk_rows: int, unsigned: type) -> Iterator[np.ndarray]:
    entry = slab.entry
    path = local_file(entry.path)
    if entry.format == NPY:
        with open(path, "rb") as f:
            read_npy_header(f, entry.path)
            offset = f.tell()
    else:
        import zipfile  # ~4 ms that a scan of other formats does not pay: .npz files only

        with zipfile.ZipFile(path) as z, open(path, "rb") as raw:
            info = z.getinfo(entry.member or "")
            raw.seek(info.header_offset)
            _, name_len, extra_len = ZIP_LOCAL_HEADER.unpack(raw.read(ZIP_LOCAL_HEADER.size))
            raw.seek(info.header_offset + ZIP_LOCAL_HEADER.size + name_len + extra_len)
            read_npy_header(raw, entry.path)
            offset = raw.tell()
    # [N, ..., F] in Fortran order is [F, ..., N] in C order: the first axis varies fastest
    array = np.memmap(path, dtype=unsigned, mode="r", offset=offset, shape=entry.shape, order="F")
    features = entry.shape[-1]
    # batch axes merged (a view, in Fortran order); a component axis, if any, kept apart
    inner = (features,) if slab.width == features else (slab.width // features, features)
    rows_view = array.reshape((slab.num_rows, *inner), order="F")
    for start in range(0, slab.num_rows, chunk_rows):
        block = np.ascontiguousarray(rows_view[start : start + chunk_rows])
        yield block.reshape(block.shape[0], slab.width)
