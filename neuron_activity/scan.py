"""The scan: plan the shards, count every chunk, and gather the counts into a NeuronActivity."""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .activity import NeuronActivity
from .counting import Counter, Counts, make_counter, resolve_device
from .dtypes import NUMPY_NAMES, TORCH_NAMES, FireRule, as_fraction, fire_rule
from .errors import BadInput, NactError
from .sources import (
    READERS,
    ScanPlan,
    TensorSlab,
    component_layout,
    discover,
    plan_scan,
)

CHUNK_BYTES = 32 * 1024 * 1024  # default window mapped at a time, per thread

ProgressCallback = Callable[[Path, int], None]


@dataclass
class ScanResult:
    activity: NeuronActivity
    plan: ScanPlan
    device: str
    warnings: list[str] = field(default_factory=list)


def scan(
    paths: list[Path] | list[str],
    *,
    keys: list[str] | None = None,
    flatten: bool = False,
    fire_above: str | Fraction | int = 0,
    device: str = "cpu",
    input_format: str | None = None,
    chunk_rows: int | None = None,
    threads: int | None = None,
    kernel: str | None = None,
    track_last: bool = False,
    count_only: Callable[[list[Path]], list[Path] | set[Path]] | None = None,
    on_plan: Callable[[ScanPlan], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ScanResult:
    """Count how often every neuron fires in the shards under ``paths``.

    Reads headers of every shard first (so shape and format errors come before any counting),
    then maps each tensor chunk by chunk and counts on ``device`` (``kernel``: see
    make_counter). ``track_last`` also records the last vector each neuron fired on, in stream
    order (shards in order, rows in order). ``count_only`` picks, from the planned shards, those
    to count (a share of them, or the new ones): every shard is still checked. ``on_plan`` sees
    the plan before counting starts; ``on_progress(path, nbytes)`` is called from the threads.
    """
    fire_above = as_fraction(fire_above, "fire-above")
    if chunk_rows is not None and chunk_rows < 1:
        raise NactError(f"chunk rows must be at least 1, got {chunk_rows}")
    if threads is not None and threads < 1:
        raise NactError(f"threads must be at least 1, got {threads}")
    device = resolve_device(device)
    plan = plan_scan(discover([Path(p) for p in paths], input_format), keys=keys, flatten=flatten)
    if count_only is not None:
        plan.restrict(count_only(plan.units()))
    if on_plan is not None:
        on_plan(plan)
    totals = _count(plan, fire_above, device, chunk_rows, threads, kernel, track_last, on_progress)
    activity = NeuronActivity(fire_above)
    for group in plan.groups.values():
        t = totals[group.key]
        for i, name in enumerate(group.names):
            part = slice(i * group.num_features, (i + 1) * group.num_features)
            last = None if t.last_fired is None else t.last_fired[part]
            activity.add(name, t.fire_counts[part], t.num_vectors, t.nan_counts[part], last)
    warnings = list(plan.warnings)
    for c in activity.components.values():
        if c.nan_count:
            warnings.append(
                f"component {c.name!r}: {c.nan_count} NaN value(s) in {int((c.nan_counts > 0).sum())} "
                "neuron(s), counted as not firing"
            )
    return ScanResult(activity, plan, device, warnings)


def _work(plan: ScanPlan, chunk_rows: int | None) -> Iterator[tuple[TensorSlab, int, int, int]]:
    """Work items ``(slab, first row, end row, index of the first row in its component's
    stream)``: windows of rows of mapped tensors; whole tensors of streamed formats."""
    seen: dict[str, int] = {}
    for slab in plan.slabs:
        first_vector = seen.get(slab.key, 0)
        seen[slab.key] = first_vector + slab.num_rows
        if slab.offset is None:
            yield slab, 0, slab.num_rows, first_vector
            continue
        step = _chunk_rows(slab, chunk_rows)
        for start in range(0, slab.num_rows, step):
            yield slab, start, min(start + step, slab.num_rows), first_vector + start


def _chunk_rows(slab: TensorSlab, chunk_rows: int | None) -> int:
    return chunk_rows or max(1, CHUNK_BYTES // max(slab.row_bytes, 1))


class _Totals:
    """Counts of one key added up: from counters, or whole from a sparse cache's reader."""

    def __init__(self, width: int, track_last: bool) -> None:
        self.fire_counts = np.zeros(width, np.int64)
        self.nan_counts = np.zeros(width, np.int64)
        self.last_fired = np.full(width, -1, np.int64) if track_last else None
        self.num_vectors = 0

    def add(self, counts: Counts, first_row: int = 0) -> None:
        self.fire_counts += counts.fire_counts
        self.nan_counts += counts.nan_counts
        if self.last_fired is not None and counts.last_fired is not None:
            shifted = np.where(counts.last_fired >= 0, counts.last_fired + first_row, -1)
            np.maximum(self.last_fired, shifted, out=self.last_fired)

    def result(self) -> Counts:
        return Counts(self.fire_counts, self.nan_counts, self.last_fired)


def _count(
    plan: ScanPlan,
    fire_above: Fraction,
    device: str,
    chunk_rows: int | None,
    threads: int | None,
    kernel: str | None,
    track_last: bool,
    on_progress: ProgressCallback | None,
) -> dict[str, _Totals]:
    """Per key: fire counts, NaN counts, last fired (all over ``width`` columns) and vectors."""
    if device == "mps":
        threads = 1  # one queue; mps does the counting
    threads = threads or min(os.cpu_count() or 1, 8)
    work = _work(plan, chunk_rows)
    lock = threading.Lock()
    stop = threading.Event()
    rules = {}
    progress = on_progress or (lambda path, nbytes: None)

    def next_item() -> tuple[TensorSlab, int, int, int] | None:
        with lock:
            return None if stop.is_set() else next(work, None)

    def rule_for(dtype: str) -> FireRule:
        with lock:
            return rules.setdefault(dtype, fire_rule(dtype, fire_above))

    def worker() -> dict[tuple[str, str], Counter | _Totals]:
        counters: dict[tuple[str, str], Counter | _Totals] = {}
        try:
            while (item := next_item()) is not None:
                slab, start, end, first_vector = item
                key = (slab.key, slab.dtype)
                reader = READERS[slab.entry.format]
                if hasattr(reader, "count"):  # a sparse cache: its reader counts
                    sums = counters.setdefault(key, _Totals(slab.width, track_last))
                    for path, counts, nbytes in reader.count(slab, rule_for(slab.dtype), track_last):
                        sums.add(counts, first_vector)  # type: ignore[union-attr]
                        progress(path, nbytes)
                    continue
                if key not in counters:
                    counters[key] = make_counter(rule_for(slab.dtype), slab.width, device, kernel, track_last)
                counter = counters[key]
                if slab.offset is not None:
                    _count_chunk(slab, start, end, counter, first_vector)  # type: ignore[arg-type]
                    progress(slab.path, (end - start) * slab.row_bytes)
                    continue
                for bits in reader.chunks(slab, _chunk_rows(slab, chunk_rows)):
                    counter.update(bits, first_vector)  # type: ignore[union-attr]
                    first_vector += bits.shape[0]
                    progress(slab.path, bits.nbytes)
                    if stop.is_set():
                        break
        except BaseException:
            stop.set()
            raise
        return counters

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nact-count") as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            stop.set()
            raise
    totals = {g.key: _Totals(len(g.names) * g.num_features, track_last) for g in plan.groups.values()}
    for slab in plan.slabs:
        totals[slab.key].num_vectors += slab.num_rows
    for counters in results:
        for (key, _dtype), counter in counters.items():
            totals[key].add(counter.result())
    return totals


def _count_chunk(slab: TensorSlab, start: int, end: int, counter: Counter, first_vector: int) -> None:
    """Map rows ``[start, end)`` of ``slab`` read-only and count them; the mapping is dropped after."""
    rule_view = np.dtype(f"u{slab.row_bytes // slab.width}") if slab.width else np.dtype(np.uint8)
    begin = slab.offset + start * slab.row_bytes
    stop = slab.offset + end * slab.row_bytes
    base = begin - begin % mmap.ALLOCATIONGRANULARITY
    try:
        fd = os.open(slab.path, os.O_RDONLY)
    except OSError as e:
        raise BadInput(slab.path, f"cannot open: {e.strerror or e}") from None
    try:
        size = os.fstat(fd).st_size
        if size < stop:
            raise BadInput(slab.path, f"changed during the scan: now {size} bytes, tensor {slab.key!r} needs {stop}")
        mapped = mmap.mmap(fd, stop - base, access=mmap.ACCESS_READ, offset=base)
    finally:
        os.close(fd)
    try:
        rows = np.frombuffer(mapped, dtype=rule_view, count=(end - start) * slab.width, offset=begin - base)
        counter.update(rows.reshape(end - start, slab.width), first_vector)
        del rows
    finally:
        mapped.close()


def count_array(
    array: object,
    name: str = "activations",
    *,
    fire_above: str | Fraction | int = 0,
    flatten: bool = False,
    device: str = "cpu",
    kernel: str | None = None,
    track_last: bool = False,
) -> NeuronActivity:
    """Count fires in an in-memory array (numpy, or torch of any floating dtype).

    >>> import numpy as np
    >>> from neuron_activity import Threshold
    >>> count_array(np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])).rows([Threshold.parse("0")])[0].dead
    1
    """
    fire_above = as_fraction(fire_above, "fire-above")
    dtype, bits = raw_bits(array)
    if bits.ndim < 2:
        raise NactError(f"array of shape {list(bits.shape)} has no batch axis: need [N, F] or [..., C, F]")
    names, num_rows, num_features = component_layout(name, tuple(bits.shape), flatten)
    rows = np.ascontiguousarray(bits).reshape(num_rows, len(names) * num_features)
    counter = make_counter(fire_rule(dtype, fire_above), rows.shape[1], resolve_device(device), kernel, track_last)
    counter.update(rows)
    counts = counter.result()
    activity = NeuronActivity(fire_above)
    for i, component in enumerate(names):
        part = slice(i * num_features, (i + 1) * num_features)
        last = None if counts.last_fired is None else counts.last_fired[part]
        activity.add(component, counts.fire_counts[part], num_rows, counts.nan_counts[part], last)
    return activity


def raw_bits(array: object) -> tuple[str, np.ndarray]:
    """The dtype name and the raw bits (as unsigned integers) of a numpy array or torch tensor."""
    if isinstance(array, np.ndarray):
        dtype = NUMPY_NAMES.get(array.dtype.name)
        if dtype is None:
            raise NactError(f"arrays of dtype {array.dtype} cannot be counted")
        return dtype, np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
    module = type(array).__module__
    if module.startswith("torch"):
        import torch

        assert isinstance(array, torch.Tensor)
        dtype = TORCH_NAMES.get(str(array.dtype).removeprefix("torch."))
        if dtype is None:
            raise NactError(f"tensors of dtype {array.dtype} cannot be counted")
        size = array.element_size()
        signed = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
        bits = array.detach().cpu().contiguous().view(signed).numpy()
        return dtype, bits.view(f"u{size}")
    raise NactError(f"cannot count an object of type {type(array).__name__}: pass a numpy array or torch tensor")
