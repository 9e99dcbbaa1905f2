"""Benchmark of ``nact scan`` against ``cat`` and the naive reference loop, measured in one run.

    python bench/scan_bench.py                       # 4 GiB fp32 and bf16 shards, 3 runs each
    python bench/scan_bench.py --sizes 1 4 16 --dtypes f32
    python bench/scan_bench.py --device cuda --device cpu
    python bench/scan_bench.py --sizes 2 --dtypes f32 --no-naive --cold   # also from disk
    python bench/scan_bench.py --startup-only --baseline-nact /path/to/other/venv/bin/nact
    python bench/scan_bench.py --sizes 2 --dtypes f32 --no-naive --audit   # an audit's digests, warm and cold
    python bench/scan_bench.py --sizes 4 --no-naive --stats   # the cost of --stats, whole and net of start-up

Generates its own shards in a temporary folder (or --folder), reads each once so it sits in the
page cache, then times in alternation, several runs each: ``cat FILE > /dev/null``, the naive
reference loop (safetensors ``get_slice`` in batches, ``torch.gt(x, 0).sum(dim=0, dtype=float)``,
as ``NeuronActivityMetric`` does) and ``nact scan FILE``. Every time is a whole process, start-up
included. Prints medians, throughputs, the ratios nact/cat and nact/naive, and nact's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1 << 30
ROOT = Path(__file__).resolve().parent.parent

NAIVE = r"""
import sys, time, torch
from safetensors import safe_open
path, batch = sys.argv[1], int(sys.argv[2])
with safe_open(path, framework="pt") as f:
    for key in f.keys():
        s = f.get_slice(key)
        rows = s.get_shape()[0]
        counts = None
        for start in range(0, rows, batch):
            x = s[start:start + batch]
            c = torch.gt(x, 0).sum(dim=0, dtype=torch.float)
            counts = c if counts is None else counts + c
        print(key, int((counts == 0).sum()))
"""


def write_shard(path: Path, size_bytes: int, dtype: str, features: int) -> None:
    """A safetensors shard of ReLU-like activations (most values zero), written block by block."""
    itemsize = 4 if dtype == "f32" else 2
    rows = size_bytes // (features * itemsize)
    header = json.dumps(
        {
            "acts": {
                "dtype": "F32" if dtype == "f32" else "BF16",
                "shape": [rows, features],
                "data_offsets": [0, rows * features * itemsize],
            }
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    rng = np.random.default_rng(0)
    block_rows = max(1, (64 << 20) // (features * itemsize))
    values = np.maximum(rng.standard_normal((block_rows, features), dtype=np.float32) - 1.5, 0)
    values[:, : features // 10] = 0  # some dead neurons
    raw = values if dtype == "f32" else (values.view(np.uint32) >> 16).astype(np.uint16)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        left = rows
        while left:
            n = min(left, block_rows)
            f.write(raw[:n].tobytes())
            left -= n


GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


def timed(cmd: list[str], shell: bool = False) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command.

    The peak RSS comes from GNU time where present: the rusage of a child forked from this process
    would also count pages it shared with this process before exec.
    """
    with tempfile.NamedTemporaryFile("r") as rss:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name] if GNU_TIME else []
        line = wrapped + (["sh", "-c", " ".join(cmd)] if shell else cmd)
        start = time.perf_counter()
        proc = subprocess.Popen(line, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}")
        peak_kb = int(rss.read().split()[-1]) if GNU_TIME else usage.ru_maxrss
    return elapsed, peak_kb * 1024


def nact_cmd(path: Path, device: str, extra: list[str]) -> list[str]:
    exe = shutil.which("nact") or str(Path(sys.executable).parent / "nact")
    return [exe, "scan", str(path), "--format", "json", "--device", device, *extra]


def median_of(cmd: list[str], runs: int, shell: bool = False) -> tuple[float, int]:
    times, peaks = zip(*(timed(cmd, shell) for _ in range(runs)))
    return statistics.median(times), max(peaks)


