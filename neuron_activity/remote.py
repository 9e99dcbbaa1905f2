"""Caches where they live: objects in S3-compatible stores, on web servers or any fsspec
filesystem, read by range requests (never downloaded whole).

A URL becomes a ``RemotePath``: a path whose name, suffix, parent and natural order work as a
file's do (so components group as for files), whose ``str()`` is the URL, and which no local
file call can open. What the listing or a HEAD request said of each object (size, ETag, last
modified) is kept here, so that planning reads no object twice, a scan notices an object that
changed under it, and an audit records what it counted.

fsspec and its filesystems (s3fs for ``s3://``, aiohttp for ``https://``) are the optional extra
``nact[remote]``, imported only when a URL is given. Credentials and endpoints come the standard
way: the AWS environment and config files (``AWS_ENDPOINT_URL`` for S3-compatible stores),
``HF_TOKEN`` for the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass
import errno
import io
import re
import threading
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, TypeVar

from .errors import BadInput, first_line

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
TRIES = 6  # a transient failure (timeout, 5xx, throttling) is tried again, up to this many tries
BACKOFF_S = 0.25  # the first wait; each next one doubles, up to MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0
HEADER_BLOCK = 1 << 16  # headers are read through a small buffer: a few requests, not a whole object
IO_THREADS = 8  # range requests in flight by default: windows are fetched and counted on as many threads
WINDOW_BYTES = 16 << 20  # one range request: large enough to amortize a round trip, small for memory

T = TypeVar("T")


def is_url(text: str) -> bool:
    return _URL.match(text) is not None


class RemotePath(PurePosixPath):
    """An object's URL, as a path. ``str()`` gives the URL back; ``os.fspath()`` refuses it."""

    def __str__(self) -> str:
        text = super().__str__()  # PurePosixPath folds "s3://b/k" into "s3:/b/k"
        scheme, _, rest = text.partition(":/")
        return f"{scheme}://{rest}" if _ else text

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __fspath__(self) -> str:
        raise TypeError(f"{self} is a remote object, not a local file")

    def absolute(self) -> RemotePath:
        return self

    def resolve(self) -> RemotePath:
        return self

    @property
    def protocol(self) -> str:
        return str(self).split("://", 1)[0].lower()

    # What readers ask of a file, answered from the listing or by a request.
    def is_file(self) -> bool:
        try:
            info(self)
        except BadInput as e:
            if e.problem.startswith(("no such object", "is a folder")):
                return False
            raise
        return True

    def is_dir(self) -> bool:
        """A prefix that holds listed objects."""
        below = str(self).rstrip("/") + "/"
        with _lock:
            return any(url.startswith(below) for url in _infos)

    def exists(self) -> bool:
        return self.is_dir() or self.is_file()

    def read_bytes(self) -> bytes:
        return read_range(self, 0, info(self).size)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


def as_path(text: str) -> Any:
    """A command-line path: a ``RemotePath`` for a URL, else a local ``Path``."""
    from pathlib import Path

    if is_url(text):
        if text.startswith("file://"):
            return Path(text[len("file://"):])
        return RemotePath(text)
    return Path(text)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store said of an object: its size, its version tag (ETag or last modified) and
    its modification time in ns (0 if the store gives none)."""

    size: int
    tag: str
    modified_ns: int


_infos: dict[str, ObjectInfo] = {}
_lock = threading.Lock()


def filesystem(path: RemotePath) -> Any:
    """The fsspec filesystem of ``path``'s protocol; a missing extra is a one-line error."""
    try:
        import fsspec
    except ImportError:
        raise BadInput(path, "reading remote caches needs fsspec: pip install fsspec s3fs aiohttp (nact's remote extra)") from None
    try:
        return fsspec.filesystem(path.protocol)
    except (ImportError, ValueError) as e:
        raise BadInput(path, f"cannot read {path.protocol}:// URLs: {first_line(e)}") from None


def _key(fs: Any, path: RemotePath) -> str:
    return fs._strip_protocol(str(path))


_BUSY = (errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE)


def transient(error: BaseException) -> bool:
    """Whether a failed request may succeed when tried again (timeouts, 5xx, throttling), as
    opposed to a permanent answer (no such object, access denied, a bad request)."""
    cause = error.__cause__
    if isinstance(error, FileNotFoundError) and cause is not None and cause is not error:
        return transient(cause)  # fsspec's HTTP info says "not found" for any failure: the cause tells
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    if getattr(error, "errno", None) in _BUSY:  # s3fs's word for 503 SlowDown / ServiceUnavailable
        return True
    status = getattr(error, "status", None) or getattr(error, "status_code", None)
    if isinstance(status, int):
        return status in (408, 429) or status >= 500
    text = f"{type(error).__name__} {error}"
    words = ("Timeout", "SlowDown", "Throttl", "ServiceUnavailable", "InternalError", "ServerDisconnected",
             "Connection", "reduce your request rate", "503", "502", "504", "500 ")
    return any(w in text for w in words)


