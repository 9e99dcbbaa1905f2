"""Requests to a store and how they fail: the fsspec filesystem of a URL's protocol, and every
request tried again after transient failures (timeouts, 5xx, throttling) with backoff, a
permanent answer (no such object, access denied, a certificate that cannot be verified) becoming
one line that names the URL (as ``urls`` shows it: no credentials).

Bounds. Only nact tries a request again: s3fs's and botocore's own retries are turned off, so
``TRIES`` is the number of requests one read makes at most. All the tries of one request end
within ``NACT_REMOTE_DEADLINE`` seconds (default ``DEADLINE_S``) of its first, whatever the
store does; each try connects within ``CONNECT_TIMEOUT_S`` and gets bytes at least every
``READ_TIMEOUT_S`` (both at most the deadline). A request of an asynchronous filesystem (s3://,
http(s)://) runs on fsspec's event loop while its thread waits, so that a stop (``stop``: the
session's, set on SIGINT or SIGTERM) or the deadline ends it at once and closes its connection.

fsspec and its filesystems (s3fs for ``s3://``, aiohttp for ``https://``) are the optional extra
``nact[remote]``, imported only when a URL is read.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import PurePath
from typing import Any

from ..errors import BadInput, first_line
from . import urls

TRIES = 6  # a transient failure (timeout, 5xx, throttling) is tried again, up to this many tries
BACKOFF_S = 0.25  # the first wait; each next one doubles, up to MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0
DEADLINE_VARIABLE = "NACT_REMOTE_DEADLINE"
DEADLINE_S = 120.0  # all the tries of one request: a 16 MiB window at 150 kB/s still arrives
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0  # the longest wait for the next bytes of an answer
POLL_S = 0.05  # how often a thread waiting on a request looks for a stop


class _Deadline(Exception):
    """The deadline passed while a request was in flight."""


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def deadline_s(path: PurePath) -> float:
    """Seconds all the tries of one request may take: ``NACT_REMOTE_DEADLINE``, else ``DEADLINE_S``."""
    text = os.environ.get(DEADLINE_VARIABLE, "").strip()
    if not text:
        return DEADLINE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise BadInput(path, f"{DEADLINE_VARIABLE}={text!r} is not a number of seconds above 0")
    return seconds


def filesystem(path: PurePath) -> Any:
    """The fsspec filesystem of ``path``'s protocol, with the timeouts above and its own retries
    off; ``s3://`` credentials given in the URL are its key and secret. A missing extra is a
    one-line error."""
    name = protocol(str(path))
    try:
        import fsspec  # the remote extra: only URLs need it
    except ImportError:
        raise BadInput(path, "reading remote caches needs fsspec: pip install 'nact[remote]'") from None
    limit = deadline_s(path)
    connect, read = min(CONNECT_TIMEOUT_S, limit), min(READ_TIMEOUT_S, limit)
    options: dict[str, Any] = {}
    if name in ("s3", "s3a"):
        options["config_kwargs"] = {
            "retries": {"total_max_attempts": 1, "mode": "standard"},  # botocore: one attempt per call
            "connect_timeout": connect,
            "read_timeout": read,
        }
        given = urls.credentials(str(path))
        if given is not None:
            options["key"], options["secret"] = given
    elif name in ("http", "https"):
        try:
            import aiohttp  # fsspec's HTTP filesystem needs it too

            options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(sock_connect=connect, sock_read=read)}
        except ImportError:
            pass  # fsspec says so below, in its own words
    try:
        fs = fsspec.filesystem(name, **options)
    except (ImportError, ValueError) as e:
        raise BadInput(path, f"cannot read {name}:// URLs: {urls.redact(first_line(e))}") from None
    if name in ("s3", "s3a"):
        fs.retries = 1  # s3fs tries each call 5 times itself (150 requests for one read, with botocore's)
    return fs


def key_of(fs: Any, path: PurePath) -> str:
    """The object's name as ``fs`` wants it: the whole URL (what ``urls`` hides put back; the
    credentials only for http(s), which sends them itself) without its protocol."""
    text = str(path)
    return str(fs._strip_protocol(urls.real(text, userinfo=protocol(text) in ("http", "https"))))


_BUSY = (errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or during, each once."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        yield found
        found = found.__cause__ or found.__context__


def untrusted_certificate(error: BaseException) -> str | None:
    """Why the server's TLS certificate could not be verified, if that is what ``error`` is."""
    import ssl  # loaded by every HTTPS client already

    for e in _chain(error):
        for found in (getattr(e, "certificate_error", None), e):  # aiohttp keeps the ssl error there
            said = getattr(found, "verify_message", None) or getattr(found, "reason", None)
            if isinstance(found, ssl.SSLCertVerificationError) and said:
                return str(said)
        said = re.search(r"CERTIFICATE_VERIFY_FAILED\]? *(?:certificate verify failed:?)? *([^()\]'\"]*)", str(e))
        if said:
            return said.group(1).strip() or "certificate verify failed"
    return None


def precondition_failed(error: BaseException) -> bool:
    """Whether ``error`` is a store's 412 answer to a request conditional on an ETag."""
    for e in _chain(error):
        answer = getattr(e, "response", None)
        if isinstance(answer, dict):
            if answer.get("Error", {}).get("Code") == "PreconditionFailed":
                return True
            if answer.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
                return True
        if getattr(e, "status", None) == 412 or "PreconditionFailed" in str(e):
            return True
    return False


