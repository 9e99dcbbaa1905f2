"""Content digests of counted shards: what an audit compares when a shard's size or time moved.

A file's digest is xxHash's XXH3-128 (the ``xxhash`` package) of the XXH3-128 digests of its
4 MiB blocks, in order: the same bytes give the same digest however they are read. A scan
that records digests (an audit) hashes each block of a window right after counting the rows
that cover it, while they are in the CPU's cache, so a block is read from memory once
(``Blocks.count_and_hash``); what no window covered (a header, a tensor not counted) is read
afterwards. A folder counted as one unit (a delphi module) is digested file by file, with
their names."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from .errors import BadInput

BLOCK = 4 * 1024 * 1024
ALGORITHM = "xxh3-128/4MiB"  # recorded with each digest, so that another can follow


class Blocks:
    """The block digests of files found while they are counted (thread-safe), and the digest of
    each file with the blocks no window covered read from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[str, dict[int, bytes]] = {}

    def count_and_hash(
        self, path: str, data: memoryview, at: int, row_bytes: int, count: Callable[[int, int], None]
    ) -> None:
        """Count the rows of ``data`` (the file's bytes from offset ``at``, whole rows of
        ``row_bytes``) with ``count(first_row, end_row)``, a block's worth at a time, and hash each
        whole block among them right after the rows that cover it were counted."""
        end = at + len(data)
        first = -(-at // BLOCK)  # the first block that starts inside the data
        counted = 0  # rows counted so far
        found = {}
        rows = len(data) // row_bytes if row_bytes else 0
        for block in range(first, end // BLOCK):
            upto = min(rows, -(-((block + 1) * BLOCK - at) // row_bytes))  # rows that cover the block
            if upto > counted:
                count(counted, upto)
                counted = upto
            start = block * BLOCK - at
            found[block] = xxhash.xxh3_128(data[start : start + BLOCK]).digest()
        if counted < rows:
            count(counted, rows)
        with self._lock:
            self._found.setdefault(path, {}).update(found)

    def hashed(self, path: Path) -> int:
        """How many of the file's blocks were hashed while it was counted."""
        with self._lock:
            return len(self._found.get(str(path), {}))

    def digest(self, path: Path) -> str:
        """``xxh3-128/4MiB:HEX`` of the file (or folder) ``path``, with the blocks found while it
        was counted."""
        with self._lock:
            known = dict(self._found.get(str(path), {}))
        if path.is_dir():
            h = xxhash.xxh3_128()
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(str(file.relative_to(path)).encode("utf-8", "surrogateescape") + b"\0")
                h.update(bytes.fromhex(_file_digest(file, {})))
            return f"{ALGORITHM}:{h.hexdigest()}"
        return f"{ALGORITHM}:{_file_digest(path, known)}"


def _file_digest(path: Path, known: dict[int, bytes]) -> str:
    h = xxhash.xxh3_128()
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                return h.hexdigest()
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    for block in range(-(-size // BLOCK)):
                        part = known.get(block)
                        if part is None:
                            part = xxhash.xxh3_128(view[block * BLOCK : (block + 1) * BLOCK]).digest()
                        h.update(part)
                finally:
                    view.release()
    except OSError as e:
        raise BadInput(path, f"cannot read: {e.strerror or e}") from None
    return h.hexdigest()


def digest(path: Path) -> str:
    """The digest of the file or folder ``path``, read whole."""
    return Blocks().digest(path)


def digests(paths: list[Path], blocks: Blocks | None = None, threads: int = 2) -> list[str]:
    """The digest of each path (with the blocks found while counting), ``threads`` at a time."""
    found = blocks or Blocks()
    if len(paths) < 2 or threads < 2:
        return [found.digest(p) for p in paths]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(found.digest, paths))
