"""Objects in a store, as paths, and what one scan learns of them.

A URL becomes a ``RemotePath``: a path whose name, suffix, parent and natural order work as a
file's do (so components group as for files), whose ``str()`` is the URL as nact shows and
records it (credentials, and an http(s) query, left out: see ``urls``; only requests use the
whole URL), and which no local file call can open. What a listing or a HEAD request said of
each object (size, ETag, last modified), each object's first block, and the windows fetched
ahead belong to a ``Session``: one per scan (``session()``, entered by every public call that
reads objects: ``discover``, ``read_entries``, ``plan_for``, ``count``, ``scan``, ``run_scan``,
``inspect``, ``audit``; a call inside another takes the session already open), so that planning
reads no object twice, an audit records what it counted, and a long-lived process never sees
what an earlier scan learned. Outside a session, ``info`` and ``read_range`` ask the store afresh; what lives as long
as a session (fetches begun ahead, the check that no object changed) refuses to run outside one.
A session opened on the main thread is stopped by SIGINT and SIGTERM (which then do what they
did): the requests in flight on every thread end at once.

Credentials and endpoints come the standard way: the AWS environment and config files
(``AWS_ENDPOINT_URL`` for S3-compatible stores), ``HF_TOKEN`` for the Hub; or in the URL.
"""

from __future__ import annotations

import contextvars
import io
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..errors import BadInput
from . import ranges, urls
from .requests import ask, filesystem, key_of, protocol, stop_on_signals

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
HEADER_BLOCK = 1 << 16  # headers are read through a small buffer: a few requests, not a whole object
IO_THREADS = 8  # range requests in flight by default: windows are fetched and counted on as many threads
WINDOW_BYTES = 16 << 20  # one range request: large enough to amortize a round trip, small for memory

Plan = TypeVar("Plan")


def is_url(text: str) -> bool:
    return _URL.match(text) is not None