def _answer(error: BaseException) -> BaseException:
    """What a failure was: fsspec's HTTP info says "not found" for any failure, from its cause."""
    cause = error.__cause__
    if isinstance(error, FileNotFoundError) and cause is not None and not isinstance(cause, FileNotFoundError):
        return cause
    return error


def _status(error: BaseException) -> int | None:
    """The HTTP status a failure came with (aiohttp's, requests', botocore's), if any."""
    status = getattr(error, "status", None) or getattr(error, "status_code", None)
    answer = getattr(error, "response", None)
    if status is None and isinstance(answer, dict):
        status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def transient(error: BaseException) -> bool:
    """Whether a failed request may succeed when tried again (timeouts, 5xx, throttling), as
    opposed to a permanent answer (no such object, access denied, a bad request, a certificate
    that cannot be verified, an object that changed)."""
    if untrusted_certificate(error) is not None or precondition_failed(error):
        return False
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
    reason = untrusted_certificate(error)
    if reason is not None:
        return BadInput(
            path,
            f"the server's TLS certificate could not be verified ({urls.redact(reason)}): "
            "if it is signed by your own authority, name its certificate in SSL_CERT_FILE (AWS_CA_BUNDLE for s3://)",
        )
    if precondition_failed(error):
        return BadInput(path, "changed during the scan (its ETag no longer matches the one planned): scan it again")
    answer = _answer(error)
    status = _status(answer)
    if isinstance(answer, PermissionError) or status in (401, 403):
        return BadInput(path, f"access denied: {urls.redact(first_line(answer))}")
    if isinstance(answer, FileNotFoundError) or status == 404:  # not a failure to connect, say
        return BadInput(path, "no such object")
    return BadInput(path, f"cannot read: {type(answer).__name__}: {urls.redact(first_line(answer))}")


def awaiting(coroutine: Any, loop: asyncio.AbstractEventLoop, stop: threading.Event | None, until: float) -> Any:
    """The result of ``coroutine``, run on ``loop`` while this thread waits; a ``stop`` (raised
    here as KeyboardInterrupt) or the monotonic time ``until`` cancels it, which closes its
    connection."""
    from concurrent.futures import wait  # loaded with the filesystems' event loop already

    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    try:
        while not future.done():
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            left = until - time.monotonic()
            if left <= 0:
                raise _Deadline
            wait([future], timeout=min(POLL_S, left))
        return future.result()
    finally:
        future.cancel()  # nothing if it is done


def retrying(
    path: PurePath,
    call: Callable[[], Any],
    tries: int | None = None,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    stop: threading.Event | None = None,
) -> Any:
    """``call()``, tried again after transient failures with exponential backoff, at most
    ``tries`` (default ``TRIES``) times and within the deadline; with ``loop``, ``call()`` gives
    a coroutine to run there (see ``awaiting``). A permanent failure, the last transient one or
    the deadline is a ``BadInput`` naming ``path``; a ``stop`` ends it as KeyboardInterrupt."""
    tries = tries or TRIES
    limit = deadline_s(path)
    until = time.monotonic() + limit
    wait = BACKOFF_S
    for attempt in range(1, tries + 1):
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        try:
            return awaiting(call(), loop, stop, until) if loop is not None else call()
        except BadInput:
            raise
        except _Deadline:
            last = "no answer yet"
        except Exception as e:
            if not transient(e):
                raise describe(path, e) from None
            what = _answer(e)
            last = f"{type(what).__name__}: {urls.redact(first_line(what))}"
            if attempt == tries:
                raise BadInput(path, f"cannot read after {tries} tries: {last}") from None
            if time.monotonic() + wait < until:
                if stop is None:
                    time.sleep(wait)
                elif stop.wait(wait):
                    raise KeyboardInterrupt from None
                wait = min(wait * 2, MAX_BACKOFF_S)
                continue
        raise BadInput(
            path, f"no answer within {limit:g} s ({DEADLINE_VARIABLE}), after {attempt} tries: {last}"
        ) from None
    raise AssertionError("unreachable")


def ask(path: PurePath, fs: Any, method: str, *args: Any, stop: threading.Event | None = None, **kwargs: Any) -> Any:
    """``fs.<method>(*args, **kwargs)`` (``info``, ``find``) tried as ``retrying`` does: on the
    filesystem's event loop when it is asynchronous."""
    if getattr(fs, "async_impl", False) and hasattr(fs, f"_{method}"):
        call = getattr(fs, f"_{method}")
        return retrying(path, lambda: call(*args, **kwargs), loop=fs.loop, stop=stop)
    call = getattr(fs, method)
    return retrying(path, lambda: call(*args, **kwargs), stop=stop)


def stop_on_signals(stopped: threading.Event) -> Callable[[], None]:
    """On the main thread: until the returned call, SIGINT and SIGTERM set ``stopped`` before
    doing what they did (Python handlers only: a signal that kills the process needs nothing),
    so that threads waiting on requests end too."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    chained: dict[int, tuple[Callable[[int, Any], Any], Any]] = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        before = signal.getsignal(number)
        if callable(before):

            def handler(signum: int, frame: Any, before: Callable[[int, Any], Any] = before) -> Any:
                stopped.set()
                return before(signum, frame)

            signal.signal(number, handler)
            chained[number] = (handler, before)

    def restore() -> None:
        for number, (handler, before) in chained.items():
            if signal.getsignal(number) is handler:  # not replaced since
                signal.signal(number, before)

    return restore
