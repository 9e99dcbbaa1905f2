"""The training metric's update against what it replaces, on the same batches.

    python bench/metric_bench.py                                   # cpu, [4096, 16384] float32
    python bench/metric_bench.py --dtypes f32 bf16 --device cpu --device cuda

Four ways to count a batch of activations, timed on the same batches in alternation (every
round runs each method on each batch, the methods' order rotating from round to round):

  nact         NeuronActivityMetric.update: exact int64 counts (on cpu the C kernel on the
               tensor's memory; on cuda a few torch kernels, no host sync)
  reference    the reference metric's update (sparse_autoencoder's NeuronActivityMetric, as its
               source has it): a torchmetrics Metric whose float32 state gets
               torch.gt(x, 0).sum(dim=0, dtype=torch.float) and whose vector count gets x.shape[0]
  count_array  neuron_activity.count_array(x): on cpu the C kernel on x's memory, as a scan
               counts; on cuda counted on the device, then read back
  torch        plain (x > 0).sum(0)

Each figure is the median over rounds of one batch's time, then the median over batches; the
ratios are against the baselines measured in the same run. On cuda every timed call ends with
torch.cuda.synchronize() (the GPU's work included), and 'queued' times --queue updates issued
back to back: the host's time to issue them, and the time until the GPU has done them all. Before
timing, nact's counts are checked to equal count_array's on every batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from neuron_activity import count_array
from neuron_activity.metric import NeuronActivityMetric

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


class ReferenceMetric(Metric):
    """The reference metric's states and update: float32 fire counts (exact below 2^24 only)."""

    full_state_update = True  # as the reference sets it

    def __init__(self, num_learned_features: int) -> None:
        super().__init__()
        self.add_state("neuron_fired_count", default=torch.zeros(num_learned_features), dist_reduce_fx="sum")
        self.add_state("num_activation_vectors", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, learned_activations: torch.Tensor, **kwargs: Any) -> None:
        self.num_activation_vectors += learned_activations.shape[0]
        neuron_has_fired = torch.gt(learned_activations, 0)
        self.neuron_fired_count += neuron_has_fired.sum(dim=0, dtype=torch.float)

    def compute(self) -> torch.Tensor:
        return torch.sum(self.neuron_fired_count <= 0 * self.num_activation_vectors, dim=-1, dtype=torch.int64)


def batches(count: int, rows: int, width: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    """ReLU-like activations: about half of each batch is zero, a few columns never fire."""
    generator = torch.Generator(device=device).manual_seed(0)
    out = []
    for _ in range(count):
        x = torch.randn(rows, width, generator=generator, device=device).relu_()
        x[:, :16] = 0
        out.append(x.to(dtype))
    return out


def check(data: list[torch.Tensor], width: int) -> None:
    """nact's counts equal count_array's (the C kernel or the device counter) on every batch."""
    for i, x in enumerate(data):
        metric = NeuronActivityMetric(width).to(x.device)
        metric.update(x)
        expected = count_array(x).components["activations"].fire_counts
        if not np.array_equal(metric.fire_counts.cpu().numpy(), expected):
            raise SystemExit(f"batch {i}: nact's counts differ from count_array's")


def timed(run: Callable[[torch.Tensor], object], x: torch.Tensor, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(x)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(data: list[torch.Tensor], width: int, rounds: int) -> dict[str, float]:
    """Per method, the median over batches of each batch's median time over rounds."""
    device = data[0].device
    cuda = device.type == "cuda"
    nact = NeuronActivityMetric(width).to(device)
    reference = ReferenceMetric(width).to(device)
    methods: dict[str, Callable[[torch.Tensor], object]] = {
        "nact": nact.update,
        "reference": reference.update,
        "count_array": count_array,
        "torch": lambda x: (x > 0).sum(0),
    }
    names = list(methods)
    for x in data:  # warm up: allocators, caches, lazy initialisation
        for name in names:
            methods[name](x)
    times: dict[str, list[list[float]]] = {name: [[] for _ in data] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for i, x in enumerate(data):
            for name in order:
                times[name][i].append(timed(methods[name], x, cuda))
    return {name: statistics.median(statistics.median(per_batch) for per_batch in times[name]) for name in names}


def queued(data: list[torch.Tensor], width: int, updates: int) -> tuple[float, float]:
    """cuda: host time to issue ``updates`` updates back to back, and the time until all are done."""
    metric = NeuronActivityMetric(width).to(data[0].device)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(updates):
        metric.update(data[i % len(data)])
    issued = time.perf_counter() - start
    torch.cuda.synchronize()
    return issued / updates, (time.perf_counter() - start) / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--batches", type=int, default=3, help="distinct batches (default 3)")
    parser.add_argument("--rounds", type=int, default=7, help="times each method counts each batch (default 7)")
    parser.add_argument("--dtypes", nargs="+", default=["f32"], choices=list(DTYPES))
    parser.add_argument("--device", action="append", help="cpu (default) and/or cuda; repeatable")
    parser.add_argument("--queue", type=int, default=50, help="cuda: updates issued back to back (default 50)")
    args = parser.parse_args()
    devices = args.device or ["cpu"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} cpu threads for torch; the C kernel uses one")
    for device in devices:
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                print(f"{device}: no CUDA GPU, skipped")
                continue
            print(f"{device}: {torch.cuda.get_device_name(device)}")
        for name in args.dtypes:
            data = batches(args.batches, args.rows, args.width, DTYPES[name], device)
            check(data, args.width)
            medians = measure(data, args.width, args.rounds)
            mib = data[0].numel() * data[0].element_size() / 2**20
            print(
                f"[{args.rows}, {args.width}] {name} on {device} ({mib:.0f} MiB a batch), "
                f"{args.batches} batches x {args.rounds} rounds, medians per batch:"
            )
            for method, seconds in medians.items():
                print(f"  {method:12s} {seconds * 1e3:9.2f} ms  {mib / 1024 / seconds:7.2f} GiB/s")
            nact = medians["nact"]
            print(
                f"  reference/nact {medians['reference'] / nact:.2f}x   nact/count_array "
                f"{nact / medians['count_array']:.2f}x   torch/nact {medians['torch'] / nact:.2f}x"
            )
            if device.startswith("cuda"):
                issued, done = queued(data, args.width, args.queue)
                print(f"  queued: {issued * 1e3:.3f} ms to issue an update, {done * 1e3:.3f} ms each until done")
            del data


if __name__ == "__main__":
    main()
