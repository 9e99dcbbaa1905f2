"""Requests to a store and how they fail: the fsspec filesystem of a URL's protocol, and every
request tried again after transient failures (timeouts, 5xx, throttling) with backoff, a
permanent answer (no such object, access denied) becoming one line that names the URL.

fsspec and its filesystems (s3fs for ``s3://``, aiohttp for ``https://``) are the optional extra
``nact[remote]``, imported only when a URL is read.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import PurePath
from typing import Any, TypeVar

from ..errors import BadInput, first_line

TRIES = 6  # a transient failure (timeout, 5xx, throttling) is tried again, up to this many tries
BACKOFF_S = 0.25  # the first wait; each next one doubles, up to MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0

T = TypeVar("T")


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(path: PurePath) -> Any:
    """The fsspec filesystem of ``path``'s protocol; a missing extra is a one-line error."""
    try:
        import fsspec  # the remote extra: only URLs need it
    except ImportError:
        raise BadInput(
            path, "reading remote caches needs fsspec: pip install fsspec s3fs aiohttp (nact's remote extra)"
        ) from None
    try:
        return fsspec.filesystem(protocol(str(path)))
    except (ImportError, ValueError) as e:
        raise BadInput(path, f"cannot read {protocol(str(path))}:// URLs: {first_line(e)}") from None


def key_of(fs: Any, path: PurePath) -> str:
    """The object's name as ``fs`` wants it (the URL without its protocol)."""
    return str(fs._strip_protocol(str(path)))


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
    words = (
        "Timeout",
        "SlowDown",
        "Throttl",
        "ServiceUnavailable",
        "InternalError",
        "ServerDisconnected",
        "Connection",
        "reduce your request rate",
        "503",
        "502",
        "504",
        "500 ",
    )
    return any(w in text for w in words)


def describe(path: PurePath, error: BaseException) -> BadInput:
    """A permanent failure as one line naming the URL."""
    if isinstance(error, FileNotFoundError):
        return BadInput(path, "no such object")
    if isinstance(error, PermissionError):
        return BadInput(path, f"access denied: {first_line(error)}")
    return BadInput(path, f"cannot read: {type(error).__name__}: {first_line(error)}")


def retrying(path: PurePath, call: Callable[[], T], tries: int | None = None) -> T:
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
        except Exception as e:
            if not transient(e):
                raise describe(path, e) from None
            if attempt == tries:
                raise BadInput(path, f"cannot read after {tries} tries: {type(e).__name__}: {first_line(e)}") from None
            time.sleep(wait)
            wait = min(wait * 2, MAX_BACKOFF_S)
    raise AssertionError("unreachable")
