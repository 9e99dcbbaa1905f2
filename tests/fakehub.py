"""A fake Hugging Face Hub on 127.0.0.1: the part of the Hub's HTTP API that huggingface_hub's
``snapshot_download`` and ``HfApi.model_info`` use (0.20 through 2.x), over repositories held in
memory, with a log of every request.

What huggingface_hub needs of an answer, or it refuses it: a file's HEAD and GET carry
``X-Repo-Commit`` (the commit's 40-hex sha), a quoted ``ETag`` and ``Content-Length``; errors carry
``X-Error-Code`` (``RepoNotFound``, ``GatedRepo``, ``RevisionNotFound``, ``EntryNotFound``); the
model info has ``id``, ``sha``, ``private``, ``downloads``, ``likes``, ``tags`` and ``siblings``
(0.20 reads them all). Files are served directly, never redirected, and no Xet header is sent, so
every version downloads them with plain GETs.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SUFFIXES_IN_LFS = (".npz", ".safetensors", ".pt", ".bin")  # listed with an "lfs" entry, as the Hub lists them


@dataclass
class Repo:
    """A model repository: ``revisions`` maps a branch or tag to its files (path -> bytes); ``token``
    set makes it gated, answering only to ``Authorization: Bearer <token>``."""

    revisions: dict[str, dict[str, bytes]]
    token: str | None = None

    def sha(self, revision: str) -> str:
        digest = hashlib.sha1(revision.encode())
        for name, data in sorted(self.revisions[revision].items()):
            digest.update(name.encode() + b"\0" + hashlib.sha1(data).digest())
        return digest.hexdigest()

    def resolve(self, revision: str) -> str | None:
        """The branch or tag a revision (a name or a commit sha) is, or None."""
        if revision in self.revisions:
            return revision
        return next((name for name in self.revisions if self.sha(name) == revision), None)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent, quoted
    authorization: str | None


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def etag_of(name: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if name.endswith(SUFFIXES_IN_LFS) else git_oid(data)


@dataclass
class FakeHub:
    """``with FakeHub(repos) as hub:`` serves ``repos`` (repo id -> Repo) at ``hub.url``."""

    repos: dict[str, Repo]
    requests: list[Request] = field(default_factory=list)
    unexpected: list[Request] = field(default_factory=list)  # requests the Hub's API has no answer for
    down: bool = False  # every request answered with 500 Internal Error

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering: the port is closed, as a Hub that cannot be reached."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def downloads(self) -> list[str]:
        """The files sent (GET of a file of a repository), as ``repo/path``, sorted."""
        found = []
        for r in self.requests:
            parts = [unquote(p) for p in urlsplit(r.path).path.split("/")]
            if r.method == "GET" and len(parts) > 5 and parts[3] == "resolve":
                found.append(f"{parts[1]}/{parts[2]}/{'/'.join(parts[5:])}")
        return sorted(found)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: every answer has a Content-Length
    hub: FakeHub

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _send(self, status: int, data: bytes = b"", headers: dict[str, str] | None = None, body: bool = True) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and data:
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, body: bool, more: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        self._send(status, json.dumps({"error": message}).encode(), headers | (more or {}), body)

    def _answer(self, body: bool) -> None:
        request = Request(self.command, self.path, self.headers.get("Authorization"))
        self.hub.requests.append(request)
        if self.hub.down:
            return self._send(500, b"Internal Error", {"Content-Type": "text/plain"}, body)
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.split("/")][1:]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
        elif len(parts) >= 4 and parts[2] == "resolve":
            repo_id, rest = "/".join(parts[:2]), parts[2:]
        else:
            self.hub.unexpected.append(request)
            return self._error(404, "NotFound", f"no such API: {self.command} {self.path}", body)
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", body)
        if repo.token is not None and request.authorization != f"Bearer {repo.token}":
            status = 401 if request.authorization is None else 403
            return self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted.", body)
        if parts[0] == "api":
            if not rest or rest[0] == "revision" and len(rest) == 2:
                return self._info(repo_id, repo, rest[1] if rest else "main", body)
            if rest[0] == "tree" and len(rest) >= 2:
                recursive = parse_qs(split.query).get("recursive", ["false"])[0].lower() == "true"
                return self._tree(repo, rest[1], "/".join(rest[2:]), recursive, body)
            self.hub.unexpected.append(request)
            return self._error(404, "NotFound", f"no such API: {self.command} {self.path}", body)
        return self._file(repo, rest[1], "/".join(rest[2:]), body)

    def _revision(self, repo: Repo, revision: str, body: bool) -> str | None:
        name = repo.resolve(revision)
        if name is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
        return name

    def _info(self, repo_id: str, repo: Repo, revision: str, body: bool) -> None:
        name = self._revision(repo, revision, body)
        if name is None:
            return
        info = {
            "_id": repo.sha(name)[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.sha(name),
            "private": False,
            "gated": "manual" if repo.token else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": f} for f in sorted(repo.revisions[name])],
        }
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    def _tree(self, repo: Repo, revision: str, under: str, recursive: bool, body: bool) -> None:
        name = self._revision(repo, revision, body)
        if name is None:
            return
        prefix = under + "/" if under else ""
        entries, folders = [], set()
        for path, data in sorted(repo.revisions[name].items()):
            if not path.startswith(prefix):
                continue
            inner = path[len(prefix) :].split("/")
            folders.update(
                prefix + "/".join(inner[:i]) for i in range(1, len(inner) if recursive else min(2, len(inner)))
            )
            if len(inner) > 1 and not recursive:
                continue
            entry: dict[str, object] = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
            if path.endswith(SUFFIXES_IN_LFS):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "path": f, "size": 0, "oid": "0" * 40} for f in sorted(folders)]
        self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, body)

    def _file(self, repo: Repo, revision: str, path: str, body: bool) -> None:
        name = self._revision(repo, revision, body)
        if name is None:
            return
        commit = {"X-Repo-Commit": repo.sha(name)}
        data = repo.revisions[name].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", body, commit)
        headers = commit | {"ETag": f'"{etag_of(path, data)}"', "Content-Type": "application/octet-stream"}
        self._send(200, data, headers, body)