def _describe(path: RemotePath, error: BaseException) -> BadInput:
    if isinstance(error, FileNotFoundError):
        return BadInput(path, "no such object")
    if isinstance(error, PermissionError):
        return BadInput(path, f"access denied: {first_line(error)}")
    return BadInput(path, f"cannot read: {type(error).__name__}: {first_line(error)}")


def retrying(path: RemotePath, call: Callable[[], T], tries: int | None = None) -> T:
    """``call()``, tried again after transient failures with exponential backoff, at most
    ``tries`` (default ``TRIES``) times; a permanent failure, or the last transient one, is a
    ``BadInput`` naming ``path``."""
    tries = tries or TRIES
    wait = BACKOFF_S
    for attempt in range(1, tries + 1):
        try:
            return call()
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001 - every library error becomes one line
            if not transient(e):
                raise _describe(path, e) from None
            if attempt == tries:
                raise BadInput(path, f"cannot read after {tries} tries: {type(e).__name__}: {first_line(e)}") from None
            time.sleep(wait)
            wait = min(wait * 2, MAX_BACKOFF_S)
    raise AssertionError("unreachable")


def _info_of(detail: dict) -> ObjectInfo:
    # a version tag: S3's and HTTP's ETag, else what other stores give (GCS, the Hugging Face Hub)
    tag = next((str(detail[k]) for k in ("ETag", "etag", "Content-MD5", "Digest", "md5Hash", "generation",
                                         "blob_id", "VersionId") if detail.get(k)), "")
    modified = detail.get("LastModified") or detail.get("Last-Modified") or detail.get("mtime")
    ns = 0
    if hasattr(modified, "timestamp"):
        ns = int(modified.timestamp() * 1e9)
    elif isinstance(modified, (int, float)):
        ns = int(modified * 1e9)
    elif isinstance(modified, str):
        from email.utils import parsedate_to_datetime

        try:
            ns = int(parsedate_to_datetime(modified).timestamp() * 1e9)
        except (TypeError, ValueError):
            ns = 0
    if not tag and isinstance(modified, str):
        tag = modified
    size = detail.get("size")
    return ObjectInfo(int(size) if size is not None else -1, str(tag), ns)


def info(path: RemotePath, refresh: bool = False) -> ObjectInfo:
    """Size and version tag of the object ``path`` (from the listing, or a HEAD request)."""
    with _lock:
        known = _infos.get(str(path))
    if known is not None and not refresh:
        return known
    fs = filesystem(path)
    key = _key(fs, path)
    if refresh:
        fs.invalidate_cache(key)
    detail = retrying(path, lambda: fs.info(key))
    if detail.get("type") == "directory":
        raise BadInput(path, "is a folder (a prefix), not an object")
    found = _info_of(detail)
    if found.size < 0:
        raise BadInput(path, "the server does not say the object's size: it cannot be read by ranges")
    with _lock:
        _infos[str(path)] = found
    return found


def forget(path: RemotePath) -> None:
    """Drop what was learned of ``path`` and the objects under it (a new scan asks again)."""
    base = str(path).rstrip("/")
    with _lock:
        for known in (_infos, _heads):
            for url in [u for u in known if u == base or u.startswith(base + "/")]:
                del known[url]
        for key in [k for k in _ahead if k[0] == base or k[0].startswith(base + "/")]:
            _ahead.pop(key).cancel()


def listing(path: RemotePath) -> tuple[list[RemotePath], int]:
    """The objects ``path`` names: itself if it is an object, else every object under it as a
    prefix (folder), hidden ones (a dot name anywhere below ``path``) left out and counted.
    Nothing found is an error naming ``path``. Web servers list nothing: a URL there is one
    object."""
    fs = filesystem(path)
    key = _key(fs, path).rstrip("/")
    try:
        detail = retrying(path, lambda: fs.info(key))
    except BadInput as e:
        if path.protocol in ("http", "https"):
            raise
        detail, missing = None, e
    if detail is not None and detail.get("type") != "directory":
        _remember(path, detail)
        return [path], 0
    found = retrying(path, lambda: fs.find(key, detail=True, withdirs=False))
    if not found:
        raise missing if detail is None else BadInput(path, "no objects under this prefix")
    objects, hidden = [], 0
    for name, detail in sorted(found.items()):
        if detail.get("type") == "directory" or not name.startswith(key + "/"):
            continue
        below = name[len(key) + 1:]
        if any(part.startswith(".") for part in below.split("/")):
            hidden += 1
            continue
        child = path.joinpath(*below.split("/"))
        _remember(child, detail)
        objects.append(child)
    return objects, hidden


def _remember(path: RemotePath, detail: dict) -> None:
    """Keep what a listing said of an object; ask the object itself where the listing did not
    say its size (web servers' index pages)."""
    found = _info_of(detail)
    if found.size < 0:
        info(path)
        return
    with _lock:
        _infos[str(path)] = found