def _shown(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(urls.shown(a) if isinstance(a, str) else a for a in args)


class RemotePath(PurePosixPath):
    """An object's URL, as a path. ``str()`` gives the URL as shown (``urls``: no credentials,
    no http(s) query), which is all the path holds; ``os.fspath()`` refuses it."""

    # what the URL hides is taken out before the path is made of it (kept by ``urls`` for requests)
    if sys.version_info >= (3, 12):

        def __init__(self, *args: Any) -> None:
            super().__init__(*_shown(args))

    else:

        def __new__(cls, *args: Any) -> RemotePath:
            return super().__new__(cls, *_shown(args))

    def __str__(self) -> str:
        text = super().__str__()  # PurePosixPath folds "s3://b/k" into "s3:/b/k"
        scheme, sep, rest = text.partition(":/")
        return f"{scheme}://{rest}" if sep else text

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
        return protocol(str(self))

    # What readers ask of a file, answered from the scan's listing or by a request.
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
        return bool(current().objects_under(self))

    def exists(self) -> bool:
        return self.is_dir() or self.is_file()

    def read_bytes(self) -> bytes:
        return read_range(self, 0, info(self).size)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


def as_path(text: str) -> Path | RemotePath:
    """A command-line path: a ``RemotePath`` for a URL, else a local ``Path``."""
    if is_url(text):
        if text.startswith("file://"):
            return Path(text[len("file://") :])
        return RemotePath(text)
    return Path(text)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store said of an object: its size, its version tag (ETag or last modified), its
    modification time in ns (0 if the store gives none) and its ETag ("" if it gives none), on
    which every range request of the scan is conditional."""

    size: int
    tag: str
    modified_ns: int
    etag: str = ""


def _info_of(detail: dict[str, Any]) -> ObjectInfo:
    # a version tag: S3's and HTTP's ETag, else what other stores give (GCS, the Hugging Face Hub)
    tags = ("ETag", "etag", "Content-MD5", "Digest", "md5Hash", "generation", "blob_id", "VersionId")
    tag = next((str(detail[k]) for k in tags if detail.get(k)), "")
    modified = detail.get("LastModified") or detail.get("Last-Modified") or detail.get("mtime")
    ns = 0
    if isinstance(modified, datetime):
        ns = int(modified.timestamp() * 1e9)
    elif isinstance(modified, (int, float)):
        ns = int(modified * 1e9)
    elif isinstance(modified, str):
        from email.utils import parsedate_to_datetime  # 6 ms of every scan's start-up, for a few stores

        try:
            ns = int(parsedate_to_datetime(modified).timestamp() * 1e9)
        except (TypeError, ValueError):
            ns = 0
    if not tag and isinstance(modified, str):
        tag = modified
    size = detail.get("size")
    etag = detail.get("ETag") or detail.get("etag") or ""
    return ObjectInfo(int(size) if size is not None else -1, str(tag), ns, str(etag))


@dataclass
class Session:
    """What one scan learned of remote objects, and the requests it has in flight."""

    infos: dict[str, ObjectInfo] = field(default_factory=dict)  # by URL: as listed, or as a HEAD said
    heads: dict[str, bytes] = field(default_factory=dict)  # by URL: the first HEADER_BLOCK bytes
    plans: dict[str, object] = field(default_factory=dict)  # by URL: what a reader planned of it (see ``planned``)
    ahead: dict[tuple[str, int, int], Future[bytes]] = field(default_factory=dict)  # ranges fetched early
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: threading.Event = field(default_factory=threading.Event)  # set: requests in flight end at once
    _pool: ThreadPoolExecutor | None = None

    def info(self, path: RemotePath, refresh: bool = False) -> ObjectInfo:
        """Size and version tag of the object ``path`` (from the listing, or a HEAD request)."""
        with self.lock:
            known = self.infos.get(str(path))
        if known is not None and not refresh:
            return known
        fs = filesystem(path)
        key = key_of(fs, path)
        if refresh:
            fs.invalidate_cache(key)
        detail = ask(path, fs, "info", key, stop=self.stopped)
        if detail.get("type") == "directory":
            raise BadInput(path, "is a folder (a prefix), not an object")
        found = _info_of(detail)
        if found.size < 0:
            raise BadInput(path, "the server does not say the object's size: it cannot be read by ranges")
        with self.lock:
            self.infos[str(path)] = found
        return found

    def listing(self, path: RemotePath) -> tuple[list[RemotePath], int]:
        """The objects ``path`` names: itself if it is an object, else every object under it as a
        prefix (folder), hidden ones (a dot name anywhere below ``path``) left out and counted.
        Nothing found is an error naming ``path``. Web servers list nothing: a URL there is one
        object."""
        fs = filesystem(path)
        key = key_of(fs, path).rstrip("/")
        missing: BadInput | None = None
        try:
            detail = ask(path, fs, "info", key, stop=self.stopped)
        except BadInput as e:
            if path.protocol in ("http", "https"):
                raise
            detail, missing = None, e
        if detail is not None and detail.get("type") != "directory":
            self._remember(path, detail)
            return [path], 0
        found = ask(path, fs, "find", key, detail=True, withdirs=False, stop=self.stopped)
        if not found:
            raise missing if missing is not None else BadInput(path, "no objects under this prefix")
        objects, hidden = [], 0
        for name, listed in sorted(found.items()):
            if listed.get("type") == "directory" or not name.startswith(key + "/"):
                continue
            below = name[len(key) + 1 :]
            if any(part.startswith(".") for part in below.split("/")):
                hidden += 1
                continue
            child = path.joinpath(*below.split("/"))
            self._remember(child, listed)
            objects.append(child)
        return objects, hidden

    def _remember(self, path: RemotePath, detail: dict[str, Any]) -> None:
        """Keep what a listing said of an object; ask the object itself where the listing did not
        say its size (web servers' index pages)."""
        found = _info_of(detail)
        if found.size < 0:
            self.info(path)
            return
        with self.lock:
            self.infos[str(path)] = found

    def objects_under(self, folder: RemotePath) -> dict[str, ObjectInfo]:
        """The listed objects below the prefix ``folder``, by URL."""
        below = str(folder).rstrip("/") + "/"
        with self.lock:
            return {url: found for url, found in sorted(self.infos.items()) if url.startswith(below)}

    def head_or_range(self, path: RemotePath, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)``: from the object's first block (fetched once) when they lie
        in it, else by a range request."""
        if stop > HEADER_BLOCK:
            return self.read_range(path, start, stop)
        with self.lock:
            head = self.heads.get(str(path))
        if head is None:
            head = self.read_range(path, 0, min(self.info(path).size, HEADER_BLOCK))
            with self.lock:
                self.heads[str(path)] = head
        return head[start:stop]

    def read_range(self, path: RemotePath, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the object ``path``, by one range request (tried again after
        transient failures), or from a fetch begun ahead. Fewer bytes than asked means the object
        changed: an error."""
        with self.lock:
            early = self.ahead.pop((str(path), start, stop), None)
        if early is not None:
            return early.result()
        return fetch(path, start, stop, self._etag(path), self.stopped)

    def _etag(self, path: RemotePath) -> str:
        """The ETag a range request of ``path`` is conditional on: as planned in this session."""
        return self.info(path).etag

    def planned(self, path: RemotePath, kind: type[Plan]) -> Plan | None:
        """What a reader planned of the object ``path`` (a ``kind``), if one has in this session."""
        with self.lock:
            found = self.plans.get(str(path))
        return found if isinstance(found, kind) else None

    def keep_plan(self, path: RemotePath, plan: object) -> None:
        """Keep what a reader planned of ``path``, for ``planned`` to give back."""
        with self.lock:
            self.plans[str(path)] = plan

    def fetch_ahead(self, path: RemotePath, start: int, stop: int, threads: int = IO_THREADS) -> None:
        """Begin fetching bytes ``[start, stop)`` in the background; ``read_range`` of the same range
        takes them (for a scan that counts on one thread: the next windows arrive meanwhile)."""
        self._check_running("fetch_ahead")
        etag = self._etag(path)
        with self.lock:
            if (str(path), start, stop) in self.ahead:
                return
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor  # 3 ms of every scan's start-up

                self._pool = ThreadPoolExecutor(threads, thread_name_prefix="nact-ahead")
            self.ahead[(str(path), start, stop)] = self._pool.submit(fetch, path, start, stop, etag, self.stopped)

    def check_unchanged(self, planned: Mapping[RemotePath, ObjectInfo], threads: int = IO_THREADS) -> None:
        """Each object still has the size and version tag ``planned`` says it had when it was
        planned; one that changed during the scan is an error (its counts may mix two versions)."""
        self._check_running("check_unchanged")

        def check(path: RemotePath) -> None:
            before = planned[path]
            now = self.info(path, refresh=True)
            if (before.size, before.tag) != (now.size, now.tag):
                what = (
                    f"size {before.size} -> {now.size} bytes"
                    if before.size != now.size
                    else f"ETag {before.tag} -> {now.tag}"
                )
                raise BadInput(path, f"changed during the scan ({what}): scan it again")

        each(list(planned), check, threads)

    def _check_running(self, what: str) -> None:
        """Refuse (a bug) to begin what must end with this session when it is not the one running:
        outside ``session()``, ``current()`` gives a passing session that nothing reads again."""
        if _active.get() is not self:
            raise RuntimeError(f"Session.{what} outside its session: call it inside `with session():`")

    def close(self) -> None:
        """Cancel what was fetched ahead and not taken; end the requests in flight; stop the
        fetching threads."""
        self.stopped.set()
        with self.lock:
            pending, self.ahead = list(self.ahead.values()), {}
            pool, self._pool = self._pool, None
        for future in pending:
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


_active: contextvars.ContextVar[Session | None] = contextvars.ContextVar("nact_remote_session", default=None)


@contextmanager
def session() -> Iterator[Session]:
    """The remote session of the scan that runs: the one already open, or a new one that closes
    when the block ends (the outermost scan owns it)."""
    active = _active.get()
    if active is not None:
        yield active
        return
    made = Session()
    token = _active.set(made)
    restore = stop_on_signals(made.stopped)
    try:
        yield made
    finally:
        restore()
        _active.reset(token)
        made.close()


def current() -> Session:
    """The session of the scan that runs; outside one, a session of its own (nothing kept)."""
    return _active.get() or Session()


def in_this_context(call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` bound to a copy of the caller's context, to run on another thread (which starts
    with an empty one): the thread sees the scan's session."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(call, *args, **kwargs)


def each(paths: list[RemotePath], call: Callable[[RemotePath], object], threads: int = IO_THREADS) -> None:
    """``call(path)`` for every path, ``threads`` at a time (requests wait on the network, not
    on each other), each in the caller's session; the first error is raised."""
    if len(paths) < 2:
        for path in paths:
            call(path)
        return
    from concurrent.futures import ThreadPoolExecutor  # as in Session.fetch_ahead

    with ThreadPoolExecutor(min(threads, len(paths)), thread_name_prefix="nact-io") as pool:
        futures = [pool.submit(in_this_context(call), path) for path in paths]
        for future in futures:
            future.result()


def fetch(path: RemotePath, start: int, stop: int, etag: str = "", stopped: threading.Event | None = None) -> bytes:
    """Bytes ``[start, stop)`` of an object by one range request conditional on ``etag`` (tried
    again after transient failures, ended by ``stopped``: see ``ranges``); fewer than asked is
    an error."""
    if stop <= start:
        return b""  # fsspec reads a whole object for an empty range
    fs = filesystem(path)
    data = ranges.get(path, fs, key_of(fs, path), start, stop, etag, stopped)
    if len(data) != stop - start:
        raise BadInput(
            path,
            f"changed during the scan, or the server ignores range requests: bytes {start}-{stop} gave {len(data)} bytes",
        )
    return data


# The session's requests, for readers: the scan's session answers them.
def info(path: RemotePath, refresh: bool = False) -> ObjectInfo:
    return current().info(path, refresh)


def read_range(path: RemotePath, start: int, stop: int) -> bytes:
    return current().read_range(path, start, stop)


class _Ranges(io.RawIOBase):
    """An object as a seekable raw file: each read is a range request; its first block comes
    from the session (headers are read by detection, then by planning)."""

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
            buffer[:n] = current().head_or_range(self.path, self.pos, self.pos + n)
            self.pos += n
        return n


class RemoteFile(io.BufferedReader):
    """A seekable binary file over range requests, with the object's ``size``."""

    def __init__(self, path: RemotePath) -> None:
        self.size = info(path).size
        super().__init__(_Ranges(path, self.size), buffer_size=HEADER_BLOCK)


def prefetch_heads(paths: list[RemotePath], threads: int = IO_THREADS) -> None:
    """Fetch the first block of every object at once: detection and planning then read headers
    from memory, not one round trip after another."""
    each(paths, lambda p: current().head_or_range(p, 0, 0), threads)


class RemoteArray:
    """A tensor that lies contiguously in an object (a safetensors entry): rows sliced from it
    are fetched by one range request. Enough of an array for the sparse readers' chunk loop."""

    def __init__(self, path: RemotePath, offset: int, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.offset, self.shape = path, offset, tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim, self.itemsize = len(self.shape), self.dtype.itemsize
        self.row_bytes = self.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("rows of a remote array are read as one range")
        stop = max(start, stop)
        data = read_range(self.path, self.offset + start * self.row_bytes, self.offset + stop * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))
