"""One range request of an object, as a scan asks it: bytes ``[start, stop)`` of the version
of the object that was planned, and never more than those in memory.

- Conditional: a request carries the ETag the listing (or HEAD) gave, as ``If-Match``, and
  the ETag of each answer is compared with it, so that a window of another version (the object
  replaced, even if restored before the scan ends) is an error, not counted.
- Bounded: an answer that is not the range asked (a server that ignores ``Range`` answers
  with the whole object) is refused from its headers, its body never read; the one exception
  is an answer of exactly the bytes asked, from byte 0.
- On fsspec's event loop, tried again as ``requests.retrying`` does: a stop or the deadline
  ends it at once.

S3 (s3fs) and HTTP (aiohttp, through fsspec's session) are asked directly; other stores through
fsspec's ``cat_file``, which reads what the store answers.
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import BadInput
from .requests import precondition_failed, protocol, retrying


def changed(etag: str, now: str | None = None) -> str:
    """The problem of an object whose ETag moved during the scan."""
    moved = f"ETag {etag} -> {now}" if now else f"its ETag is no longer {etag}"
    return f"changed during the scan ({moved}): scan it again"


def _ignores_ranges(start: int, stop: int) -> str:
    return (
        f"the server ignores range requests (bytes {start}-{stop - 1} were answered with the whole object): "
        "nact reads objects by ranges only, download it first"
    )


def _check_tag(path: Any, etag: str, answered: str | None) -> None:
    if etag and answered and answered != etag:
        raise BadInput(path, changed(etag, answered))


async def _http(fs: Any, url: str, path: Any, start: int, stop: int, etag: str) -> bytes:
    import asyncio  # loaded with the filesystem's event loop already

    options = dict(fs.kwargs)
    headers = {**options.pop("headers", {}), "Range": f"bytes={start}-{stop - 1}", "Accept-Encoding": "identity"}
    if etag and not etag.startswith("W/"):  # a weak ETag never matches If-Match (RFC 9110)
        headers["If-Match"] = etag
    session = await fs.set_session()
    encode = getattr(fs, "encode_url", None)  # fsspec >= 2023.12; older ones give aiohttp the text
    async with session.get(encode(url) if encode else url, headers=headers, **options) as answer:
        if answer.status == 412:
            raise BadInput(path, changed(etag))
        if answer.status == 404:
            raise FileNotFoundError(url)
        answer.raise_for_status()
        given = answer.headers.get("Content-Range", "")
        ranged = answer.status == 206 and (not given or given.startswith(f"bytes {start}-"))
        whole = answer.status == 200 and start == 0 and answer.content_length == stop  # all that was asked
        if not (ranged or whole):
            answer.close()  # its body unread: the connection goes, with what is in flight
            raise BadInput(path, _ignores_ranges(start, stop))
        _check_tag(path, etag, answer.headers.get("ETag"))
        try:
            data: bytes = await answer.content.readexactly(stop - start)
        except asyncio.IncompleteReadError as e:
            data = e.partial  # fewer bytes than asked: the caller says so
        answer.close()  # a longer answer than asked is not read on
        return data


async def _s3(fs: Any, key: str, path: Any, start: int, stop: int, etag: str) -> bytes:
    bucket, name, version = fs.split_path(key)
    condition = {"IfMatch": etag} if etag else {}
    if version:
        condition["VersionId"] = version
    try:
        answer = await fs._call_s3(
            "get_object", Bucket=bucket, Key=name, Range=f"bytes={start}-{stop - 1}", **condition
        )
    except Exception as e:
        if precondition_failed(e):
            raise BadInput(path, changed(etag)) from None
        raise
    body = answer["Body"]
    try:
        _check_tag(path, etag, answer.get("ETag"))
        if answer.get("ContentLength") not in (None, stop - start):
            raise BadInput(path, _ignores_ranges(start, stop))
        data: bytes = await body.read()
        return data
    finally:
        body.close()


def get(path: Any, fs: Any, key: str, start: int, stop: int, etag: str, stopped: threading.Event | None) -> bytes:
    """Bytes ``[start, stop)`` of the object ``key`` of ``fs`` (``path`` names it in messages),
    of the version whose ETag is ``etag`` ("" if the store gives none)."""
    kind = protocol(str(path))
    data: bytes
    if kind in ("http", "https"):
        data = retrying(path, lambda: _http(fs, key, path, start, stop, etag), loop=fs.loop, stop=stopped)
    elif kind in ("s3", "s3a") and hasattr(fs, "_call_s3"):
        data = retrying(path, lambda: _s3(fs, key, path, start, stop, etag), loop=fs.loop, stop=stopped)
    elif getattr(fs, "async_impl", False):  # another asynchronous store (gcsfs): as fsspec reads it
        data = retrying(path, lambda: fs._cat_file(key, start=start, end=stop), loop=fs.loop, stop=stopped)
    else:
        data = retrying(path, lambda: fs.cat_file(key, start=start, end=stop), stop=stopped)
    return data
