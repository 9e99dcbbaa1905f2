"""Requests to a store and how they fail: the fsspec filesystem of a URL's protocol, and every
request tried again after transient failures (timeouts, 5xx, throttling) with backoff, a
permanent answer (no such object, access denied) becoming one line that names the URL (as
``urls`` shows it: no credentials).

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
from . import urls

TRIES = 6  # a transient failure (timeout, 5xx, throttling) is tried again, up to this many tries
BACKOFF_S = 0.25  # the first wait; each next one doubles, up to MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0

T = TypeVar("T")


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(path: PurePath) -> Any:
    """The fsspec filesystem of ``path``'s protocol; ``s3://`` credentials given in the URL are
    its key and secret. A missing extra is a one-line error."""
    name = protocol(str(path))
    try:
        import fsspec  # the remote extra: only URLs need it
    except ImportError:
        raise BadInput(
            path, "reading remote caches needs fsspec: pip install fsspec s3fs aiohttp (nact's remote extra)"
        ) from None
    options: dict[str, Any] = {}
    given = urls.credentials(str(path))
    if name in ("s3", "s3a") and given is not None:
        options["key"], options["secret"] = given
    try:
        return fsspec.filesystem(name, **options)
    except (ImportError, ValueError) as e:
        raise BadInput(path, f"cannot read {name}:// URLs: {urls.redact(first_line(e))}") from None


def key_of(fs: Any, path: PurePath) -> str:
    """The object's name as ``fs`` wants it: the whole URL (what ``urls`` hides put back; the
    credentials only for http(s), which sends them itself) without its protocol."""
    text = str(path)
    return str(fs._strip_protocol(urls.real(text, userinfo=protocol(text) in ("http", "https"))))


_BUSY = (errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE)


def _answer(error: BaseException) -> BaseException:
    """What a failure was: fsspec's HTTP info says "not found" for any failure, from its cause."""
    cause = error.__cause__
    if isinstance(error, FileNotFoundError) and cause is not None and not isinstance(cause, FileNotFoundError):
        return cause
    return error


def _status(error: BaseException) -> int | None:
    status = getattr(error, "status", None) or getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def transient(error: BaseException) -> bool:
    """Whether a failed request may succeed when tried again (timeouts, 5xx, throttling), as
    opposed to a permanent answer (no such object, access denied, a bad request)."""
    if _answer(error) is not error:
        return transient(_answer(error))
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    if getattr(error, "errno", None) in _BUSY:  # s3fs's word for 503 SlowDown / ServiceUnavailable
        return True
    status = _status(error)
    if status is not None:
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
    """A permanent failure as one line naming the URL, with no secret of it."""
    answer = _answer(error)
    status = _status(answer)
    if isinstance(answer, PermissionError) or status in (401, 403):
        return BadInput(path, f"access denied: {urls.redact(first_line(answer))}")
    if isinstance(error, FileNotFoundError) and status in (None, 404) or status == 404:
        return BadInput(path, "no such object")
    return BadInput(path, f"cannot read: {type(answer).__name__}: {urls.redact(first_line(answer))}")


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
                what = _answer(e)
                last = f"{type(what).__name__}: {urls.redact(first_line(what))}"
                raise BadInput(path, f"cannot read after {tries} tries: {last}") from None
            time.sleep(wait)
            wait = min(wait * 2, MAX_BACKOFF_S)
    raise AssertionError("unreachable")
