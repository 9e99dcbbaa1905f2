"""Every bad input, fault and signal ends in one line and a known exit code; memory stays bounded;
nothing is lost. The fuzzer mutates valid shards of every format and checks the guarantee."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import write_shard
from test_end_to_end import nact_executable
from test_formats import write_datasets_folder, write_delphi_module, write_saelens_cache
from typer.testing import CliRunner

from nact_cli.main import app

runner = CliRunner()


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, contains: str = "") -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr and contains in lines[0], lines[0]


def raw_safetensors(path: Path, header: object, data: bytes = b"") -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


# --- bad safetensors headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "data", "contains"),
    [
        (b"[" * 100_000 + b"]" * 100_000, b"", "nested too deeply"),
        (
            {"__metadata__": ["a"], "x": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            "__metadata__ is not a map",
        ),
        (
            b'{"x": {"dtype": "F32", "shape": [1e400, 1], "data_offsets": [0, 4]}}',
            b"\0" * 4,
            "bad entry for tensor 'x'",
        ),
        ({"x": {"dtype": "F32", "shape": [64.9, 8.2], "data_offsets": [0, 4]}}, b"\0" * 4, "bad entry for tensor 'x'"),
        (
            {
                "x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "y": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]},
            },
            b"\0" * 24,
            "overlaps another tensor",
        ),
        (
            {"x": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}},
            b"\0" * 12,
            "the tensors hold 4 bytes, the file has 12",
        ),
        ({"x": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]}}, b"", "every tensor read is empty"),
    ],
)
def test_bad_safetensors_headers(tmp_path: Path, header: object, data: bytes, contains: str) -> None:
    assert_one_line_error(nact("scan", raw_safetensors(tmp_path / "a.safetensors", header, data)), contains)


def test_an_odd_file_name_in_a_folder(tmp_path: Path) -> None:
    write_shard(tmp_path / "1²2.safetensors", {"acts": torch.ones(2, 2)})
    write_shard(tmp_path / "1.safetensors", {"acts": torch.ones(2, 2)})
    result = nact("scan", tmp_path, "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["components"][0]["num_vectors"] == 4


# --- numpy -----------------------------------------------------------------------------------


def npy_with_header(path: Path, header: str, data: bytes = b"") -> Path:
    text = header.encode() + b" " * (-(len(header) + 11) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data)
    return path


@pytest.mark.parametrize(
    ("header", "contains"),
    [
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (-5, 8), }", "not a valid .npy array"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (5, 8]), }", "not a valid .npy array"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (5, 8.5), }", "not a valid .npy array"),
    ],
)
def test_bad_npy_headers(tmp_path: Path, header: str, contains: str) -> None:
    assert_one_line_error(nact("scan", npy_with_header(tmp_path / "a.npy", header, b"\0" * 160)), contains)


def test_npz_members_encrypted_unknown_method_and_twice(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "c.npz", a=np.ones((100, 4)))
    data = bytearray((tmp_path / "c.npz").read_bytes())
    method = data.copy()
    method[8:10] = struct.pack("<H", 99)  # local header: an unknown compression method
    central = method.rfind(b"PK\x01\x02")
    method[central + 10 : central + 12] = struct.pack("<H", 99)
    (tmp_path / "method.npz").write_bytes(bytes(method))
    assert_one_line_error(nact("scan", tmp_path / "method.npz"), "method.npz")
    encrypted = data.copy()
    encrypted[6:8] = struct.pack("<H", 1)
    central = encrypted.rfind(b"PK\x01\x02")
    encrypted[central + 8 : central + 10] = struct.pack("<H", 1)
    (tmp_path / "encrypted.npz").write_bytes(bytes(encrypted))
    assert_one_line_error(nact("scan", tmp_path / "encrypted.npz"), "encrypted")
    with zipfile.ZipFile(tmp_path / "twice.npz", "w") as z:
        for _ in range(2):
            with z.open("a.npy", "w") as f:
                np.save(f, np.ones((3, 2)))
    assert_one_line_error(nact("scan", tmp_path / "twice.npz"), "member 'a.npy' appears twice")


# --- torch.save files -------------------------------------------------------------------------


def test_torch_files_that_are_not_dense_tensors(tmp_path: Path) -> None:
    torch.save({"acts": torch.eye(4).to_sparse()}, tmp_path / "sparse.pt")
    assert_one_line_error(nact("scan", tmp_path / "sparse.pt"), "torch.sparse_coo: nact counts dense tensors")
    nested: dict = {"acts": torch.ones(2, 2)}
    for _ in range(100):
        nested = {"x": nested}
    torch.save(nested, tmp_path / "deep.pt")
    assert_one_line_error(nact("scan", tmp_path / "deep.pt"), "nested deeper than 64 levels")


# --- Arrow, delphi, counts -----------------------------------------------------------------------


def test_arrow_cache_problems(tmp_path: Path) -> None:
    import pyarrow as pa

    write_saelens_cache(tmp_path / "cache", {"h": np.ones((4, 3, 2), np.float32)}, batch_rows=2, files=2)
    (tmp_path / "cache" / "data-00001-of-00002.arrow").unlink()
    assert_one_line_error(
        nact("scan", tmp_path / "cache"), "lists data file data-00001-of-00002.arrow, which is missing"
    )
    folder = tmp_path / "twice"
    folder.mkdir()
    column = pa.array([[[1.0, 2.0]]], type=pa.list_(pa.list_(pa.float32())))
    table = pa.Table.from_arrays([column, column], names=["h", "h"])
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    assert_one_line_error(nact("scan", folder), "column 'h' appears twice")
    # Array2D storage (fixed-size lists of fixed-size lists) with a null position: an error, not
    # the values that happen to lie under the null
    inner = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ones(12, np.float32)), 2, mask=pa.array([False, True] + [False] * 4)
    )
    write_datasets_folder(
        tmp_path / "null_position", [pa.table({"h": pa.FixedSizeListArray.from_arrays(inner, 3)})], 10
    )
    assert_one_line_error(nact("scan", tmp_path / "null_position"), "column 'h' has null values")
    # rows of different shapes: positions per row, or features per position; shapes across batches
    lists = pa.list_(pa.list_(pa.float32()))
    for name, rows in [
        ("ragged_rows", [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0]]]),
        ("ragged_positions", [[[1.0, 2.0], [3.0]]]),
    ]:
        write_datasets_folder(tmp_path / name, [pa.table({"h": pa.array(rows, type=lists)})], 10)
        assert_one_line_error(nact("scan", tmp_path / name), "column 'h' has rows of different shapes")
    table = pa.table({"h": pa.array([[[1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]], type=lists)})
    write_datasets_folder(tmp_path / "reshaped", [table], 1)  # a batch per row
    assert_one_line_error(nact("scan", tmp_path / "reshaped"), "column 'h' changes shape between record batches")


def test_delphi_locations_outside_the_cache(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    def split(name: str, locations: np.ndarray, tokens: np.ndarray) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        save_file(
            {"locations": locations, "activations": np.ones(len(locations), np.float16), "tokens": tokens},
            str(folder / "0_9.safetensors"),
        )
        return folder

    tokens = np.zeros((2, 3), np.int64)
    assert_one_line_error(
        nact("scan", split("neg", np.array([[0, 0, -3]], np.int32), tokens)), "names latent -3, outside"
    )
    assert_one_line_error(
        nact("scan", split("far", np.array([[5, 0, 1]], np.int32), tokens)), "names batch 5, position 0"
    )
    dup = split("dup", np.array([[0, 0, 1]] * 7, np.int32), tokens)
    assert_one_line_error(nact("scan", dup), "fired 7 times in 6 vectors: the cache stores some entries twice")
    assert_one_line_error(
        nact("scan", split("flat", np.array([[0, 0, 1]], np.int32), np.zeros(5, np.int64))), "not [batch, position]"
    )


@pytest.mark.parametrize(
    ("edit", "contains"),
    [
        (lambda t, m: t.__setitem__("sae/num_vectors", np.zeros(0, np.int64)), "num_vectors is not one count"),
        (lambda t, m: m.__setitem__("fire_above", "1/0"), "fire_above '1/0' is not a number"),
        (lambda t, m: m.__setitem__("fire_above", "1e400"), "fire_above '1e400' is beyond every float format"),
        (lambda t, m: m.__setitem__("components", "[" * 10000 + "]" * 10000), "'components' is not valid JSON"),
        (lambda t, m: m.__setitem__("components", '["sae", "sae"]'), "not a list of distinct names"),
    ],
)
def test_edited_counts_files(tmp_path: Path, edit, contains: str) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    nact("scan", SAMPLE_DATA, "-k", "blocks.0.hook_sae_acts", "--save-counts", tmp_path / "c.safetensors", "-q")
    with safe_open(str(tmp_path / "c.safetensors"), "numpy") as f:
        metadata = f.metadata()
    tensors = {
        k.replace("blocks.0.hook_sae_acts", "sae"): v for k, v in load_file(str(tmp_path / "c.safetensors")).items()
    }
    metadata["components"] = '["sae"]'
    edit(tensors, metadata)
    save_file(tensors, str(tmp_path / "e.safetensors"), metadata=metadata)
    assert_one_line_error(nact("report", tmp_path / "e.safetensors"), contains)


def test_huge_numbers_in_options_are_refused_quickly() -> None:
    start = time.perf_counter()
    for args in (
        ["--fire-above", "1e400"],
        ["--fire-above", "1e99999999"],
        ["-t", "1e-99999999"],
        ["--threads", str(10**12)],
        ["--chunk-rows", "-1"],
    ):
        assert_one_line_error(nact("scan", SAMPLE_DATA, *args))
    assert_one_line_error(nact("density", SAMPLE_DATA, "--bins-per-decade", str(10**8)))
    assert time.perf_counter() - start < 20  # a refusal, not a computation


# --- outputs and state -------------------------------------------------------------------------


def test_outputs_respect_the_umask_and_keep_a_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert (
            nact("scan", SAMPLE_DATA, "-o", tmp_path / "new.txt", "--save-counts", tmp_path / "c.safetensors").exit_code
            == 0
        )
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o640
        os.chmod(tmp_path / "new.txt", 0o604)
        assert nact("scan", SAMPLE_DATA, "-o", tmp_path / "new.txt").exit_code == 0
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


def test_a_state_through_a_symlink_stays_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "audit.safetensors"
    link.symlink_to(tmp_path / "real" / "audit.safetensors")
    assert nact("scan", SAMPLE_DATA, "--state", link, "-q").exit_code == 0
    assert link.is_symlink() and (tmp_path / "real" / "audit.safetensors").is_file()
    assert (tmp_path / "real" / "audit.safetensors.lock").exists()  # the lock of the file, not of the link
    from neuron_activity.files import locked

    with locked(tmp_path / "real" / "audit.safetensors"):
        assert_one_line_error(nact("scan", SAMPLE_DATA, "--state", link), "another nact audit is using it")


def run_nact(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.Popen(
        [nact_executable(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **kwargs
    )


def big_shard(path: Path, rows: int = 1 << 16, width: int = 4096) -> Path:
    header = json.dumps(
        {"acts": {"dtype": "F32", "shape": [rows, width], "data_offsets": [0, rows * width * 4]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        block = np.ones((1024, width), np.float32).tobytes()
        for _ in range(rows // 1024):
            f.write(block)
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_in_130_and_leaves_no_temporary_file(tmp_path: Path, sig: int) -> None:
    (tmp_path / "data").mkdir()
    big_shard(tmp_path / "data" / "big.safetensors", rows=1 << 20, width=16)  # 64 MiB, read a row at a time: slow
    out = tmp_path / "out"
    out.mkdir()
    proc = run_nact(
        "scan",
        str(tmp_path / "data"),
        "--save-counts",
        str(out / "c.safetensors"),
        "--chunk-rows",
        "1",
        "--threads",
        "1",
    )
    time.sleep(1.5)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the scan ended before the signal")
    assert proc.returncode == 130, stderr
    assert stderr.decode().splitlines() == ["Error: interrupted"]
    assert list(out.iterdir()) == []


def test_stdout_that_goes_away_or_is_full(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {f"k{i}": torch.ones(3, 2) for i in range(3000)})  # a long output
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    gone = subprocess.run(
        [nact_executable(), "scan", str(tmp_path), "-f", "csv"], stdout=write_end, stderr=subprocess.PIPE
    )
    os.close(write_end)
    assert (gone.returncode, gone.stderr) == (141, b"")  # as a shell reports a tool ended by SIGPIPE
    full = subprocess.run(
        [nact_executable(), "scan", str(SAMPLE_DATA)], stdout=open("/dev/full", "w"), stderr=subprocess.PIPE, text=True
    )
    assert (full.returncode, full.stderr) == (2, "Error: stdout: cannot write: No space left on device\n")
    closed = subprocess.run(f"{nact_executable()} scan {SAMPLE_DATA} >&-", shell=True, capture_output=True, text=True)
    assert (closed.returncode, closed.stderr) == (
        2,
        "Error: stdout: is closed: nowhere to write the result (give -o FILE)\n",
    )


def test_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    name = os.fsencode(str(tmp_path)) + b"/out-\xff.json"
    done = subprocess.run(
        [nact_executable().encode(), b"scan", os.fsencode(str(SAMPLE_DATA)), b"-f", b"json", b"-o", name],
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert os.path.exists(name)
    bad = subprocess.run(
        [nact_executable().encode(), b"scan", os.fsencode(str(tmp_path)) + b"/missing-\xff"], capture_output=True
    )
    assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1 and b"Traceback" not in bad.stderr


# --- the fuzzer --------------------------------------------------------------------------------


def valid_shards(folder: Path) -> dict[str, Path]:
    """One small valid file (or folder) of every format."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((40, 6)), 0).astype(np.float32)
    out = {}
    write_shard(
        folder / "s" / "a.safetensors",
        {"acts": torch.from_numpy(x), "b": torch.from_numpy(x[:, :3]).to(torch.bfloat16)},
    )
    out["safetensors"] = folder / "s" / "a.safetensors"
    np.save(folder / "a.npy", x)
    out["npy"] = folder / "a.npy"
    np.savez(folder / "stored.npz", a=x, b=x[:5])
    out["npz"] = folder / "stored.npz"
    np.savez_compressed(folder / "packed.npz", a=x)
    out["npz-compressed"] = folder / "packed.npz"
    torch.save({"acts": torch.from_numpy(x), "meta": {"n": 1}}, folder / "a.pt")
    out["torch"] = folder / "a.pt"
    write_delphi_module(
        folder / "latents" / "m", np.maximum(rng.standard_normal((2, 5, 8)), 0).astype(np.float16), [(0, 7)]
    )
    out["delphi"] = folder / "latents" / "m" / "0_7.safetensors"
    write_saelens_cache(folder / "cache", {"h": x.reshape(10, 4, 6)}, batch_rows=3, files=1)
    out["arrow"] = folder / "cache" / "data-00000-of-00001.arrow"
    nact("scan", folder / "s", "--save-counts", folder / "counts.safetensors", "-q")
    out["counts"] = folder / "counts.safetensors"
    return out


