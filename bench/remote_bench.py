"""Remote scans on a local S3 server: nact against reading the same objects with s3fs.

    python bench/remote_bench.py                       # 4 objects of 128 MiB f32, 8 requests in flight
    python bench/remote_bench.py --objects 8 --mib 64 --io-threads 4 --runs 5

Starts moto's S3 server on 127.0.0.1 in its own process, uploads safetensors shards of f32
activations (4096 wide), then times, whole processes in alternation with peak RSS:

- ``nact scan s3://.../ --format json --io-threads N``;
- s3fs alone: the same objects fetched as the same 16 MiB range requests on N threads and
  dropped (the transfer nact cannot beat: no counting, no headers);
- a download-then-count script: ``fs.cat`` of each object, ``safetensors.numpy.load``,
  ``(x > 0).sum(0)`` (what one writes without nact; memory grows with the object);
- ``python -c "import numpy, s3fs"``: the start-up all three pay.

Prints medians, nact's ratio to s3fs alone, and peak RSS. The server shares this machine's
cores with the client, so absolute speeds say more about the server than about nact.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scan_bench import timed

READ = """
import sys, fsspec
from concurrent.futures import ThreadPoolExecutor
fs = fsspec.filesystem("s3")
url, threads, window = sys.argv[1], int(sys.argv[2]), 16 << 20
objects = fs.find(url, detail=True)
jobs = [(k, a, min(a + window, d["size"])) for k, d in objects.items() for a in range(0, d["size"], window)]
with ThreadPoolExecutor(threads) as pool:
    total = sum(pool.map(lambda j: len(fs.cat_file(j[0], start=j[1], end=j[2])), jobs))
print(total)
"""

DOWNLOAD_AND_COUNT = """
import sys, fsspec, numpy as np
from safetensors.numpy import load
fs = fsspec.filesystem("s3")
counts = None
for key in sorted(fs.find(sys.argv[1])):
    x = load(fs.cat_file(key))["activations"]
    c = (x > 0).sum(axis=0)
    counts = c if counts is None else counts + c
print(int(counts.sum()))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--mib", type=int, default=128, help="size of each object (default 128)")
    parser.add_argument("--io-threads", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    port = free_port()
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    os.environ.update(env)
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import fsspec
        from safetensors.numpy import save_file

        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        fs = fsspec.filesystem("s3")
        fs.mkdir("bench")
        rows = args.mib * 2**20 // (4096 * 4)
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.objects):
                x = rng.standard_normal((rows, 4096), dtype=np.float32)
                path = Path(tmp) / f"shard_{i:03d}.safetensors"
                save_file({"activations": x}, str(path))
                fs.put_file(str(path), f"bench/acts/shard_{i:03d}.safetensors")
        url = "s3://bench/acts/"
        nbytes = args.objects * rows * 4096 * 4
        nact = str(Path(sys.executable).parent / "nact")
        commands = {
            "nact": [nact, "scan", url, "--format", "json", "--io-threads", str(args.io_threads)],
            "s3fs alone": [sys.executable, "-c", READ, url, str(args.io_threads)],
            "download+count": [sys.executable, "-c", DOWNLOAD_AND_COUNT, url],
            "start-up": [sys.executable, "-c", "import numpy, s3fs"],
        }
        results: dict[str, list[tuple[float, int]]] = {k: [] for k in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                results[name].append(timed(cmd))
        print(
            f"{args.objects} objects x {args.mib} MiB of f32 on a local S3 server, "
            f"{args.io_threads} requests in flight, medians of {args.runs}"
        )
        medians = {k: statistics.median(t for t, _ in v) for k, v in results.items()}
        for name, runs in results.items():
            peak = max(r for _, r in runs) / 2**20
            speed = f"{nbytes / medians[name] / 1e9:6.2f} GB/s" if name != "start-up" else " " * 11
            print(f"  {name:15s} {medians[name]:7.3f} s  {speed}  peak RSS {peak:7.1f} MB")
        start = medians["start-up"]
        print(
            f"  nact / s3fs alone: {medians['s3fs alone'] / medians['nact']:.2f}x the throughput "
            f"({(medians['s3fs alone'] - start) / max(medians['nact'] - start, 1e-9):.2f}x net of start-up)"
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
