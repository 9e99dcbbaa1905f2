"""Remote stores that misbehave, and URLs that carry secrets: nothing printed or recorded holds a
credential, retries end by a deadline, a server that ignores ranges is not read whole, a window
of another version of an object is never counted, a stop ends requests that hang, and a TLS
failure says so. Local servers only: moto's S3, and HTTP(S) servers made here."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

pytest.importorskip("fsspec")
pytest.importorskip("s3fs")
pytest.importorskip("aiohttp")
pytest.importorskip("moto.server")

import test_remote as base

from neuron_activity import BadInput, remote, scan
from neuron_activity.remote import urls

s3, bucket, web, _fast_retries = base.s3, base.bucket, base.web, base._fast_retries  # the same servers
nact, upload, activations, fire_counts = base.nact, base.upload, base.activations, base.fire_counts
REPO = Path(__file__).resolve().parents[1]


def serve(handler: type[http.server.BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_nact(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """nact's console entry in a process of its own (signals go to it alone)."""
    code = "import sys; from nact_cli.entry import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


# --- secrets ------------------------------------------------------------------------------------


def test_the_shown_form_of_a_url_holds_no_secret() -> None:
    given = "https://alice:pa55word@host:8443/acts/shard.safetensors?X-Amz-Signature=c0ffee99&token=t0k3n#frag"
    path = remote.RemotePath(given)
    assert str(path) == "https://***@host:8443/acts/shard.safetensors"
    assert path.name == "shard.safetensors" and path.suffix == ".safetensors"
    assert str(path.parent) == "https://***@host:8443/acts" and "pa55word" not in repr(path)
    assert all("pa55word" not in part and "t0k3n" not in part for part in path.parts)
    assert remote.RemotePath(str(path)) == path  # the shown form of a shown URL is itself
    assert urls.real(str(path)) == given  # requests use all of it
    assert urls.real(str(path), userinfo=False) == given.replace("alice:pa55word@", "")
    s3_path = remote.as_path("s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/a?b.npy")
    assert str(s3_path) == "s3://***@bucket/a?b.npy"  # in a key "?" is a character: kept
    assert urls.credentials(str(s3_path)) == ("AKIDEXAMPLE", "wJalrXUtnFEMI")
    said = "ClientResponseError: 401, url='https://alice:pa55word@host:8443/a?token=t0k3n' (pa55word, c0ffee99)"
    assert urls.redact(said) == "ClientResponseError: 401, url='https://***@host:8443/a' (***, ***)"
    assert urls.redact("alice's reader") == "alice's reader"  # a user name with a password is no secret in text
    assert str(remote.RemotePath("https://host/a.npy")) == "https://host/a.npy"  # nothing to hide


class AuthHandler(base.RangeHandler):
    """Files behind HTTP basic authentication and a token in the query string."""

    user = "reader:s3cr3t-pw"
    token = "tok-123456"

    def _serve(self, body: bool) -> None:
        path, _, query = self.path.partition("?")
        wanted = "Basic " + base64.b64encode(self.user.encode()).decode()
        if self.headers.get("Authorization") != wanted or f"token={self.token}" not in query:
            self.requests.append(f"{self.command} {self.path} refused")
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.path = path
        super()._serve(body)


