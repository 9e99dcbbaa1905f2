"""Caches where they live: objects in S3-compatible stores, on web servers or any fsspec
filesystem, read by range requests (never downloaded whole). ``objects``: URLs as paths and
what a scan learns of them; ``urls``: what a URL shows and what it keeps for requests;
``requests``: the filesystem of a URL and requests tried again, within a deadline, ended by a
stop; ``ranges``: one range request, conditional on the ETag planned and bounded to its bytes."""

from .objects import (
    HEADER_BLOCK,
    IO_THREADS,
    WINDOW_BYTES,
    ObjectInfo,
    RemoteArray,
    RemoteFile,
    RemotePath,
    Session,
    as_path,
    current,
    each,
    info,
    is_url,
    prefetch_heads,
    read_range,
    session,
)
from .requests import TRIES, filesystem, retrying, transient

__all__ = [
    "HEADER_BLOCK",
    "IO_THREADS",
    "TRIES",
    "WINDOW_BYTES",
    "ObjectInfo",
    "RemoteArray",
    "RemoteFile",
    "RemotePath",
    "Session",
    "as_path",
    "current",
    "each",
    "filesystem",
    "info",
    "is_url",
    "prefetch_heads",
    "read_range",
    "retrying",
    "session",
    "transient",
]
