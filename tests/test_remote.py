"""Remote caches: an S3 API served on 127.0.0.1 by moto's server, and a local HTTP server with
range requests, ETags and injected failures. Counts must equal numpy's on the same values, and
the local scan of the same files, exactly."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

pytest.importorskip("fsspec")
pytest.importorskip("s3fs")
pytest.importorskip("aiohttp")
moto_server = pytest.importorskip("moto.server")

from nact_cli.main import app  # noqa: E402
from neuron_activity import remote, scan  # noqa: E402

runner = CliRunner()


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# --- servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on 127.0.0.1, found through AWS_ENDPOINT_URL as a user's store would be."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        import fsspec
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # nact's filesystems find this server, not an earlier one's
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fsspec.filesystem("s3").invalidate_cache()
        yield fs
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture
def bucket(s3) -> str:
    name = f"acts-{uuid.uuid4().hex[:12]}"
    s3.mkdir(name)
    return name


def upload(s3, folder: Path, bucket: str, prefix: str) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            s3.put_file(str(p), f"{bucket}/{prefix}/{p.relative_to(folder).as_posix()}")
    s3.invalidate_cache()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Files of ``root`` with HEAD, Range and ETag; ``failures[path]`` 503s come first."""

    root: Path
    failures: dict[str, int] = {}
    requests: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        path = self.root / self.path.lstrip("/")
        return path if path.is_file() else None

    def _headers(self, status: int, length: int, etag: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _serve(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}")
        if self.failures.get(self.path, 0) > 0:
            self.failures[self.path] -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self._file()
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes=") :].partition("-")
            start, stop = int(first), min(int(last) + 1 if last else len(data), len(data))
            part = data[start:stop]
            self._headers(206, len(part), etag, {"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"})
            if body:
                self.wfile.write(part)
            return
        self._headers(200, len(data), etag)
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)


