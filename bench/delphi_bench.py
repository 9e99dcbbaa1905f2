"""A large delphi sparse cache: nact against the bincount script a user would write, in one run.

    python bench/delphi_bench.py                      # 100M entries, 16384 latents, 4 splits
    python bench/delphi_bench.py --entries 260e6 --runs 5

Writes one module folder as delphi's ``save_splits`` does (uint16 locations relative to each
split, fp16 activations, ``tokens``), then times, whole processes in alternation with peak RSS:
``nact scan --format json``, the bincount script (``load_file`` of each split, ``np.bincount`` of
its latent column), and ``python -c "import numpy, safetensors"`` (the start-up both pay).
Prints medians, and the ratio net of that start-up.
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

SCRIPT = (
    "import sys, numpy as np, pathlib; from safetensors.numpy import load_file\n"
    "c = np.zeros({latents}, np.int64)\n"
    "for f in sorted(pathlib.Path(sys.argv[1]).glob('*.safetensors')):\n"
    "    t = load_file(str(f)); s = int(f.stem.split('_')[0])\n"
    "    a = t['activations'].astype(np.float32) > 0\n"
    "    c[s:s + {per}] += np.bincount(t['locations'][a, 2].astype(np.int64), minlength={per})\n"
    "print(int((c == 0).sum()))"
)


def write(folder: Path, entries: int, latents: int, splits: int, per_vector: int = 64, positions: int = 128) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    vectors = entries // per_vector
    batches = -(-vectors // positions)
    per = latents // splits
    folder.mkdir(parents=True)
    for s in range(splits):
        n = entries // splits
        vector = np.sort(rng.integers(0, vectors, n))
        locations = np.empty((n, 3), np.uint16)
        locations[:, 0], locations[:, 1] = np.divmod(vector, positions)
        locations[:, 2] = rng.integers(0, per - 1, n)  # the split's last latent never fires
        values = np.abs(rng.standard_normal(n)).astype(np.float16) + np.float16(1e-3)
        save_file(
            {"locations": locations, "activations": values, "tokens": np.zeros((batches, positions), np.int32)},
            str(folder / f"{s * per}_{(s + 1) * per - 1}.safetensors"),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=float, default=100e6)
    parser.add_argument("--latents", type=int, default=16384)
    parser.add_argument("--splits", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nact-delphi-"))
    try:
        module = root / "latents" / "layers.6.mlp"
        write(module, int(args.entries), args.latents, args.splits)
        for f in module.iterdir():
            f.read_bytes()
        per = args.latents // args.splits
        commands = {
            "nact": nact_cmd(module, "cpu", []),
            "bincount script": [sys.executable, "-c", SCRIPT.format(latents=args.latents, per=per), str(module)],
            "start-up only": [sys.executable, "-c", "import numpy, safetensors"],
        }
        results: dict[str, list[tuple[float, int]]] = {}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                results.setdefault(name, []).append(timed(cmd))
        med = {n: statistics.median(t for t, _ in r) for n, r in results.items()}
        peak = {n: max(p for _, p in r) for n, r in results.items()}
        size = sum(f.stat().st_size for f in module.iterdir())
        print(
            f"{args.entries:.3g} entries, {args.latents} latents in {args.splits} splits, {size / 2**30:.2f} GiB; "
            f"medians of {args.runs}, whole processes"
        )
        for name in commands:
            print(f"  {name:16s} {med[name]:7.3f} s   peak RSS {peak[name] / 1e6:7.0f} MB")
        base = med["start-up only"]
        print(
            f"  bincount script / nact: {med['bincount script'] / med['nact']:.2f}x; net of start-up "
            f"({base:.3f} s): {(med['bincount script'] - base) / max(med['nact'] - base, 1e-3):.2f}x"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
