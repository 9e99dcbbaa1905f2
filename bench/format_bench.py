"""The same activations in every format nact reads, each scan timed against the safetensors scan
and against what a user would run instead, in one run, in alternation.

    python bench/format_bench.py                 # 1 GiB of f32 activations, 3 runs each
    python bench/format_bench.py --gib 2 --runs 5

Writes one shard per format in a temporary folder (or --folder): safetensors, torch.save (.pt),
.npy, .npz (compressed: a tenth of the rows, it is slow to write), a SAELens Arrow file (Array2D
of 128 positions), a delphi sparse cache of the same values above 0. Every time is a whole process, start-up included; peak RSS is GNU time's.
Prints per format: nact's median, the ratio to nact on safetensors, the alternative's median.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scan_bench import nact_cmd, timed

GIB = 1 << 30
ALTERNATIVES = {
    "npy": "import sys, numpy as np; x = np.load(sys.argv[1], mmap_mode='r'); print(int(((x > 0).sum(0) == 0).sum()))",
    "pt": "import sys, torch; x = torch.load(sys.argv[1], mmap=True, weights_only=True)['acts']; print(int(((x > 0).sum(0) == 0).sum()))",
    "npz": "import sys, numpy as np; x = np.load(sys.argv[1])['acts']; print(int(((x > 0).sum(0) == 0).sum()))",
    "arrow": (
        "import sys, numpy as np, pyarrow as pa\n"
        "c = None\n"
        "for batch in pa.ipc.open_stream(pa.memory_map(sys.argv[1])):\n"
        "    v = batch.column('acts').flatten().flatten().to_numpy().reshape(-1, 4096)\n"
        "    s = (v > 0).sum(0); c = s if c is None else c + s\n"
        "print(int((c == 0).sum()))"
    ),
    "delphi": (
        "import sys, numpy as np, pathlib; from safetensors.numpy import load_file\n"
        "c = 0\n"
        "for f in sorted(pathlib.Path(sys.argv[1]).glob('*.safetensors')):\n"
        "    t = load_file(str(f)); s = int(f.stem.split('_')[0])\n"
        "    c = c + np.bincount(t['locations'][:, 2].astype(np.int64) + s, minlength=4096)\n"
        "print(int((c == 0).sum()))"
    ),
}


def write_all(folder: Path, gib: float, features: int = 4096) -> dict[str, Path]:
    import torch
    from safetensors.numpy import save_file

    rows = int(gib * GIB) // (features * 4)
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((rows, features), dtype=np.float32) - 2.0, 0)
    out = {
        "safetensors": folder / "acts.safetensors",
        "pt": folder / "acts.pt",
        "npy": folder / "acts.npy",
        "npz": folder / "acts.npz",
        "arrow": folder / "arrow" / "data-00000-of-00001.arrow",
        "delphi": folder / "latents" / "acts",
    }
    save_file({"acts": x}, str(out["safetensors"]))
    torch.save({"acts": torch.from_numpy(x)}, out["pt"])
    np.save(out["npy"], x)
    np.savez_compressed(out["npz"], acts=x[: rows // 10])
    write_arrow(out["arrow"], x)
    out["delphi"].mkdir(parents=True, exist_ok=True)
    batch, position = np.divmod(np.arange(rows), 128)
    splits = np.linspace(0, features, 5).astype(int)
    for start, end in zip(splits[:-1], splits[1:]):
        r, f = np.nonzero(x[:, start:end])
        locations = np.stack([batch[r], position[r], f], axis=1).astype(np.uint16 if rows // 128 < 65536 else np.uint32)
        save_file(
            {
                "locations": locations,
                "activations": x[r, f + start].astype(np.float16),
                "tokens": np.zeros((-(-rows // 128), 128), np.int32),
            },
            str(out["delphi"] / f"{start}_{end - 1}.safetensors"),
        )
    return out


def write_arrow(path: Path, x: np.ndarray, context: int = 128) -> None:
    """A SAELens cache file: one [context, d] array per row, stored as datasets stores Array2D
    (fixed-size lists of fixed-size lists), in record batches of 64 rows."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = len(x) // context
    inner = pa.FixedSizeListArray.from_arrays(pa.array(x[: rows * context].reshape(-1)), x.shape[1])
    table = pa.table({"acts": pa.FixedSizeListArray.from_arrays(inner, context)})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=64):
            writer.write_batch(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="nact-formats-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        paths = write_all(folder, args.gib)
        for p in paths.values():  # into the page cache
            for f in [p] if p.is_file() else sorted(p.rglob("*")):
                f.read_bytes()
        commands = {}
        for fmt, path in paths.items():
            commands[f"nact {fmt}"] = nact_cmd(path, "cpu", [])
            if fmt in ALTERNATIVES:
                commands[f"alternative {fmt}"] = [sys.executable, "-c", ALTERNATIVES[fmt], str(path)]
        results: dict[str, list[tuple[float, int]]] = {}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                results.setdefault(name, []).append(timed(cmd))
        med = {name: statistics.median(t for t, _ in r) for name, r in results.items()}
        peak = {name: max(p for _, p in r) for name, r in results.items()}
        print(f"{args.gib:g} GiB of f32 activations ({args.runs} runs each, medians, start-up included)")
        print(
            f"{'format':12s} {'nact':>8s} {'vs safetensors':>15s} {'peak RSS':>10s} {'alternative':>12s} {'its RSS':>10s}"
        )
        for fmt in paths:
            alt = f"alternative {fmt}"
            print(
                f"{fmt:12s} {med[f'nact {fmt}']:7.3f}s {med[f'nact {fmt}'] / med['nact safetensors']:14.2f}x "
                f"{peak[f'nact {fmt}'] / 1e6:8.0f}MB "
                + (f"{med[alt]:11.3f}s {peak[alt] / 1e6:8.0f}MB" if alt in med else "")
            )
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