@pytest.fixture
def web(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (RangeHandler,), {"root": root, "failures": {}, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote.requests, "BACKOFF_S", 0.001)


# --- data -----------------------------------------------------------------------------------------


def activations(rng: np.random.Generator, rows: int, width: int, dtype: str = "float32") -> np.ndarray:
    values = rng.standard_normal((rows, width)).astype(dtype)
    values[:, : width // 4] = -np.abs(values[:, : width // 4])  # some neurons never fire
    return values


def make_cache(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Two layers in folders, three shards each (one split over windows), a hidden object, and
    a saved-counts file kept beside them: what a store prefix holds."""
    rng = np.random.default_rng(seed)
    truth: dict[str, list[np.ndarray]] = {}
    for layer in ("blocks.3.hook_resid_post", "blocks.7.hook_resid_post"):
        for shard in range(3):
            x = activations(rng, 300 + 77 * shard, 40)
            (folder / layer).mkdir(parents=True, exist_ok=True)
            save_file({"activations": x}, str(folder / layer / f"shard_{shard:03d}.safetensors"))
            truth.setdefault(layer, []).append(x)
    (folder / ".partial").write_bytes(b"not a shard")
    return {k: np.concatenate(v) for k, v in truth.items()}


def fire_counts(values: np.ndarray) -> list[int]:
    return (values > 0).sum(axis=0).tolist()


# --- S3 -------------------------------------------------------------------------------------------


def test_a_prefix_scans_as_its_folder_does(s3, bucket: str, tmp_path: Path) -> None:
    truth = make_cache(tmp_path / "cache")
    upload(s3, tmp_path / "cache", bucket, "run-1/acts")
    url = f"s3://{bucket}/run-1/acts/"
    result = scan([url], chunk_rows=64)  # windows that split shards
    local = scan([tmp_path / "cache"], chunk_rows=64)
    assert set(result.activity.components) == set(local.activity.components) == set(truth)
    for name, values in truth.items():
        component = result.activity.components[name]
        assert component.fire_counts.tolist() == fire_counts(values)
        assert component.num_vectors == len(values)
    assert [str(p) for p in result.plan.shards] == [
        f"s3://{bucket}/run-1/acts/{layer}/shard_{i:03d}.safetensors"
        for layer in ("blocks.3.hook_resid_post", "blocks.7.hook_resid_post")
        for i in range(3)
    ]
    done = nact("scan", url, "-f", "json", "--io-threads", "3")
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert document["rows"] == json.loads(nact("scan", tmp_path / "cache", "-f", "json").stdout)["rows"]
    assert "skipped 1 hidden object(s)" in done.stderr


def test_objects_named_one_by_one_npy_and_npz(s3, bucket: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a, b, c = (
        activations(rng, 500, 24, "float16"),
        activations(rng, 200, 24, "float16"),
        activations(rng, 90, 24, "float16"),
    )
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "stored.npz", acts=b)
    np.savez_compressed(tmp_path / "packed.npz", acts=c)
    upload(s3, tmp_path, bucket, "np")
    for name, values, key in (("a.npy", a, "a"), ("stored.npz", b, "acts"), ("packed.npz", c, "acts")):
        result = scan([f"s3://{bucket}/np/{name}"], chunk_rows=33)
        assert result.activity.components[key].fire_counts.tolist() == fire_counts(values), name


def test_inspect_lists_the_objects_and_their_components(s3, bucket: str, tmp_path: Path) -> None:
    make_cache(tmp_path / "cache")
    upload(s3, tmp_path / "cache", bucket, "acts")
    done = nact("inspect", f"s3://{bucket}/acts", "--format", "json")
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    paths = {t["path"] for t in document["tensors"]}
    assert f"s3://{bucket}/acts/blocks.3.hook_resid_post/shard_000.safetensors" in paths and len(paths) == 6


@pytest.mark.parametrize(
    "url, says",
    [
        ("s3://{bucket}/nothing/here/", "no such object"),
        ("s3://{bucket}-missing/acts/shard.safetensors", "no such object"),
        ("s3://{bucket}/acts/blocks.3.hook_resid_post/shard_009.safetensors", "no such object"),
    ],
)
def test_a_missing_object_is_one_line_exit_2_and_nothing_written(
    s3, bucket: str, tmp_path: Path, url: str, says: str
) -> None:
    make_cache(tmp_path / "cache")
    upload(s3, tmp_path / "cache", bucket, "acts")
    url = url.format(bucket=bucket)
    out = tmp_path / "out.json"
    done = nact("scan", url, "-o", out)
    assert done.exit_code == 2
    assert done.stderr.count("\n") == 1 and says in done.stderr and url.rstrip("/") in done.stderr
    assert not out.exists()


def test_torch_save_files_are_read_by_their_zip_directory(s3, bucket: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    x = activations(np.random.default_rng(9), 700, 12)
    torch.save({"blocks.2.hook_resid_post": torch.from_numpy(x), "step": 3}, tmp_path / "cache.pt")
    torch.save(torch.from_numpy(x), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    upload(s3, tmp_path, bucket, "pt")
    result = scan([f"s3://{bucket}/pt/cache.pt"], chunk_rows=50)
    assert result.activity.components["blocks.2.hook_resid_post"].fire_counts.tolist() == fire_counts(x)
    done = nact("scan", f"s3://{bucket}/pt/legacy.pt")
    assert done.exit_code == 2 and "needs torch to load it whole" in done.stderr and "legacy.pt" in done.stderr


def test_a_delphi_cache_is_read_by_windows_of_entries(
    s3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_formats import expected, write_delphi_module

    from neuron_activity.sources import delphi_caches

    rng = np.random.default_rng(7)
    dense = np.maximum(rng.standard_normal((6, 16, 40)) - 1.0, 0).astype(np.float16)
    write_delphi_module(tmp_path / "latents" / "layers.3.mlp", dense, [(0, 12), (13, 26), (27, 39)])
    (tmp_path / "latents" / "layers.3.mlp" / "config.json").write_text(json.dumps({"n_splits": 3}))
    upload(s3, tmp_path / "latents", bucket, "latents")
    monkeypatch.setattr(delphi_caches, "ENTRIES_PER_CHUNK", 17)  # many windows per split
    for native in (True, False):
        result = scan([f"s3://{bucket}/latents/"], kernel=None if native else "numpy")
        c = result.activity.components["layers.3.mlp"]
        assert (c.fire_counts.tolist(), c.num_vectors) == expected(dense.astype(np.float64), "0")
    state = tmp_path / "state.safetensors"
    assert nact("scan", f"s3://{bucket}/latents/", "--state", state, "-q").exit_code == 0
    assert nact("scan", f"s3://{bucket}/latents/", "--state", state, "-q").exit_code == 0  # nothing new
    (tmp_path / "latents" / "layers.3.mlp" / "config.json").write_text(json.dumps({"n_splits": 4}))
    s3.put_file(
        str(tmp_path / "latents" / "layers.3.mlp" / "config.json"), f"{bucket}/latents/layers.3.mlp/config.json"
    )
    done = nact("scan", f"s3://{bucket}/latents/", "--state", state, "-q")
    assert done.exit_code == 2 and "config.json says 4 splits but 3 are here" in done.stderr


def arrow_cache(folder: Path, x: np.ndarray, outer: str, inner: str, batch_rows: int, files: int = 2) -> None:
    """A saved datasets folder of one hook (``x``: rows x context x width) beside token_ids and
    text, its lists fixed-size or with offsets (datasets' Array2D) as asked."""
    import pyarrow as pa
    from test_formats import write_datasets_folder

    rows, context, width = x.shape
    tables = []
    per_file = -(-rows // files)
    for i in range(files):
        part = x[i * per_file : (i + 1) * per_file]
        n = len(part)
        leaf = pa.array(part.reshape(-1))
        middle = (
            pa.FixedSizeListArray.from_arrays(leaf, width)
            if inner == "fixed"
            else pa.ListArray.from_arrays(pa.array(np.arange(0, n * context * width + 1, width, dtype=np.int32)), leaf)
        )
        column = (
            pa.FixedSizeListArray.from_arrays(middle, context)
            if outer == "fixed"
            else pa.ListArray.from_arrays(pa.array(np.arange(0, n * context + 1, context, dtype=np.int32)), middle)
        )
        tables.append(
            pa.table(
                {
                    "token_ids": pa.array([[1] * context] * n, type=pa.list_(pa.int32())),
                    "blocks.4.hook_resid_post": column,
                    "text": pa.array(["a"] * n),
                }
            )
        )
    write_datasets_folder(folder, tables, batch_rows)
    (folder / "cache-1234.arrow").write_bytes(b"a datasets cache file, not data")


@pytest.mark.parametrize("outer, inner", [("var", "var"), ("var", "fixed"), ("fixed", "fixed"), ("file", "fixed")])
def test_an_arrow_cache_is_planned_from_its_message_headers(
    s3, bucket: str, tmp_path: Path, outer: str, inner: str
) -> None:
    pa = pytest.importorskip("pyarrow")
    x = activations(np.random.default_rng(11), 53 * 6, 24, "float32").reshape(53, 6, 24)
    arrow_cache(tmp_path / "cache", x, "var" if outer == "file" else outer, inner, batch_rows=7)
    if outer == "file":  # the IPC file format (magic, the stream, a footer), which pyarrow also writes
        for f in (tmp_path / "cache").glob("data-*.arrow"):
            table = pa.ipc.open_stream(f.read_bytes()).read_all()
            with pa.OSFile(str(f), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                for batch in table.to_batches(max_chunksize=7):
                    writer.write_batch(batch)
    upload(s3, tmp_path / "cache", bucket, "cache")
    reads: list[tuple[int, int]] = []
    read_range = remote.Session.read_range
    monkey = pytest.MonkeyPatch()
    monkey.setattr(remote.Session, "read_range", lambda s, p, a, b: reads.append((a, b)) or read_range(s, p, a, b))
    try:
        result = scan([f"s3://{bucket}/cache/"], chunk_rows=20)
    finally:
        monkey.undo()
    c = result.activity.components["blocks.4.hook_resid_post"]
    assert c.fire_counts.tolist() == fire_counts(x.reshape(-1, 24)) and c.num_vectors == 53 * 6
    local = scan([tmp_path / "cache"]).activity.components["blocks.4.hook_resid_post"]
    assert local.fire_counts.tolist() == c.fire_counts.tolist()
    data = 53 * 6 * 24 * 4
    assert sum(b - a for a, b in reads if a > 0) < data * 1.2  # past the first block: offsets, then the values once
    skipped = scan([f"s3://{bucket}/cache/"], skip_positions=(0,)).activity.components["blocks.4.hook_resid_post"]
    assert skipped.fire_counts.tolist() == fire_counts(x[:, 1:, :].reshape(-1, 24))


def test_a_readers_chunks_are_the_rows_of_a_mapped_slab_local_or_remote(s3, bucket: str, tmp_path: Path) -> None:
    """``chunks``, for callers that want a reader's rows (the engine maps or fetches windows
    itself): an Arrow column's runs and a safetensors tensor, from files and from objects."""
    pytest.importorskip("pyarrow")
    from safetensors.numpy import save_file

    from neuron_activity import CountOptions
    from neuron_activity.scan import plan_for
    from neuron_activity.sources import READERS, discover
    from neuron_activity.sources.base import to_path

    x = activations(np.random.default_rng(15), 23 * 6, 8, "float32").reshape(23, 6, 8)
    arrow_cache(tmp_path / "cache", x, "fixed", "fixed", batch_rows=5)
    save_file({"acts": x.reshape(-1, 8)}, str(tmp_path / "acts.safetensors"))
    upload(s3, tmp_path, bucket, "both")
    for root in (str(tmp_path), f"s3://{bucket}/both"):
        for where, fmt in ((f"{root}/cache/", "arrow"), (f"{root}/acts.safetensors", "safetensors")):
            plan = plan_for(discover([to_path(where)]), CountOptions())
            assert [(s.entry.format, s.entry.storage) for s in plan.slabs][0] == (fmt, "mapped")
            rows = [np.concatenate(list(READERS[fmt].chunks(s, 4))) for s in plan.slabs]
            assert np.array_equal(np.concatenate(rows), x.reshape(-1, 8).view(np.uint32)), where


def test_an_arrow_cache_with_rows_of_different_shapes_is_refused(s3, bucket: str, tmp_path: Path) -> None:
    import pyarrow as pa

    column = pa.array([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0]]], type=pa.list_(pa.list_(pa.float32())))
    table = pa.table({"h": column})
    (tmp_path / "c").mkdir()
    with (
        pa.OSFile(str(tmp_path / "c" / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    upload(s3, tmp_path / "c", bucket, "ragged")
    done = nact("scan", f"s3://{bucket}/ragged/")
    assert done.exit_code == 2 and "column 'h' has rows of different shapes" in done.stderr


def test_an_sae_encodes_a_remote_cache_with_its_windows_fetched_ahead(
    s3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")  # test_sae's helpers
    from test_sae import activations as model_activations
    from test_sae import cache, saelens

    saelens(tmp_path / "sae", "standard")
    cache(tmp_path / "cache", model_activations(seed=3))
    upload(s3, tmp_path / "cache", bucket, "model")
    ahead: list[tuple[int, int]] = []
    fetch_ahead, close = remote.Session.fetch_ahead, remote.Session.close
    left: list[int] = []  # windows fetched ahead and never taken, when each scan ends
    monkeypatch.setattr(
        remote.Session, "fetch_ahead", lambda s, p, a, b, n: ahead.append((a, b)) or fetch_ahead(s, p, a, b, n)
    )
    monkeypatch.setattr(remote.Session, "close", lambda s: left.append(len(s.ahead)) or close(s))
    there = scan([f"s3://{bucket}/model/"], saes=(str(tmp_path / "sae"),), chunk_rows=64, track_last=True)
    here = scan([tmp_path / "cache"], saes=(str(tmp_path / "sae"),), chunk_rows=64, track_last=True)
    assert len(ahead) > 10 and left[0] == 0  # every window was fetched ahead, and taken
    assert list(there.activity.components) == list(here.activity.components)
    for name, c in there.activity.components.items():
        assert c.fire_counts.tolist() == here.activity.components[name].fire_counts.tolist()
        assert c.last_fired.tolist() == here.activity.components[name].last_fired.tolist()


def test_local_files_and_objects_are_not_mixed(s3, bucket: str, tmp_path: Path) -> None:
    make_cache(tmp_path / "cache")
    upload(s3, tmp_path / "cache", bucket, "acts")
    done = nact("scan", f"s3://{bucket}/acts", tmp_path / "cache")
    assert done.exit_code == 2 and "cannot be scanned together" in done.stderr


def test_an_object_replaced_during_the_scan_is_an_error(
    s3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = make_cache(tmp_path / "cache")
    upload(s3, tmp_path / "cache", bucket, "acts")
    target = f"{bucket}/acts/blocks.7.hook_resid_post/shard_001.safetensors"
    replacement = tmp_path / "replacement.safetensors"
    x = truth["blocks.7.hook_resid_post"][377:754].copy()
    save_file({"activations": -x}, str(replacement))  # same size, other values: only the ETag tells
    read_range = remote.Session.read_range
    replaced = []

    def replacing(session, path, start, stop):
        if not replaced and start > 0:  # after planning (headers are read from byte 0), while rows are counted
            s3.put_file(str(replacement), target)
            replaced.append(True)
        return read_range(session, path, start, stop)

    monkeypatch.setattr(remote.Session, "read_range", replacing)
    out = tmp_path / "out.json"
    done = nact("scan", f"s3://{bucket}/acts/", "-o", out, "--threads", "1", "--io-threads", "1")
    assert replaced and done.exit_code == 2, done.output
    assert "changed during the scan" in done.stderr and "ETag" in done.stderr
    assert not out.exists()


def test_an_audit_over_a_prefix_counts_new_objects_only(
    s3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    shards = [activations(rng, 100 + i, 16) for i in range(3)]
    folder = tmp_path / "acts"
    folder.mkdir()
    for i, x in enumerate(shards[:2]):
        save_file({"acts": x}, str(folder / f"shard_{i:03d}.safetensors"))
    upload(s3, folder, bucket, "audit")
    state = tmp_path / "state.safetensors"
    url = f"s3://{bucket}/audit/"
    assert nact("scan", url, "--state", state, "-q").exit_code == 0
    save_file({"acts": shards[2]}, str(folder / "shard_002.safetensors"))
    upload(s3, folder, bucket, "audit")  # the first two again, byte for byte: the same objects
    fetched = []
    read_range = remote.Session.read_range
    monkeypatch.setattr(
        remote.Session, "read_range", lambda s, p, a, b: (a and fetched.append(str(p))) or read_range(s, p, a, b)
    )
    done = nact("scan", url, "--state", state, "-f", "json", "--neurons")
    assert done.exit_code == 0, done.output
    assert set(fetched) == {f"s3://{bucket}/audit/shard_002.safetensors"}  # rows read: the new object's only
    from neuron_activity.counts_file import load_counts

    saved = load_counts(state)
    assert saved.activity.components["acts"].fire_counts.tolist() == fire_counts(np.concatenate(shards))
    assert [s.path for s in saved.shards] == [f"s3://{bucket}/audit/shard_{i:03d}.safetensors" for i in range(3)]
    assert all(s.tag.startswith('"') and s.size > 0 for s in saved.shards)
    # an object replaced after it was counted: named, with what changed, unless --rescan
    save_file({"acts": -shards[0]}, str(folder / "shard_000.safetensors"))
    upload(s3, folder, bucket, "audit")
    done = nact("scan", url, "--state", state, "-q")
    assert done.exit_code == 2 and "shard_000.safetensors" in done.stderr and "ETag" in done.stderr
    assert nact("scan", url, "--state", state, "--rescan", "-q").exit_code == 0
    expected = fire_counts(np.concatenate([-shards[0], shards[1], shards[2]]))
    assert load_counts(state).activity.components["acts"].fire_counts.tolist() == expected


class FlakyProxy(http.server.BaseHTTPRequestHandler):
    """Forwards requests to the S3 server; the first ``failures`` reads of object data get a 503
    ServiceUnavailable, as S3 answers when it sheds load."""

    upstream: str
    failures = 0
    failed = 0
    deny = False  # every object read is refused (403 AccessDenied), as for credentials without rights

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        import http.client

        if type(self).deny and self.command in ("GET", "HEAD") and "list-type" not in self.path:
            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)
            return
        if self.command == "GET" and "Range" in self.headers and type(self).failures > 0:
            type(self).failures -= 1
            type(self).failed += 1
            body = b"<Error><Code>ServiceUnavailable</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        connection = http.client.HTTPConnection(self.upstream, timeout=30)
        connection.request(self.command, self.path, body=body, headers={k: v for k, v in self.headers.items()})
        answer = connection.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header(
            "Content-Length", answer.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        connection.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


def test_s3_faults_503_that_recovers_lasts_and_access_denied(
    s3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import s3fs

    x = activations(np.random.default_rng(8), 640, 16)
    save_file({"acts": x}, str(tmp_path / "shard.safetensors"))
    upload(s3, tmp_path, bucket, "flaky")
    upstream = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    handler = type("Proxy", (FlakyProxy,), {"upstream": upstream, "failures": 5, "failed": 0})  # under nact's tries
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_address[1]}")
    s3fs.S3FileSystem.clear_instance_cache()
    retried = []
    transient = remote.requests.transient
    monkeypatch.setattr(remote.requests, "transient", lambda e: transient(e) and not retried.append(e))
    try:
        result = scan([f"s3://{bucket}/flaky/shard.safetensors"], chunk_rows=64, io_threads=2)
        assert handler.failed == 5 and handler.failures == 0 and len(retried) == 5  # each one nact's retry
        assert result.activity.components["acts"].fire_counts.tolist() == fire_counts(x)
        handler.failures, handler.failed = 10_000, 0  # a store that stays down: exit 2 after the tries, one line
        monkeypatch.setattr(remote.requests, "TRIES", 2)
        done = nact("scan", f"s3://{bucket}/flaky/shard.safetensors", "-o", tmp_path / "out.json")
        assert (
            done.exit_code == 2
            and f"after {remote.requests.TRIES} tries" in done.stderr
            and "reduce your request rate" in done.stderr
        )
        assert handler.failed == 2  # requests the store saw: nact's tries, neither s3fs's nor botocore's
        assert done.stderr.count("\n") == 1 and not (tmp_path / "out.json").exists()
        handler.failures, handler.deny = 0, True  # credentials that may list but not read: at once, no tries
        retried.clear()
        done = nact("scan", f"s3://{bucket}/flaky/", "-o", tmp_path / "out.json")
        assert done.exit_code == 2 and done.stderr.count("\n") == 1 and not retried
        assert f"s3://{bucket}/flaky/shard.safetensors: access denied" in done.stderr
        assert not (tmp_path / "out.json").exists()
    finally:
        proxy.shutdown()
        proxy.server_close()
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()


# --- HTTP -----------------------------------------------------------------------------------------


def test_an_http_object_scans_by_range_requests(web, tmp_path: Path) -> None:
    root, base, handler = web
    rng = np.random.default_rng(2)
    x = activations(rng, 1000, 32)
    save_file({"acts": x}, str(root / "shard.safetensors"))
    result = scan([f"{base}/shard.safetensors"], chunk_rows=100, io_threads=4)
    assert result.activity.components["acts"].fire_counts.tolist() == fire_counts(x)
    ranges = [r for r in handler.requests if r.startswith("GET") and "bytes=" in r]
    assert len(ranges) >= 10  # a window per request, never the whole object at once
    assert not any(r.startswith("GET") and not r.rstrip().endswith(tuple("0123456789")) for r in handler.requests)


def test_a_plan_and_its_count_made_apart_read_each_window_once_and_see_a_change(web) -> None:
    """discover, plan_for and count called one by one, outside any scan: each keeps what it
    learns for its own requests (a window fetched ahead is the one counted, not fetched twice),
    and the plan remembers what each object was, so a count notices one replaced since."""
    from neuron_activity import BadInput, CountOptions
    from neuron_activity.scan import count, plan_for
    from neuron_activity.sources import discover

    root, base, handler = web
    rng = np.random.default_rng(6)
    x = activations(rng, 1000, 32)
    save_file({"acts": x}, str(root / "shard.safetensors"))
    options = CountOptions(chunk_rows=100, threads=1, io_threads=1)  # one thread: windows are fetched ahead
    plan = plan_for(discover([remote.as_path(f"{base}/shard.safetensors")]), options)
    handler.requests.clear()
    result = count(plan, options, "cpu")
    assert result.activity.components["acts"].fire_counts.tolist() == fire_counts(x)
    windows = [r for r in handler.requests if r.startswith("GET")]
    assert len(windows) == len(set(windows)) == 10
    save_file({"acts": -x}, str(root / "shard.safetensors"))  # the same size: only the ETag tells
    with pytest.raises(BadInput, match="changed during the scan .ETag"):
        count(plan, options, "cpu")


def test_what_lasts_as_long_as_a_session_is_refused_outside_one() -> None:
    """Outside a session ``current()`` is a passing one: nothing fetched ahead would ever be taken."""
    passing = remote.current()
    with pytest.raises(RuntimeError, match="outside its session"):
        passing.fetch_ahead(remote.RemotePath("s3://bucket/a.safetensors"), 0, 10)
    with pytest.raises(RuntimeError, match="outside its session"):
        passing.check_unchanged({})
    with remote.session() as running:
        assert remote.current() is running
        running.check_unchanged({})


def test_a_503_that_recovers_is_tried_again(web) -> None:
    root, base, handler = web
    x = activations(np.random.default_rng(3), 64, 8)
    save_file({"acts": x}, str(root / "flaky.safetensors"))
    handler.failures["/flaky.safetensors"] = 3
    result = scan([f"{base}/flaky.safetensors"])
    assert result.activity.components["acts"].fire_counts.tolist() == fire_counts(x)
    assert handler.failures["/flaky.safetensors"] == 0


def test_a_503_that_lasts_ends_after_the_tries_in_one_line(web, tmp_path: Path) -> None:
    root, base, handler = web
    save_file({"acts": activations(np.random.default_rng(4), 64, 8)}, str(root / "down.safetensors"))
    handler.failures["/down.safetensors"] = 10_000
    out = tmp_path / "out.csv"
    done = nact("scan", f"{base}/down.safetensors", "-o", out)
    assert done.exit_code == 2 and done.stderr.count("\n") == 1
    assert f"{base}/down.safetensors" in done.stderr and f"after {remote.requests.TRIES} tries" in done.stderr
    assert not out.exists()


def test_an_http_404_is_no_such_object(web) -> None:
    _, base, _ = web
    done = nact("scan", f"{base}/gone.safetensors")
    assert done.exit_code == 2 and "no such object" in done.stderr


def test_remote_paths_keep_their_urls() -> None:
    path = remote.RemotePath("s3://bucket/run/blocks.3/shard_001.safetensors")
    assert str(path) == "s3://bucket/run/blocks.3/shard_001.safetensors"
    assert str(path.parent) == "s3://bucket/run/blocks.3" and path.suffix == ".safetensors"
    assert str(remote.as_path("https://host/a/b.npy")) == "https://host/a/b.npy"
    with pytest.raises(TypeError):
        open(path, "rb")
    assert remote.transient(TimeoutError()) and not remote.transient(FileNotFoundError())


def test_objects_are_in_natural_order(s3, bucket: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    parts = {n: activations(rng, 10 + n, 8) for n in (10, 2, 1)}
    for n, x in parts.items():
        save_file({"acts": x}, str(tmp_path / f"{n}.safetensors"))
    upload(s3, tmp_path, bucket, "order")
    result = scan([f"s3://{bucket}/order"], track_last=True)
    assert [p.name for p in result.plan.shards] == ["1.safetensors", "2.safetensors", "10.safetensors"]
    stream = np.concatenate([parts[1], parts[2], parts[10]])
    fired = stream > 0
    last = np.where(fired.any(0), len(stream) - 1 - np.argmax(fired[::-1], axis=0), -1)
    assert result.activity.components["acts"].last_fired.tolist() == last.tolist()


def test_what_a_scan_learns_of_objects_belongs_to_that_scan(s3, bucket: str, tmp_path: Path) -> None:
    """Two scans in one process: the second lists and reads the object as it is now (an object
    replaced between them is not a change during a scan), and nothing is kept after a scan."""
    from neuron_activity.remote import objects

    rng = np.random.default_rng(8)
    before, after = activations(rng, 300, 16), activations(rng, 500, 16)
    folder = tmp_path / "acts"
    folder.mkdir()
    save_file({"acts": before}, str(folder / "shard.safetensors"))
    upload(s3, folder, bucket, "again")
    url = f"s3://{bucket}/again/"
    assert scan([url]).activity.components["acts"].fire_counts.tolist() == fire_counts(before)
    assert objects._active.get() is None
    save_file({"acts": after}, str(folder / "shard.safetensors"))
    upload(s3, folder, bucket, "again")
    second = scan([url]).activity.components["acts"]
    assert (second.num_vectors, second.fire_counts.tolist()) == (500, fire_counts(after))