class _Ranges(io.RawIOBase):
    """An object as a seekable raw file: each read is a range request; its first block is
    fetched once per scan and kept (headers are read by detection, then by planning)."""

    def __init__(self, path: RemotePath, size: int) -> None:
        super().__init__()
        self.path, self.size, self.pos = path, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if n:
            buffer[:n] = _head_or_range(self.path, self.size, self.pos, self.pos + n)
            self.pos += n
        return n


class _Object(io.BufferedReader):
    size = 0


_heads: dict[str, bytes] = {}


def _head_or_range(path: RemotePath, size: int, start: int, stop: int) -> bytes:
    if stop <= HEADER_BLOCK:
        with _lock:
            head = _heads.get(str(path))
        if head is None:
            head = read_range(path, 0, min(size, HEADER_BLOCK))
            with _lock:
                _heads[str(path)] = head
        return head[start:stop]
    return read_range(path, start, stop)


def open_object(path: RemotePath) -> Any:
    """A seekable binary file over range requests, read in blocks of 64 KiB (for headers and
    zip directories); its ``size`` is the object's."""
    size = info(path).size
    f = _Object(_Ranges(path, size), buffer_size=HEADER_BLOCK)  # type: ignore[arg-type]
    f.size = size
    return f


_ahead: dict[tuple[str, int, int], Any] = {}  # (url, start, stop) -> the future of a fetch begun early
_ahead_pool: Any = None


def fetch_ahead(path: RemotePath, start: int, stop: int, threads: int = IO_THREADS) -> None:
    """Begin fetching bytes ``[start, stop)`` in the background; ``read_range`` of the same range
    takes them (for a scan that counts on one thread: the next windows arrive meanwhile)."""
    global _ahead_pool
    with _lock:
        if (str(path), start, stop) in _ahead:
            return
        if _ahead_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _ahead_pool = ThreadPoolExecutor(threads, thread_name_prefix="nact-ahead")
        _ahead[(str(path), start, stop)] = _ahead_pool.submit(_fetch, path, start, stop)


def read_range(path: RemotePath, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of the object ``path``, by one range request (tried again after
    transient failures), or from a fetch begun ahead. Fewer bytes than asked means the object
    changed: an error."""
    with _lock:
        early = _ahead.pop((str(path), start, stop), None)
    if early is not None:
        return early.result()
    return _fetch(path, start, stop)


def _fetch(path: RemotePath, start: int, stop: int) -> bytes:
    if stop <= start:
        return b""  # fsspec reads a whole object for an empty range
    fs = filesystem(path)
    key = _key(fs, path)
    data = retrying(path, lambda: fs.cat_file(key, start=start, end=stop))
    if len(data) != stop - start:
        raise BadInput(path, f"changed during the scan, or the server ignores range requests: bytes {start}-{stop} gave {len(data)} bytes")
    return data


def each(paths: list[RemotePath], call: Callable[[RemotePath], object], threads: int = IO_THREADS) -> None:
    """``call(path)`` for every path, ``threads`` at a time (requests wait on the network, not
    on each other); the first error is raised."""
    if len(paths) < 2:
        for path in paths:
            call(path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(paths)), thread_name_prefix="nact-io") as pool:
        for _ in pool.map(call, paths):
            pass


def prefetch_heads(paths: list[RemotePath], threads: int = IO_THREADS) -> None:
    """Fetch the first block of every object at once: detection and planning then read headers
    from memory, not one round trip after another."""
    each(paths, lambda p: _head_or_range(p, info(p).size, 0, 0), threads)


def objects_under(folder: RemotePath) -> dict[str, ObjectInfo]:
    """The listed objects below the prefix ``folder``, by URL."""
    below = str(folder).rstrip("/") + "/"
    with _lock:
        return {url: found for url, found in sorted(_infos.items()) if url.startswith(below)}


class RemoteArray:
    """A tensor that lies contiguously in an object (a safetensors entry): rows sliced from it
    are fetched by one range request. Enough of an array for the sparse readers' chunk loop."""

    def __init__(self, path: RemotePath, offset: int, shape: tuple[int, ...], dtype: Any) -> None:
        import numpy as np

        self.path, self.offset, self.shape = path, offset, tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim, self.itemsize = len(self.shape), self.dtype.itemsize
        self.row_bytes = self.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        self.flags = type("Flags", (), {"c_contiguous": True})()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> Any:
        import numpy as np

        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("rows of a remote array are read as one range")
        stop = max(start, stop)
        data = read_range(self.path, self.offset + start * self.row_bytes, self.offset + stop * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))


def check_unchanged(paths: list[RemotePath], threads: int = IO_THREADS) -> None:
    """Each object still has the size and version tag it had when it was planned; one that
    changed during the scan is an error (its counts may mix two versions)."""

    def check(path: RemotePath) -> None:
        with _lock:
            before = _infos.get(str(path))
        now = info(path, refresh=True)
        if before is not None and (before.size, before.tag) != (now.size, now.tag):
            what = f"size {before.size} -> {now.size} bytes" if before.size != now.size else f"ETag {before.tag} -> {now.tag}"
            raise BadInput(path, f"changed during the scan ({what}): scan it again")

    each(paths, check, threads)
