"""Counting an SAE's latents on a cache of model activations (``nact scan --sae``), against a bare
matrix-product loop over the same shapes and batch sizes, in one run.

    python bench/sae_bench.py                        # d_in 2304, d_sae 16384, 8192 tokens, cpu
    python bench/sae_bench.py --tokens 32768 --device cuda --runs 5
    python bench/sae_bench.py --d-in 768 --d-sae 4096 --tokens 16384     # a quick one
    python bench/sae_bench.py --stats     # also nact with --stats (margins to firing) beside it

Writes a random SAELens SAE (standard: ReLU) and a safetensors cache of f32 activations in a
temporary folder. Times, each the median of --runs, in alternation, in this process (the
libraries imported and the SAE read once, before timing):

- nact: ``scan([cache], saes=(sae,))``: read, encode, count fires, sums and maxima.
- nact --stats (with ``--stats``): the same scan with ``stats=True``, which also keeps each
  latent's largest pre-activation and smallest margin to firing.
- torch matmul: ``x @ W_enc + b_enc`` per batch of the same rows nact encodes at a time, on
  the same device, nothing else (the floor any encode loop has).
- numpy matmul: the same with numpy (the BLAS nact's cpu encoder calls).
- a user's loop: torch encode + ``(acts > 0).float().sum(0)`` per batch (the float32 counts a
  hand-written loop keeps).

Then the cache is evicted from the page cache and nact runs once cold: reading overlaps encoding
when the cold time is close to the warm one. Prints tokens/s and ratios (torch time / nact time:
1.0 means nact encodes as fast as a bare matrix product).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make(folder: Path, d_in: int, d_sae: int, tokens: int, architecture: str, k: int) -> tuple[Path, Path]:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    sae = folder / "sae"
    sae.mkdir()
    w = (rng.standard_normal((d_in, d_sae), dtype=np.float32) / np.sqrt(d_in)).astype(np.float32)
    save_file(
        {
            "W_enc": w,
            "W_dec": np.ascontiguousarray(w.T),
            "b_enc": np.full(d_sae, -0.5, np.float32),
            "b_dec": np.zeros(d_in, np.float32),
        },
        str(sae / "sae_weights.safetensors"),
    )
    cfg = {
        "architecture": architecture,
        **({"k": k} if architecture == "topk" else {}),
        "d_in": d_in,
        "d_sae": d_sae,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": "acts", "sae_lens_version": "6.5.1"},
    }
    (sae / "cfg.json").write_text(json.dumps(cfg))
    cache = folder / "cache.safetensors"
    rows = []
    for start in range(0, tokens, 8192):
        rows.append(rng.standard_normal((min(8192, tokens - start), d_in), dtype=np.float32))
    save_file({"acts": np.concatenate(rows)}, str(cache))
    return sae, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-in", type=int, default=2304)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--stats", action="store_true", help="also time nact with stats=True")
    parser.add_argument("--architecture", default="standard", choices=["standard", "topk"], help="the SAE's")
    parser.add_argument("--k", type=int, default=64, help="topk: latents kept per token")
    args = parser.parse_args()

    import torch

    from neuron_activity import scan
    from neuron_activity.sae import batch_rows, load_sae

    folder = Path(tempfile.mkdtemp(prefix="nact-sae-bench-", dir=args.folder))
    sae_path, cache = make(folder, args.d_in, args.d_sae, args.tokens, args.architecture, args.k)
    sae = load_sae(sae_path)
    step = batch_rows(sae)
    device = torch.device(args.device)
    from safetensors.numpy import load_file

    x = load_file(str(cache))["acts"]
    w_t, b_t = torch.from_numpy(sae.weight).to(device), torch.from_numpy(sae.bias).to(device)
    w_np = np.asarray(sae.weight, np.float32)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_nact() -> None:
        scan([cache], saes=(str(sae_path),), device=args.device)

    def run_nact_stats() -> None:
        scan([cache], saes=(str(sae_path),), device=args.device, stats=True)

    def run_torch() -> None:
        for start in range(0, len(x), step):
            chunk = torch.from_numpy(x[start : start + step]).to(device)
            (chunk @ w_t + b_t)
        sync()

    def run_numpy() -> None:
        for start in range(0, len(x), step):
            x[start : start + step] @ w_np + sae.bias

    def run_user() -> None:
        counts = torch.zeros(sae.d_sae, device=device)
        for start in range(0, len(x), step):
            chunk = torch.from_numpy(x[start : start + step]).to(device)
            acts = torch.relu((chunk - torch.from_numpy(sae.center).to(device)) @ w_t + b_t)
            counts += (acts > 0).float().sum(0)
        sync()

    methods = {"nact": run_nact, "torch matmul": run_torch, "user loop": run_user}
    if args.stats:
        methods["nact --stats"] = run_nact_stats
    if device.type == "cpu":
        methods["numpy matmul"] = run_numpy
    times: dict[str, list[float]] = {m: [] for m in methods}
    run_nact()  # warm: page cache, BLAS threads, CUDA context
    for _ in range(args.runs):
        for name, fn in methods.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    medians = {m: statistics.median(v) for m, v in times.items()}
    print(
        f"{args.architecture} SAE, d_in {args.d_in}, d_sae {args.d_sae}, {args.tokens} tokens, batches of {step} rows, "
        f"device {args.device}, torch threads {torch.get_num_threads()}, medians of {args.runs}"
    )
    for name, t in medians.items():
        ratio = medians["torch matmul"] / t
        print(f"  {name:14s} {t:8.3f} s  {args.tokens / t:12,.0f} tokens/s  torch matmul / this: {ratio:.2f}")
    if args.stats:
        print(f"  nact --stats / nact: {medians['nact --stats'] / medians['nact']:.3f}x")

    fd = os.open(cache, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    t = time.perf_counter()
    run_nact()
    cold = time.perf_counter() - t
    print(
        f"  nact cold      {cold:8.3f} s  ({cold / medians['nact']:.2f}x its warm time; "
        f"{cache.stat().st_size / 2**20:.0f} MiB evicted first)"
    )


if __name__ == "__main__":
    sys.exit(main())