def test_credentials_in_a_url_are_never_printed_or_stored(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    x = activations(np.random.default_rng(21), 300, 16)
    save_file({"acts": x}, str(root / "shard.safetensors"))
    handler = type("Auth", (AuthHandler,), {"root": root, "failures": {}, "requests": []})
    server = serve(handler)
    host = f"127.0.0.1:{server.server_address[1]}"
    url = f"http://{AuthHandler.user}@{host}/shard.safetensors?X-Amz-Signature=sig-777777&token={AuthHandler.token}"
    secrets = ("s3cr3t-pw", AuthHandler.token, "sig-777777")
    counts, state = tmp_path / "counts.safetensors", tmp_path / "state.safetensors"
    try:
        outputs = []
        done = nact("scan", url, "-f", "json", "--neurons", "--save-counts", counts)
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["rows"] and "refused" not in "".join(handler.requests)  # all of it was sent
        outputs += [done.stdout, done.stderr, counts.read_bytes().decode("latin-1")]
        for _ in range(2):  # an audit, and the audit again: the object is known by its shown URL
            done = nact("scan", url, "--state", state, "-f", "json")
            assert done.exit_code == 0, done.output
            outputs += [done.stdout, done.stderr, state.read_bytes().decode("latin-1")]
        from neuron_activity.counts_file import load_counts

        assert [s.path for s in load_counts(state).shards] == [f"http://***@{host}/shard.safetensors"]
        assert load_counts(state).activity.components["acts"].fire_counts.tolist() == fire_counts(x)
        for wrong in (  # failures, whose messages quote the URL
            url.replace("shard.safetensors", "gone.safetensors"),
            url.replace("s3cr3t-pw", "s3cr3t-no"),
            url.replace(host, "127.0.0.1:1"),  # nothing listens: tried again, then one line
        ):
            done = nact("scan", wrong, "-o", tmp_path / "out.json")
            assert done.exit_code == 2 and done.stderr.count("\n") == 1, done.output
            outputs += [done.stdout, done.stderr]
        assert "access denied" in outputs[-3] and f"http://***@{host}/shard.safetensors" in outputs[-3]
        unreachable = ": cannot read: ClientConnectorError: Cannot connect to host 127.0.0.1:1"
        assert unreachable in outputs[-1]  # not "no such object"
        library = scan([url]).plan
        outputs += [repr(library.shards), str(library.objects)]
    finally:
        server.shutdown()
        server.server_close()
    for text in outputs:
        assert not any(secret in text for secret in secrets), text


def test_s3_credentials_in_a_url_are_used_and_never_shown(s3, bucket: str, tmp_path: Path) -> None:
    x = activations(np.random.default_rng(22), 200, 8)
    save_file({"acts": x}, str(tmp_path / "shard.safetensors"))
    upload(s3, tmp_path, bucket, "keyed")
    url = f"s3://AKIAKEYINURL:very-secret-key@{bucket}/keyed/"
    counts = tmp_path / "counts.safetensors"
    done = nact("scan", url, "-f", "json", "--save-counts", counts)
    assert done.exit_code == 0, done.output
    for text in (done.stdout, done.stderr, counts.read_bytes().decode("latin-1")):
        assert "very-secret-key" not in text and "AKIAKEYINURL" not in text
    assert f"s3://***@{bucket}/keyed/shard.safetensors" in done.stdout
    done = nact("scan", f"s3://AKIAKEYINURL:very-secret-key@{bucket}/nothing/")
    assert done.exit_code == 2 and "very-secret-key" not in done.stderr and "no such object" in done.stderr


# --- bounded time -------------------------------------------------------------------------------


class DownHandler(http.server.BaseHTTPRequestHandler):
    """A store that answers 503 SlowDown to every request, and counts them."""

    seen: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.seen.append(self.command)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD


def test_retries_end_by_the_deadline_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    handler = type("Down", (DownHandler,), {"seen": []})
    server = serve(handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/shard.safetensors?token=abcdefgh"
    monkeypatch.setattr(remote.requests, "TRIES", 10**9)  # only the deadline ends it
    monkeypatch.setenv("NACT_REMOTE_DEADLINE", "0.5")
    try:
        done = nact("scan", url, "-o", tmp_path / "out.json")
        assert done.exit_code == 2 and done.stderr.count("\n") == 1, done.output
        assert done.stderr.startswith(f"Error: http://127.0.0.1:{server.server_address[1]}/shard.safetensors: ")
        assert "no answer within 0.5 s (NACT_REMOTE_DEADLINE)" in done.stderr and "abcdefgh" not in done.stderr
        assert len(handler.seen) > 2 and not (tmp_path / "out.json").exists()
        monkeypatch.setenv("NACT_REMOTE_DEADLINE", "soon")
        done = nact("scan", url)
        assert done.exit_code == 2 and "NACT_REMOTE_DEADLINE='soon' is not a number of seconds" in done.stderr
    finally:
        server.shutdown()
        server.server_close()


class HangingHandler(base.RangeHandler):
    """Answers HEAD and the header's range; any other GET is accepted and never answered (until
    ``release``), or every GET if ``header_hangs``."""

    release: threading.Event
    asked: threading.Event
    header_hangs = False

    def do_GET(self) -> None:
        if not self.header_hangs and self.headers.get("Range", "").startswith("bytes=0-"):
            return super().do_GET()
        self.asked.set()
        self.release.wait(120)


@pytest.fixture
def hanging(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    save_file({"acts": activations(np.random.default_rng(23), 4000, 64)}, str(root / "shard.safetensors"))
    handler = type(
        "Hang",
        (HangingHandler,),
        {"root": root, "requests": [], "release": threading.Event(), "asked": threading.Event()},
    )
    server = serve(handler)
    yield f"http://127.0.0.1:{server.server_address[1]}/shard.safetensors", handler
    handler.release.set()
    server.shutdown()
    server.server_close()


def test_a_request_that_hangs_ends_by_the_deadline(hanging, monkeypatch: pytest.MonkeyPatch) -> None:
    url, handler = hanging
    monkeypatch.setenv("NACT_REMOTE_DEADLINE", "1")
    with pytest.raises(BadInput, match=r"no answer within 1 s \(NACT_REMOTE_DEADLINE\), after 1 tries"):
        scan([url])
    assert handler.asked.is_set()


# --- interrupts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, threads, header_hangs",
    [
        (signal.SIGTERM, "4", False),  # windows on the counting threads
        (signal.SIGINT, "4", False),
        (signal.SIGTERM, "1", False),  # windows fetched ahead
        (signal.SIGTERM, "4", True),  # the header, on the main thread
    ],
)
def test_a_stop_ends_requests_that_hang_with_exit_130(hanging, sent: int, threads: str, header_hangs: bool) -> None:
    url, handler = hanging
    handler.header_hangs = header_hangs
    process = run_nact("scan", url, "--threads", threads, "--io-threads", threads, "--chunk-rows", "100")
    try:
        assert handler.asked.wait(60), "nact never asked for the object"
        time.sleep(0.3)  # every thread waiting on its request
        process.send_signal(sent)
        out, err = process.communicate(timeout=20)  # not 120 s later: the requests saw the stop
    finally:
        process.kill()
    assert process.returncode == 130 and err == "Error: interrupted\n" and out == ""


# --- bounded memory -----------------------------------------------------------------------------


class WholeBodyHandler(http.server.BaseHTTPRequestHandler):
    """A server that ignores Range: every GET is answered with all of a 384 MiB object, made as
    it is sent (nothing that large is held); ``sent`` counts what went out before the client left."""

    size = 384 << 20
    sent: list[int]
    done: threading.Event

    def log_message(self, *args: object) -> None:
        pass

    def _start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.send_header("ETag", '"whole"')
        self.end_headers()

    def do_HEAD(self) -> None:
        self._start()

    def do_GET(self) -> None:
        self._start()
        block, sent = b"\0" * (1 << 20), 0
        try:
            while sent < self.size:
                self.wfile.write(block)
                sent += len(block)
        except OSError:
            pass
        finally:
            self.sent.append(sent)
            self.done.set()


def test_a_server_that_ignores_ranges_is_refused_unread(tmp_path: Path) -> None:
    handler = type("Whole", (WholeBodyHandler,), {"sent": [], "done": threading.Event()})
    server = serve(handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/big.safetensors"
    try:
        done = nact("scan", url, "-o", tmp_path / "out.json")
        assert done.exit_code == 2 and done.stderr.count("\n") == 1, done.output
        assert done.stderr.startswith(f"Error: {url}: the server ignores range requests (bytes 0-65535 were answered")
        assert handler.done.wait(30)
        assert handler.sent[0] < 32 << 20  # what the sockets' buffers took: the body was never read
    finally:
        server.shutdown()
        server.server_close()


# --- wrong answers ------------------------------------------------------------------------------


def test_an_object_replaced_and_restored_during_the_scan_is_an_error(
    s3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = activations(np.random.default_rng(24), 1000, 16)
    (tmp_path / "acts").mkdir()
    save_file({"acts": x}, str(tmp_path / "acts" / "shard.safetensors"))
    save_file({"acts": -x}, str(tmp_path / "other.safetensors"))  # the same size: only the ETag tells
    upload(s3, tmp_path / "acts", bucket, "swap")
    key = f"{bucket}/swap/shard.safetensors"
    fetch, windows = remote.objects.fetch, []

    def swapping(path, start, stop, *args):
        if start > 0:  # a window of rows, not the header
            windows.append(start)
        if len(windows) == 2 and start == windows[-1]:  # replaced for this window's request only
            s3.put_file(str(tmp_path / "other.safetensors"), key)
            try:
                return fetch(path, start, stop, *args)
            finally:
                s3.put_file(str(tmp_path / "acts" / "shard.safetensors"), key)  # its first ETag again
        return fetch(path, start, stop, *args)

    monkeypatch.setattr(remote.objects, "fetch", swapping)
    out = tmp_path / "out.json"
    done = nact("scan", f"s3://{bucket}/swap/", "--chunk-rows", "100", "--threads", "1", "--io-threads", "1", "-o", out)
    assert done.exit_code == 2 and done.stderr.count("\n") == 1, done.output
    assert f"s3://{bucket}/swap/shard.safetensors: changed during the scan (its ETag is no longer" in done.stderr
    assert not out.exists()
    windows.clear()  # the same, without the swap: every window of the one version
    monkeypatch.setattr(remote.objects, "fetch", fetch)
    result = scan([f"s3://{bucket}/swap/"], chunk_rows=100, threads=1, io_threads=1)
    assert result.activity.components["acts"].fire_counts.tolist() == fire_counts(x)


def test_an_answer_of_another_version_is_not_counted(web) -> None:
    """A web server that does not honour If-Match: the answer's own ETag tells."""
    root, url, handler = web
    x = activations(np.random.default_rng(25), 1000, 16)
    save_file({"acts": x}, str(root / "shard.safetensors"))
    fetch, windows = remote.objects.fetch, []

    def swapping(path, start, stop, *args):
        windows.append(start)
        if len(windows) == 3:
            save_file({"acts": -x}, str(root / "shard.safetensors"))
        return fetch(path, start, stop, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(remote.objects, "fetch", swapping)
        with pytest.raises(BadInput, match=r"changed during the scan \(ETag \"\w+\" -> \"\w+\"\)"):
            scan([f"{url}/shard.safetensors"], chunk_rows=100, threads=1, io_threads=1)
    assert len(windows) < 8  # of 11: the answer was refused, not found out after the scan


def test_each_request_of_an_object_is_conditional_on_its_etag(web) -> None:
    root, url, handler = web
    x = activations(np.random.default_rng(27), 500, 8)
    save_file({"acts": x}, str(root / "shard.safetensors"))
    etag = '"' + hashlib.md5((root / "shard.safetensors").read_bytes()).hexdigest() + '"'
    sent: list[str | None] = []
    serve_ = handler._serve

    def recording(self, body: bool) -> None:
        if self.command == "GET":
            sent.append(self.headers.get("If-Match"))
        serve_(self, body)

    handler._serve = recording
    result = scan([f"{url}/shard.safetensors"], chunk_rows=50)
    assert result.activity.components["acts"].fire_counts.tolist() == fire_counts(x)
    assert len(sent) >= 10 and set(sent) == {etag}


# --- misleading messages ------------------------------------------------------------------------


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr.decode()[:200]}")
    return cert, key


def test_a_certificate_that_cannot_be_verified_says_so(
    self_signed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed
    root = tmp_path / "www"
    root.mkdir()
    x = activations(np.random.default_rng(26), 100, 8)
    save_file({"acts": x}, str(root / "shard.safetensors"))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = serve(type("Tls", (base.RangeHandler,), {"root": root, "failures": {}, "requests": []}), tls)
    url = f"https://127.0.0.1:{server.server_address[1]}/shard.safetensors"
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    try:
        done = nact("scan", url)
        assert done.exit_code == 2 and done.stderr.count("\n") == 1, done.output
        assert done.stderr.startswith(f"Error: {url}: the server's TLS certificate could not be verified (")
        assert "self-signed certificate" in done.stderr and "SSL_CERT_FILE" in done.stderr
        assert "no such object" not in done.stderr
        process = run_nact("scan", url, "-f", "json", env={"SSL_CERT_FILE": str(cert)})  # as the line says
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert json.loads(out)["rows"][0]["num_vectors"] == 100
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("extra", [[], ["-f", "json"], ["--save-counts"]])
def test_an_output_given_as_a_url_never_shows_its_credentials(extra: list[str]) -> None:
    """-o (or --save-counts) naming a URL is refused, in one line that shows no secret of it."""
    from conftest import SAMPLE_DATA
    from typer.testing import CliRunner

    from nact_cli.main import app

    url = "https://someone:hunter2pass@host.example/x.json?token=s3cr3tvalue"
    args = ["scan", str(SAMPLE_DATA), *(extra or ["-o"])]
    args += [url] if extra == ["--save-counts"] else (["-o", url] if extra else [url])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and result.stderr == (
        "Error: https://***@host.example/x.json: outputs are local files: nact does not write to a URL\n"
    )
    for secret in ("someone", "hunter2pass", "s3cr3tvalue", "token"):
        assert secret not in result.stderr + result.stdout