FORMATS = ["safetensors", "npy", "npz", "npz-compressed", "torch", "delphi", "arrow", "counts"]


@settings(
    max_examples=int(os.environ.get("NACT_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    fmt=st.sampled_from(FORMATS),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_mutated_files_never_crash(
    tmp_path_factory, fmt: str, edits: list[tuple[float, int]], cut: float | None
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    target = valid_shards(folder)[fmt]
    data = bytearray(target.read_bytes())
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    target.write_bytes(bytes(data))
    what = {"arrow": target.parent, "delphi": target.parent.parent}.get(fmt, target)
    command = ["report", what] if fmt == "counts" else ["scan", what, "-f", "json"]
    if fmt == "arrow":  # pyarrow runs in a process of its own here: a crash must not take the tests down
        done = subprocess.run([nact_executable(), *map(str, command)], capture_output=True, text=True, timeout=120)
        code, stderr = done.returncode, done.stderr
    else:
        result = nact(*command)
        code, stderr = result.exit_code, result.stderr
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert code in (0, 2), (code, stderr)
    assert "Traceback" not in stderr
    if code == 2:
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), stderr


def test_a_shard_truncated_while_it_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mapped window faults (SIGBUS) in the C kernel: a one-line error, not a dead process.

    The file is cut after it is mapped and before the kernel reads it, so the fault is certain
    (a timer racing the scan was not: on a fast machine the cut could land before planning).
    """
    from neuron_activity import BadInput, cpu_counting, native, scan

    if native.NATIVE_PROBLEM is not None:
        pytest.skip(f"no C kernel here: {native.NATIVE_PROBLEM}")
    path = big_shard(tmp_path / "big.safetensors", rows=1 << 10, width=4096)
    real_update = cpu_counting.NativeCounter.update

    def cut_then_update(self, bits, first_vector=0):
        os.truncate(path, 4096)
        return real_update(self, bits, first_vector)

    monkeypatch.setattr(cpu_counting.NativeCounter, "update", cut_then_update)
    with pytest.raises(BadInput) as caught:
        scan([path], chunk_rows=1 << 10, threads=1, kernel="native")
    assert str(caught.value) == f"{path}: changed during the scan: it was truncated while being counted"


def test_widths_are_bounded_by_the_memory_their_counts_need(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No fixed bound on widths: a layer, a delphi module or an SAE too wide for this machine is
    one line that says how much memory it would need, before anything is allocated."""
    from neuron_activity import memory

    monkeypatch.setattr(memory, "available", lambda: 1 << 20)  # a machine with 1 MiB to give
    write_shard(tmp_path / "wide" / "a.safetensors", {"acts": torch.ones(2, 40_000)})
    done = nact("scan", tmp_path / "wide")
    assert done.exit_code == 2 and done.stderr == (
        f"Error: {tmp_path / 'wide' / 'a.safetensors'}: counting 1 component(s), the widest 'acts' (40,000 neurons) "
        "needs 1.5 MiB of memory, more than this machine has available (1.0 MiB)\n"
    )
    write_shard(tmp_path / "narrow" / "a.safetensors", {"acts": torch.ones(2, 4_000)})
    assert nact("scan", tmp_path / "narrow").exit_code == 0
