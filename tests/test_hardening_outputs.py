"""Hardening of what nact writes and how it ends: outputs that are devices or FIFOs, results that
cannot reach stdout, temporary files, names shown on a terminal, output formats, interrupts.

Never point a test at the real /dev/null as an output: a bug would replace it. A replica device
(the same major and minor numbers) in a scratch folder behaves the same and costs nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA
from safetensors.numpy import save_file
from test_end_to_end import nact_executable
from test_hardening import assert_one_line_error, nact

KEY = "blocks.0.hook_sae_acts"


@pytest.fixture(scope="module")
def counts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("counts") / "c.safetensors"
    assert nact("scan", SAMPLE_DATA, "-k", KEY, "--save-counts", path, "-q").exit_code == 0
    return path


def replica_null(path: Path) -> Path:
    """A character device like /dev/null (1, 3), made in a scratch folder."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root here")
    return path


class FifoReader:
    """A FIFO and a thread that reads it to the end (every writer gone), as a pipe's reader does."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path, self.data = path, b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            self.data = f.read()

    def received(self) -> bytes:
        self.thread.join(30)
        return self.data


def output_runs(counts: Path) -> Iterator[tuple[str, Callable[[Path], list[object]], bytes]]:
    """Every output flag, as (name, the arguments that write to a path, how its content starts)."""
    yield "scan -o", lambda p: ["scan", SAMPLE_DATA, "-f", "csv", "-o", p], b"component,"
    yield "scan --save-counts", lambda p: ["scan", SAMPLE_DATA, "-q", "--save-counts", p], b""
    yield "scan --save-sparsity", lambda p: ["scan", SAMPLE_DATA, "-k", KEY, "-q", "--save-sparsity", p], b""
    yield "report -o", lambda p: ["report", counts, "-f", "json", "-o", p], b"{"
    yield "report --save-sparsity", lambda p: ["report", counts, "-q", "--save-sparsity", p], b""
    yield "merge -o", lambda p: ["merge", counts, "-o", p], b""
    yield "density --plot", lambda p: ["density", SAMPLE_DATA, "--plot", p], b"\x89PNG"


@pytest.mark.parametrize("which", [name for name, _, _ in output_runs(Path())])
def test_an_output_that_is_a_device_or_fifo_is_written_in_place(tmp_path: Path, counts: Path, which: str) -> None:
    """A regular file is written to a temporary and renamed; a device or FIFO is written where
    it is, never replaced by a regular file."""
    if which == "density --plot":
        pytest.importorskip("matplotlib")
    args, starts = next((a, s) for n, a, s in output_runs(counts) if n == which)
    device = replica_null(tmp_path / "null.png")
    done = nact(*args(device))
    assert done.exit_code == 0, done.stderr
    assert stat.S_ISCHR(device.stat().st_mode) and device.stat().st_rdev == os.makedev(1, 3)
    fifo = FifoReader(tmp_path / "fifo.png")
    done = nact(*args(fifo.path))
    assert done.exit_code == 0, done.stderr
    data = fifo.received()
    assert stat.S_ISFIFO(fifo.path.stat().st_mode)
    assert len(data) > 0 and data.startswith(starts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.png", "null.png"]  # no temporary left


def test_a_state_that_is_a_device_is_refused(tmp_path: Path) -> None:
    device = replica_null(tmp_path / "state")
    assert_one_line_error(
        nact("scan", SAMPLE_DATA, "--state", device),
        f"{device}: is not a regular file (a device or FIFO): a state is read back and replaced",
    )
    assert stat.S_ISCHR(device.stat().st_mode)


def run(args: list[object], stdout: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nact_executable(), *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120
    )


def test_a_result_that_cannot_reach_stdout_writes_nothing(tmp_path: Path) -> None:
    """stdout first, then the files (an audit's state last): a run that fails to print (stdout
    full, closed, or a pipe whose reader left) exits 2 and writes and advances nothing."""
    out = tmp_path / "out"
    out.mkdir()
    with open("/dev/full", "w") as full:
        for args in (
            ["scan", SAMPLE_DATA, "--save-counts", out / "c.safetensors"],
            ["scan", SAMPLE_DATA, "--state", out / "state.safetensors"],
            ["density", SAMPLE_DATA, "--plot", out / "figure.png"],
        ):
            done = run(args, full)
            assert (done.returncode, done.stderr) == (2, "Error: stdout: cannot write: No space left on device\n")
    closed = subprocess.run(
        f"{nact_executable()} scan {SAMPLE_DATA} --state {out / 'state.safetensors'} >&-",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert closed.returncode == 2 and "stdout: is closed" in closed.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        gone = run(["scan", SAMPLE_DATA, "--save-counts", out / "c.safetensors", "-o", "/dev/stdout"], write_end)
    finally:
        os.close(write_end)
    assert (gone.returncode, gone.stderr) == (2, "Error: /dev/stdout: cannot write: Broken pipe\n")
    assert [p.name for p in out.iterdir() if not p.name.endswith(".lock")] == []

    assert nact("scan", SAMPLE_DATA, "--state", out / "state.safetensors", "-q").exit_code == 0
    before = (out / "state.safetensors").read_bytes()
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "x.safetensors").write_bytes((SAMPLE_DATA / "shard_000.safetensors").read_bytes())
    with open("/dev/full", "w") as full:
        done = run(["scan", SAMPLE_DATA, tmp_path / "more", "--state", out / "state.safetensors"], full)
    assert done.returncode == 2
    assert (out / "state.safetensors").read_bytes() == before  # the audit did not advance
    done = nact("scan", SAMPLE_DATA, "--save-counts", out / "c.safetensors", "--fail-above", "0.01", "-q")
    assert done.exit_code == 1 and (out / "c.safetensors").is_file()  # a breach is an outcome: files stand


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_temporary_files_of_killed_runs_are_removed(tmp_path: Path) -> None:
    """Temporaries are named .NAME.nact-PID-XXXXXXXX.tmp and locked while they live: a later
    write in the same folder removes those of processes that are gone, and only those."""
    import fcntl

    stale = tmp_path / f".c.safetensors.nact-{dead_pid()}-abcd1234.tmp"
    stale.write_bytes(b"x" * 4096)  # what a SIGKILLed audit leaves behind
    living = tmp_path / f".c.safetensors.nact-{os.getppid()}-abcd1234.tmp"  # a process that runs
    living.write_bytes(b"")
    held = tmp_path / f".other.nact-{dead_pid()}-zzzz9999.tmp"  # locked: its writer lives elsewhere
    held.write_bytes(b"")
    mine = tmp_path / "c.safetensors.nact-1-abcd1234.tmp"  # not a name nact gives its temporaries
    mine.write_bytes(b"")
    with open(held, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert nact("scan", SAMPLE_DATA, "--save-counts", tmp_path / "c.safetensors", "-q").exit_code == 0
    assert not stale.exists()
    assert living.exists() and held.exists() and mine.exists()


def test_names_are_shown_with_control_characters_escaped(tmp_path: Path) -> None:
    """File and key names are shown escaped in tables, CSV, Markdown and every stderr line;
    JSON keeps them exact (it escapes them itself)."""
    name = "a\x1b[2J\x1b]0;owned\x07\u202e"
    np.save(tmp_path / f"{name}.npy", np.eye(3, dtype=np.float32))
    save_file({"k\x1b[31m": np.eye(2, dtype=np.float32)}, str(tmp_path / "b.safetensors"))
    shown = "a\\x1b[2J\\x1b]0;owned\\x07\\u202e"
    for fmt in ("table", "csv", "markdown"):
        done = nact("scan", tmp_path, "-f", fmt)
        assert done.exit_code == 0
        assert "\x1b" not in done.stdout and "\u202e" not in done.stdout
        assert shown in done.stdout and "k\\x1b[31m" in done.stdout
    document = json.loads(nact("scan", tmp_path, "-f", "json").stdout)
    assert {c["component"] for c in document["components"]} == {name, "k\x1b[31m"}
    missing = nact("scan", tmp_path / "gone\x1b[31m")
    assert_one_line_error(missing, "gone\\x1b[31m")
    assert "\x1b" not in missing.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["-o", "{tmp}/out.xlsx"], "nact does not know the format of a .xlsx file"),
        (["-o", "{tmp}/x.json", "-f", "csv"], "its extension .json says json, --format says csv"),
        (["-o", "{tmp}/x.md", "-f", "table"], "its extension .md says markdown, --format says table"),
    ],
)
def test_an_output_extension_that_is_unknown_or_contradicts_the_format(tmp_path: Path, args, error) -> None:
    """Checked before anything is read: the input here does not even exist."""
    args = [a.format(tmp=tmp_path) for a in args]
    for command in (["scan", tmp_path / "missing"], ["report", tmp_path / "missing.safetensors"]):
        assert_one_line_error(nact(*command, *args), error)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        (["-o", "x.csv"], "component,"),
        (["-o", "x.json"], "{"),
        (["-o", "x.md"], "Dead neurons"),
        (["-o", "x.txt"], "Dead neurons"),
        (["-o", "x.txt", "-f", "csv"], "component,"),
        (["-o", "x.xlsx", "-f", "csv"], "component,"),  # --format says what it is
        (["-o", "x", "-f", "json"], "{"),
        (["-o", "x"], "Dead neurons"),
    ],
)
def test_output_extensions_that_agree(tmp_path: Path, args: list[str], starts: str) -> None:
    args[1] = str(tmp_path / args[1])
    assert nact("scan", SAMPLE_DATA, *args).exit_code == 0
    assert Path(args[1]).read_text().startswith(starts)


def test_a_shard_truncated_between_planning_and_reading(tmp_path: Path) -> None:
    """Byte-swapped and Fortran-ordered arrays, which their reader maps itself: changed during
    the scan (it was an internal error: mmap length is greater than file size)."""
    from neuron_activity import BadInput, scan

    x = np.random.default_rng(0).random((4096, 64)).astype(np.float32)
    for name, array in (("swapped", x.astype(">f4")), ("fortran", np.asfortranarray(x))):
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        with pytest.raises(BadInput, match="changed during the scan: now 2000 bytes"):
            scan([path], on_plan=lambda plan, path=path: os.truncate(path, 2000), chunk_rows=100, threads=1)


# --- interrupts ----------------------------------------------------------------------------------


def wide_sae_scan(folder: Path) -> tuple[Path, Path]:
    """A SAELens checkpoint of 16,384 latents over 512 inputs and a cache to encode: seconds of
    matrix products (BLAS threads busy) to interrupt."""
    rng = np.random.default_rng(0)
    d_in, d_sae, rows = 512, 16384, 32768
    sae = folder / "sae"
    sae.mkdir(parents=True)
    weights = {
        "W_enc": (rng.standard_normal((d_in, d_sae)) * 0.05).astype(np.float32),
        "b_enc": np.zeros(d_sae, np.float32),
        "W_dec": (rng.standard_normal((d_sae, d_in)) * 0.05).astype(np.float32),
        "b_dec": np.zeros(d_in, np.float32),
    }
    save_file(weights, str(sae / "sae_weights.safetensors"))
    cfg = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "architecture": "standard",
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"hook_name": "blocks.6.hook_resid_pre", "sae_lens_version": "6.5.1"},
    }
    (sae / "cfg.json").write_text(json.dumps(cfg))
    (folder / "cache").mkdir()
    acts = rng.standard_normal((rows, d_in)).astype(np.float32)
    save_file({"blocks.6.hook_resid_pre": acts}, str(folder / "cache" / "a.safetensors"))
    return folder / "cache", sae


def test_a_signal_during_an_sae_encode_ends_in_130(tmp_path: Path) -> None:
    """A Ctrl-C or SIGTERM while the counting thread is inside a BLAS product: always one line
    and exit 130, never a hang in OpenBLAS's exit handler or a crash, and no temporary file.
    Signals land at different moments (loading, planning, encoding); a run that hangs is
    killed by the timeout and fails the test."""
    cache, sae = wide_sae_scan(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "NO_COLOR": "1"}
    for i in range(10):
        proc = subprocess.Popen(
            [nact_executable(), "scan", str(cache), "--sae", str(sae), "--save-counts", str(out / "c.safetensors")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        time.sleep(0.2 + 0.13 * i)
        proc.send_signal(signal.SIGINT if i % 2 else signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"run {i}: still running 30 s after the signal")
        if proc.returncode == 0:
            continue  # it ended before the signal
        assert (proc.returncode, stderr) == (130, b"Error: interrupted\n"), i
        assert list(out.iterdir()) == []


HANDLERS_LINE = next(  # the line of cli/entry.py that installs the SIGINT handler
    i
    for i, line in enumerate((Path(__file__).parent.parent / "cli" / "entry.py").read_text().splitlines(), 1)
    if line.startswith("signal.signal(signal.SIGINT")
)


def test_a_ctrl_c_at_start_up_is_one_line(tmp_path: Path) -> None:
    """However early it comes, no traceback from nact's code: one line and 130 (or, before
    Python has started handling signals, the process ends by the signal itself, as any program
    does). Python's own start-up (its site module, a venv's .pth files) and the console script's
    line that imports nact's entry module come before any code of nact's runs: out of its hands.
    The entry module installs its handlers as its first statements."""
    for delay in (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.15):
        proc = subprocess.Popen(
            [nact_executable(), "scan", str(SAMPLE_DATA)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        frames = re.findall(rb'File "([^"]+)", line (\d+)', stderr)
        ours = [(f, int(n)) for f, n in frames if re.search(rb"/(cli|nact_cli|neuron_activity)/", f)]
        if frames and all(f.endswith((b"/__init__.py", b"/entry.py")) and n < HANDLERS_LINE for f, n in ours):
            continue  # interrupted before nact's first statement (or its handlers, the first ones, were set)
        assert b"Traceback" not in stderr, (delay, stderr)
        assert (proc.returncode, stderr) in ((130, b"Error: interrupted\n"), (-signal.SIGINT, b""), (0, b"")), delay
