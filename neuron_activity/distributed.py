"""Scans under ``torchrun``: every rank counts its part of the shards, then the counts are
summed across ranks once, at the end (no per-chunk collectives, so uneven parts cannot
deadlock). Rank 0 gets the whole result; the other ranks get None."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .activity import NeuronActivity
from .audit import part_of
from .errors import NactError
from .scan import ScanResult, scan


def launched() -> bool:
    """True when this process is one rank of several (torchrun sets WORLD_SIZE and RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def scan_distributed(paths: list[Any], **options: Any) -> ScanResult | None:
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = options.get("device", "cpu")
    on_cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        options["device"] = f"cuda:{local}"
    comm_device = torch.device(f"cuda:{torch.cuda.current_device()}") if on_cuda else torch.device("cpu")
    dist.init_process_group("nccl" if on_cuda else "gloo")
    try:
        error: NactError | None = None
        result = None
        try:
            # every rank plans every shard (so all agree on the components); each counts its part
            result = scan(paths, track_last=True, count_only=lambda units: part_of(units, rank, world), **options)
        except NactError as e:
            error = e
        ok = torch.tensor([0 if error else 1], dtype=torch.int64, device=comm_device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if error is not None:
            raise error
        if int(ok.item()) == 0:
            raise NactError("another rank failed (its error is in its own output)")
        assert result is not None
        _all_reduce(result.activity, rank, world, comm_device)
        return result if rank == 0 else None
    finally:
        dist.destroy_process_group()


def _all_reduce(activity: NeuronActivity, rank: int, world: int, device: Any) -> None:
    """Sum counts across ranks; last-fired indices become global (ranks' parts are in order)."""
    import torch
    import torch.distributed as dist

    components = list(activity.components.values())
    vectors = torch.tensor([c.num_vectors for c in components], dtype=torch.int64, device=device)
    per_rank = [torch.zeros_like(vectors) for _ in range(world)]
    dist.all_gather(per_rank, vectors)
    before = torch.stack(per_rank)[:rank].sum(dim=0).cpu().numpy() if rank else np.zeros(len(components), np.int64)
    counts = torch.from_numpy(np.concatenate([np.concatenate([c.fire_counts, c.nan_counts]) for c in components]))
    last = torch.from_numpy(
        np.concatenate(
            [np.where(c.last_fired >= 0, c.last_fired + offset, -1) for c, offset in zip(components, before)]
        )
    )
    counts, last = counts.to(device), last.to(device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    dist.all_reduce(last, op=dist.ReduceOp.MAX)
    counts, last = counts.cpu().numpy(), last.cpu().numpy()
    totals = torch.stack(per_rank).sum(dim=0).cpu().numpy()
    at = 0
    for c, n in zip(components, totals):
        f = c.num_features
        c.fire_counts = counts[2 * at : 2 * at + f].copy()
        c.nan_counts = counts[2 * at + f : 2 * at + 2 * f].copy()
        c.last_fired = last[at : at + f].copy()
        c.num_vectors = int(n)
        at += f
