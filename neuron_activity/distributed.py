"""Scans under ``torchrun``: every rank counts its share of the shards, then the per-neuron
states are reduced across ranks once, at the end (no per-chunk collectives, so uneven shares
cannot deadlock). Rank 0 gets the whole result; the other ranks get None."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from . import state
from .activity import NeuronActivity
from .errors import NactError

T = TypeVar("T")


def launched() -> bool:
    """True when this process is one rank of several (torchrun sets WORLD_SIZE and RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_on_ranks(device: str, work: Callable[[int, int, str], tuple[NeuronActivity, T]]) -> T | None:
    """Run ``work(rank, world, device)`` on every rank, reduce the activity it returns across
    ranks (in place), and give rank 0 the second value it returned (the others get None).

    A rank whose work fails raises its own error; the others stop with a one-line error saying
    another rank failed. On cuda each rank counts on ``cuda:LOCAL_RANK`` and NCCL reduces.
    """
    import torch  # seconds to import: only ranks of torchrun get here (every scan imports launched)
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    comm_device = torch.device(device if on_cuda else "cpu")
    dist.init_process_group("nccl" if on_cuda else "gloo")
    try:
        error: NactError | None = None
        try:
            activity, value = work(rank, world, device)
        except NactError as e:
            error = e
        ok = torch.tensor([0 if error else 1], dtype=torch.int64, device=comm_device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if error is not None:
            raise error
        if int(ok.item()) == 0:
            raise NactError("another rank failed (its error is in its own output)")
        all_reduce(activity, rank, world, comm_device)
        return value if rank == 0 else None
    finally:
        dist.destroy_process_group()


def all_reduce(activity: NeuronActivity, rank: int, world: int, device: Any) -> None:
    """Reduce every component's states across ranks as ``state.FIELDS`` declare, one collective
    per field; stream indices become global (the ranks' shares are in stream order). Moments
    (MEAN, M2 and the counts they are over) are gathered from every rank and combined in rank
    order with Chan's formula, as ``state.combine`` combines parts."""
    import torch  # as in run_on_ranks: loaded already there
    import torch.distributed as dist

    components = list(activity.components.values())
    vectors = torch.tensor([c.num_vectors for c in components], dtype=torch.int64, device=device)
    per_rank = [torch.zeros_like(vectors) for _ in range(world)]
    dist.all_gather(per_rank, vectors)
    gathered = torch.stack(per_rank).cpu().numpy()
    before, totals = gathered[:rank].sum(axis=0), gathered.sum(axis=0)
    ops = {
        state.SUM: dist.ReduceOp.SUM,
        state.MAX: dist.ReduceOp.MAX,
        state.MIN: dist.ReduceOp.MIN,
        state.LAST: dist.ReduceOp.MAX,
    }
    kept = [f for f in state.FIELDS if components and f.name in components[0].states]
    moments = {f.name for f in kept if f.reduce in (state.MEAN, state.M2)}
    moments |= {f.over for f in kept if f.reduce == state.MEAN}

    def buffer_of(field: state.Field) -> torch.Tensor:
        parts = [state.shifted(field, c.states[field.name], int(first)) for c, first in zip(components, before)]
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts))).to(device)

    def put_back(name: str, reduced: np.ndarray) -> None:
        at = 0
        for c in components:
            c.states[name] = reduced[at : at + c.num_features].copy()
            at += c.num_features

    if moments:
        ranks: list[dict[str, np.ndarray]] = [{} for _ in range(world)]
        for field in (f for f in kept if f.name in moments):
            mine = buffer_of(field)
            everyone = [torch.zeros_like(mine) for _ in range(world)]
            dist.all_gather(everyone, mine)
            for r, theirs in enumerate(everyone):
                ranks[r][field.name] = theirs.cpu().numpy()
        for r in range(1, world):
            state.combine(ranks[0], ranks[r], 0)
        for name, combined in ranks[0].items():
            put_back(name, combined)
    for field in kept:
        if field.name in moments:
            continue
        buffer = buffer_of(field)
        dist.all_reduce(buffer, op=ops[field.reduce])
        put_back(field.name, buffer.cpu().numpy())
    for c, n in zip(components, totals):
        c.num_vectors = int(n)
