"""Per-thread counting throughput by layer width: do wide layers keep up with narrow ones?

    python bench/width_bench.py                 # 1 GiB of f32 in memory, widths 2048..32768
    python bench/width_bench.py --mib 8         # a window that fits the last-level cache

The counters of one chunk are as wide as the layer: at 4096 f32 columns they fit in L1, at 16384
they do not. This times the C kernel alone on one thread (the data already in memory, best of
``--runs``), with and without the last-fired tracking, checks every count against numpy, and
prints GB/s per width and each width's ratio to 4096 (#15 asks 16384 to be within 15%).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from neuron_activity import _kernels

F32_POSITIVE = [(1, 0x7F800000)]  # the raw bits of f32 values > 0, +inf included
F32_NAN = (0x7FFFFFFF, 0x7F800000)  # mask, above: a NaN's bits


def throughput(bits: np.ndarray, width: int, track: bool, runs: int, expected: np.ndarray) -> float:
    rows = bits.size // width
    x = bits[: rows * width].reshape(rows, width)
    best = float("inf")
    for _ in range(runs):
        fires, nans = np.zeros(width, np.int64), np.zeros(width, np.int64)
        last = np.zeros(width, np.int64) if track else None
        start = time.perf_counter()
        _kernels.count(x, rows, width, 4, F32_POSITIVE, *F32_NAN, fires, nans, last, 0)
        best = min(best, time.perf_counter() - start)
        if not np.array_equal(fires, expected[: rows * width].reshape(rows, width).sum(axis=0)):
            raise SystemExit(f"width {width}: counts differ from numpy's")
    return x.nbytes / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="data size (default 1024)")
    parser.add_argument("--widths", default="2048,4096,8192,16384,32768")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    values = np.random.default_rng(0).standard_normal(args.mib * 2**20 // 4, dtype=np.float32)
    values[values < 0.5] = 0  # about 31% fire
    expected = (values > 0).astype(np.int64)
    bits = values.view(np.uint32)
    widths = [int(w) for w in args.widths.split(",")]
    print(f"{args.mib} MiB of f32, one thread, best of {args.runs}")
    for track in (False, True):
        speeds = {w: throughput(bits, w, track, args.runs, expected) for w in widths}
        base = speeds.get(4096)
        for w, speed in speeds.items():
            ratio = f"  {speed / base:.2f}x of 4096" if base else ""
            print(f"  last-fired {'on ' if track else 'off'} width {w:6d}: {speed:6.1f} GB/s{ratio}")


if __name__ == "__main__":
    main()