def bench_file(path: Path, devices: list[str], runs: int, naive: bool, extra: list[str], stats: bool = False) -> None:
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # into the page cache
    results: dict[str, list[tuple[float, int]]] = {}
    commands = {"cat": (["cat", str(path), ">", "/dev/null"], True)}
    if naive:
        commands["naive"] = ([sys.executable, "-c", NAIVE, str(path), "4096"], False)
    for d in devices:
        commands[f"nact[{d}]"] = (nact_cmd(path, d, extra), False)
        if stats:
            commands[f"nact[{d}] --stats"] = (nact_cmd(path, d, [*extra, "--stats"]), False)
    if stats:  # start-up: the same scan of a 64 x 32 shard
        tiny = path.parent / "stats_tiny.safetensors"
        write_shard(tiny, 64 * 32 * 4, "f32", 32)
        commands["start-up"] = (nact_cmd(tiny, devices[0], [*extra, "--stats"]), False)
    for _ in range(runs):  # alternate, so drift in the machine hits every contender alike
        for name, (cmd, shell) in commands.items():
            results.setdefault(name, []).append(timed(cmd, shell))
    print(f"\n{path.name}: {size / GIB:.2f} GiB, {runs} runs each (median wall time, process start included)")
    med = {name: statistics.median(t for t, _ in r) for name, r in results.items()}
    for name, r in results.items():
        peak = max(p for _, p in r)
        print(f"  {name:12s} {med[name]:8.3f} s  {size / med[name] / 1e9:7.2f} GB/s  peak RSS {peak / 1e6:8.1f} MB")
    for d in devices:
        line = f"  nact[{d}]/cat throughput: {med['cat'] / med[f'nact[{d}]']:.2f}x"
        if naive:
            line += f"   nact[{d}]/naive: {med['naive'] / med[f'nact[{d}]']:.2f}x"
        print(line)
        if stats:
            plain, with_stats, start = med[f"nact[{d}]"], med[f"nact[{d}] --stats"], med["start-up"]
            print(
                f"  nact[{d}] --stats / nact[{d}]: {with_stats / plain:.2f}x whole process, "
                f"{(with_stats - start) / (plain - start):.2f}x net of start-up ({start:.3f} s)"
            )
    if stats:
        (path.parent / "stats_tiny.safetensors").unlink()


