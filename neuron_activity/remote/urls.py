"""What a URL shows and what it keeps to itself.

The rule: nact shows and records a URL without what may be a secret in it, and uses the whole
URL only for its requests.

- The userinfo (``user:password@``, or a token as a user name) is shown as ``***@``:
  ``https://***@host/acts/shard.safetensors``, ``s3://***@bucket/acts/``.
- An ``http(s)://`` URL is shown without its query and fragment (``?X-Amz-Signature=...``,
  ``?token=...``, ``#...``): ``https://host/acts/shard.safetensors``. (In ``s3://`` and other
  stores' keys ``?`` and ``#`` are characters of the name, and are kept.)

``shown`` gives that form and remembers what it left out, by the shown form: the userinfo by
the host (one per scheme and host: the last given), the query by the URL. ``real`` puts it back
for a request. Everything that shows or records a remote path (``str()``, messages, JSON,
saved counts, audit states) sees the shown form only; ``redact`` cleans any other text (a
library's error message) of URLs' secrets.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import unquote

HIDDEN = "***"

_PARTS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)$", re.DOTALL)
_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{},]+")
_SHORTEST_PIECE = 6  # a password or a query value shorter than this is too like a word to take out of messages

_lock = threading.Lock()
_userinfo: dict[str, str] = {}  # "scheme://***@host" -> the userinfo given
_queries: dict[str, str] = {}  # shown http(s) URL -> its query and fragment ("?a=b#c")
_secrets: set[str] = set()  # every piece left out, to take out of messages


def _split(url: str) -> tuple[str, str, str, str, str] | None:
    """``(scheme, userinfo, host, path, query-and-fragment)``, or None for text that is not a URL."""
    parts = _PARTS.match(url)
    if parts is None:
        return None
    scheme, authority, rest = parts.groups()
    userinfo, at, host = authority.rpartition("@")
    if not at:
        userinfo = ""
    query = ""
    if scheme.lower() in ("http", "https"):
        cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
        rest, query = rest[:cut], rest[cut:]
    return scheme, userinfo, host, rest, query


def _origin(scheme: str, host: str) -> str:
    return f"{scheme.lower()}://{HIDDEN}@{host.lower()}"


def _hide(whole: str, pieces: list[str]) -> None:
    """Remember a secret (a userinfo, a query), and its pieces that are not too short, with their
    decoded forms, to take out of messages."""
    for piece in (whole, *(p for p in pieces if len(p) >= _SHORTEST_PIECE)):
        for form in (piece, unquote(piece)):
            if form:
                _secrets.add(form)


def shown(url: str, remember: bool = True) -> str:
    """``url`` as nact shows and records it (the module's rule); what it leaves out is kept for
    ``real`` unless ``remember`` is false. Text that is not a URL, or has nothing to hide, is
    given back as it is; the shown form of a shown URL is itself."""
    split = _split(url)
    if split is None:
        return url
    scheme, userinfo, host, path, query = split
    if not userinfo and not query:
        return url
    text = f"{scheme}://{HIDDEN + '@' if userinfo else ''}{host}{path}"
    if remember:
        with _lock:
            if userinfo and userinfo != HIDDEN:
                _userinfo[_origin(scheme, host)] = userinfo
                user, has_password, password = userinfo.partition(":")
                _hide(userinfo, [password] if has_password else [user])  # a user name alone is a token
            if query:
                _queries[text] = query
                query_part, _, fragment = query.partition("#")
                values = [pair.partition("=")[2] for pair in re.split(r"[&;]", query_part.lstrip("?"))]
                _hide(query, [query_part, fragment, *values])
    return text


def real(url: str, userinfo: bool = True) -> str:
    """The URL to request for the shown ``url``: what ``shown`` left out put back (the userinfo
    only if ``userinfo``). A hidden userinfo nothing remembers is left out."""
    split = _split(url)
    if split is None:
        return url
    scheme, given, host, path, query = split
    with _lock:
        secret = _userinfo.get(_origin(scheme, host), "") if given == HIDDEN else given
        query = query or _queries.get(url, "")
    head = f"{secret}@" if secret and userinfo else ""
    return f"{scheme}://{head}{host}{path}{query}"


def credentials(url: str) -> tuple[str, str] | None:
    """The user name and password a shown ``url`` was given with (decoded), if any."""
    split = _split(url)
    if split is None or split[1] != HIDDEN:
        return None
    with _lock:
        secret = _userinfo.get(_origin(split[0], split[2]))
    if not secret:
        return None
    user, _, password = secret.partition(":")
    return unquote(user), unquote(password)


def redact(text: str) -> str:
    """``text`` (a message) with every URL in it shown by the rule, and every secret piece a URL
    was given with replaced by ``***``."""
    text = _IN_TEXT.sub(lambda m: shown(m.group(0), remember=False), text)
    with _lock:
        pieces = sorted(_secrets, key=len, reverse=True)
    for piece in pieces:
        text = text.replace(piece, HIDDEN)
    return text