def bench_audit(path: Path, runs: int, extra: list[str]) -> None:
    """An audit (``--state``: content digests recorded as the shard is counted) against the same
    scan saving its counts (``--save-counts``), warm and evicted, net of start-up (a 16-byte scan)."""
    exe = shutil.which("nact") or str(Path(sys.executable).parent / "nact")
    out = path.parent / "bench-counts.safetensors"
    tiny = path.parent / "tiny" / "t.safetensors"
    tiny.parent.mkdir(exist_ok=True)
    from safetensors.numpy import save_file

    save_file({"a": np.ones((2, 2), np.float32)}, str(tiny))

    def run(target: Path, mode: str, cold: bool) -> float:
        out.unlink(missing_ok=True)
        if cold:
            evict(target)
        return timed([exe, "scan", str(target), mode, str(out), "-q", *extra])[0]

    size = path.stat().st_size
    for cold in (False, True):
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        times: dict[str, list[float]] = {}
        for _ in range(runs):
            for mode in ("--save-counts", "--state"):
                times.setdefault(mode, []).append(run(path, mode, cold))
            times.setdefault("start-up", []).append(run(tiny, "--save-counts", False))
        med = {m: statistics.median(t) for m, t in times.items()}
        net = {m: med[m] - med["start-up"] for m in ("--save-counts", "--state")}
        print(f"\n{path.name} ({'evicted' if cold else 'cached'}), {runs} runs: median wall time")
        for m in ("--save-counts", "--state", "start-up"):
            print(f"  {m:14s} {med[m]:7.3f} s")
        print(
            f"  net of start-up: --save-counts {size / net['--save-counts'] / 1e9:.2f} GB/s, "
            f"--state {size / net['--state'] / 1e9:.2f} GB/s: the audit takes {net['--state'] / net['--save-counts']:.2f}x"
        )
    out.unlink(missing_ok=True)
    shutil.rmtree(tiny.parent)


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (clean pages; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_cold(path: Path, runs: int, extra: list[str]) -> None:
    """``cat`` and ``nact scan`` each on the file just evicted from the page cache, in alternation;
    nact's time also net of its start-up (a scan of a tiny file, measured alongside)."""
    size = path.stat().st_size
    tiny = path.parent / "cold_tiny.safetensors"
    write_shard(tiny, 64 * 32 * 4, "f32", 32)
    times: dict[str, list[float]] = {"cat": [], "nact[cpu]": [], "start-up": []}
    for _ in range(runs):
        evict(path)
        times["cat"].append(timed(["cat", str(path), ">", "/dev/null"], True)[0])
        evict(path)
        times["nact[cpu]"].append(timed(nact_cmd(path, "cpu", extra))[0])
        times["start-up"].append(timed(nact_cmd(tiny, "cpu", []))[0])
    tiny.unlink()
    med = {name: statistics.median(t) for name, t in times.items()}
    net = med["nact[cpu]"] - med["start-up"]
    print(f"\n{path.name}: {size / GIB:.2f} GiB, cold (evicted before each run), medians of {runs}")
    print(f"  cat          {med['cat']:8.3f} s  {size / med['cat'] / 1e9:7.2f} GB/s")
    print(
        f"  nact[cpu]    {med['nact[cpu]']:8.3f} s  {size / med['nact[cpu]'] / 1e9:7.2f} GB/s"
        f"   net of start-up ({med['start-up']:.3f} s): {size / net / 1e9:.2f} GB/s"
    )
    print(f"  nact[cpu]/cat throughput: {med['cat'] / med['nact[cpu]']:.2f}x, net of start-up {med['cat'] / net:.2f}x")


def startup(folder: Path, runs: int, baseline: str | None = None) -> None:
    """Start-up against ``python -c "import numpy"`` (the least a numpy tool can start in), in
    alternation: numpy and Typer imported, a scan of a tiny shard to JSON, of sample_data/ to
    JSON, and ``nact --help``; with ``baseline`` (another install's ``nact``), its scans too."""
    exe = shutil.which("nact") or str(Path(sys.executable).parent / "nact")
    tiny = folder / "tiny.safetensors"
    write_shard(tiny, 64 * 32 * 4, "f32", 32)
    commands = {
        'python -c "import numpy"': [sys.executable, "-c", "import numpy"],
        'python -c "import numpy, typer"': [sys.executable, "-c", "import numpy, typer"],  # a Typer CLI's floor
        "nact scan tiny.safetensors --format json": [exe, "scan", str(tiny), "--format", "json"],
        "nact scan sample_data/ --format json": [exe, "scan", str(ROOT / "sample_data"), "--format", "json"],
        "nact --help": [exe, "--help"],
    }
    if baseline:
        commands["baseline: nact scan tiny.safetensors --format json"] = [
            baseline,
            "scan",
            str(tiny),
            "--format",
            "json",
        ]
        commands["baseline: nact scan sample_data/ --format json"] = [
            baseline,
            "scan",
            str(ROOT / "sample_data"),
            "--format",
            "json",
        ]
        commands["baseline: nact --help"] = [baseline, "--help"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            times[name].append(timed(cmd)[0])
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians['python -c "import numpy"']
    print(f"\nstart-up, medians of {runs} in alternation (whole processes):")
    for name, med in medians.items():
        print(f"  {name:52s} {med:6.3f} s  {med / base:5.2f}x import numpy")
    if baseline:
        for name in ("nact scan tiny.safetensors --format json", "nact scan sample_data/ --format json", "nact --help"):
            delta = (medians[name] - medians[f"baseline: {name}"]) * 1000
            print(f"  {name:52s} {delta:+6.1f} ms against the baseline")
    tiny.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[4.0], help="shard sizes in GiB")
    parser.add_argument("--dtypes", nargs="+", default=["f32", "bf16"], choices=["f32", "bf16"])
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", action="append", help="nact --device (repeatable; default cpu)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop (slow)")
    parser.add_argument("--folder", type=Path, help="where to write shards (default: a temp folder)")
    parser.add_argument("--nact-args", default="", help="extra arguments for nact scan, e.g. '--threads 2'")
    parser.add_argument("--startup-runs", type=int, default=21, help="runs of each start-up command")
    parser.add_argument("--startup-only", action="store_true", help="time start-up only")
    parser.add_argument("--baseline-nact", help="another install's nact executable, timed beside this one's")
    parser.add_argument("--cold", action="store_true", help="also time each f32 file evicted from the page cache")
    parser.add_argument("--audit", action="store_true", help="also time an audit (--state) against --save-counts")
    parser.add_argument("--stats", action="store_true", help="also time nact scan --stats beside the plain scan")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="nact-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}, numpy {np.__version__}, folder {folder}")
    try:
        startup(folder, args.startup_runs, args.baseline_nact)
        for size in [] if args.startup_only else args.sizes:
            for dtype in args.dtypes:
                path = folder / f"bench_{dtype}_{size:g}gib.safetensors"
                if not path.exists():
                    write_shard(path, int(size * GIB), dtype, args.features)
                bench_file(
                    path, args.device or ["cpu"], args.runs, not args.no_naive, args.nact_args.split(), args.stats
                )
                if args.cold and dtype == "f32":
                    bench_cold(path, args.runs, args.nact_args.split())
                if args.audit:
                    bench_audit(path, args.runs, args.nact_args.split())
                if args.folder is None:
                    path.unlink()
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
