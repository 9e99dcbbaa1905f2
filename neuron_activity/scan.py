"""The scan: plan the shards, count every chunk, and gather the counts into a NeuronActivity."""

from __future__ import annotations

from dataclasses import dataclass, field
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import state
from .activity import NeuronActivity
from .counters import Counter, States
from .counting import kernel_for, make_counter
from .devices import resolve_device
from .dtypes import NUMPY_NAMES, TORCH_NAMES, FireRule, fire_rule, signed_bits
from .errors import BadInput, BadOption
from .options import CountOptions
from .sources import READERS, ScanPlan, TensorSlab, component_layout, discover, plan_scan
from .remote.objects import IO_THREADS, WINDOW_BYTES, RemotePath, current, in_this_context, read_range, session
from .sources.base import MAPPED, SPARSE, is_remote, to_path

if TYPE_CHECKING:
    from .sae import Sae

CHUNK_BYTES = 32 * 1024 * 1024  # default window mapped at a time, per thread
STATE_BYTES = 512 * 1024 * 1024  # per-neuron state of all threads: wide layers count with fewer threads

ProgressCallback = Callable[[Path, int], None]


@dataclass
class ScanResult:
    activity: NeuronActivity
    plan: ScanPlan
    device: str
    kernel: str  # what counted: native, numpy or torch (sparse caches: numpy)
    warnings: list[str] = field(default_factory=list)


def scan(
    paths: list[Path] | list[str],
    *,
    on_plan: Callable[[ScanPlan], None] | None = None,
    on_progress: ProgressCallback | None = None,
    options: CountOptions | None = None,
    **settings_given: object,
) -> ScanResult:
    """Count how often every neuron fires in the shards under ``paths``.

    ``options`` (or, one by one, the settings of ``CountOptions``: ``fire_above``, ``device``,
    ``track_last``, ...; ``device`` defaults to cpu here) say what to count and how. Reads the
    headers of every shard first (so shape and format errors come before any counting), then
    counts; ``on_plan`` sees the plan before counting. Parts and audits: ``pipeline.run_scan``.
    """
    if options is None:
        options = CountOptions(**{"device": "cpu", **settings_given})  # type: ignore[arg-type]
    device = resolve_device(options.device)
    with session():
        plan = plan_for(discover([to_path(p) for p in paths], options.input_format), options)
        if on_plan is not None:
            on_plan(plan)
        return count(plan, options, device, on_progress)


def plan_for(shards: dict[Path, str], options: CountOptions) -> ScanPlan:
    """The plan of ``shards`` under ``options`` (headers only; and the SAEs' checkpoints, whose
    latents are then what is counted)."""
    plan = plan_scan(
        shards,
        options.keys,
        options.flatten,
        component_axis=options.component_axis,
        group_by=options.group_by,
        saes=_load_saes(options),
        num_latents=options.num_latents,
        num_vectors=options.num_vectors,
        partial=options.partial_latents,
    )
    if options.skip_positions:
        _check_positions(plan, options.skip_positions)
    return plan


def _load_saes(options: CountOptions) -> list[tuple[str | None, Sae]]:
    """The SAEs asked for, each with the component it is asked to encode."""
    if not options.saes:
        return []
    from . import sae  # only scans with SAEs load their code and the zip reader it needs (~6 ms)

    return [(r.key, sae.load_sae(r.path)) for r in options.saes]


def _check_positions(plan: ScanPlan, skip: tuple[int, ...]) -> None:
    """Positions can be skipped only where every tensor counted says what its positions are."""
    for slab in plan.slabs:
        shape = list(slab.entry.shape)
        if slab.positions is None:
            raise BadInput(
                slab.path,
                f"tensor {slab.entry.key!r} of shape {shape} does not say which rows are which positions "
                "(a [batch, position, d] tensor, an Arrow cache of sequences or a delphi cache does): nothing can be skipped",
            )
        if skip[-1] >= slab.positions:
            raise BadOption("skip_positions", skip[-1], f"is beyond the {slab.positions} positions of {slab.entry.key!r} ({slab.path})")
        if len(skip) == slab.positions:
            raise BadOption("skip_positions", ",".join(map(str, skip)), f"leaves none of the {slab.positions} positions of {slab.entry.key!r}")


class _Positions:
    """The rows of a slab that are counted when some positions of every sequence are skipped."""

    def __init__(self, slab: TensorSlab, skip: tuple[int, ...]) -> None:
        self.per = slab.positions or 1
        self.keep = np.ones(self.per, bool)
        self.keep[list(skip)] = False
        self.kept_before_position = np.concatenate([[0], np.cumsum(self.keep)])

    def before(self, row: int) -> int:
        """Rows kept before ``row``."""
        whole, rest = divmod(row, self.per)
        return whole * int(self.keep.sum()) + int(self.kept_before_position[rest])

    def mask(self, start: int, end: int) -> np.ndarray:
        return self.keep[np.arange(start, end) % self.per]


def _positions(slab: TensorSlab, skip: tuple[int, ...]) -> _Positions | None:
    return _Positions(slab, skip) if skip else None


def count(
    plan: ScanPlan, options: CountOptions, device: str, on_progress: ProgressCallback | None = None
) -> ScanResult:
    """Count the slabs of ``plan`` on ``device`` (already resolved); ``on_progress(path, nbytes)``
    is called from the counting threads."""
    if plan.saes and device == "cpu" and options.sae_dtype != "float32":
        raise BadOption("sae_dtype", options.sae_dtype, "is for a GPU: on the cpu SAEs encode in float32")
    totals, kernel = _count(plan, options, device, on_progress)
    remote = [p for p in plan.shards if isinstance(p, RemotePath)]
    if remote:
        current().check_unchanged(remote)
    activity = NeuronActivity(options.fire_above)
    for group in plan.groups.values():
        states, num_vectors = totals[group.key]
        for name, part in group.spans():
            activity.add_states(name, state.select(states, part), num_vectors)
            activity.components[name].first_neuron = group.first_neuron
        for bound in plan.saes.get(group.key, ()):
            activity.components[bound.name].sae = bound.sae.as_dict()
    for c in activity.components.values():
        if c.num_vectors and int(c.fire_counts.max(initial=0)) > c.num_vectors:
            i = int(np.argmax(c.fire_counts))
            where = plan.sources().get(c.name, [""])
            raise BadInput(
                where[0] if len(where) == 1 else c.name,
                f"neuron {i + c.first_neuron} fired {int(c.fire_counts[i])} times in {c.num_vectors} vectors: "
                "the cache stores some entries twice",
            )
    warnings = list(plan.warnings)
    for c in activity.components.values():
        if c.nan_count:
            having = np.flatnonzero(c.nan_counts > 0)
            shown = ", ".join(str(i + c.first_neuron) for i in having[:5]) + (", ..." if len(having) > 5 else "")
            warnings.append(
                f"component {c.name!r}: {c.nan_count} NaN value(s) in {len(having)} "
                f"neuron(s) ({shown}), counted as not firing"
            )
    return ScanResult(activity, plan, device, kernel, warnings)


WorkItem = tuple[TensorSlab, int, int, int]  # slab, first row, end row, first vector in the stream


def _work(plan: ScanPlan, chunk_rows: int | None, skip: tuple[int, ...] = ()) -> Iterator[WorkItem]:
    """Work items: windows of rows of mapped tensors, each within one run of rows (an Arrow
    column has a run per record batch); files of a sparse cache (start and end then number the
    entry's files); whole tensors of other storage. The last number is the stream index (in its
    component) of the item's first vector."""
    seen: dict[str, int] = {}
    for slab in plan.slabs:
        kept = _positions(slab, skip)
        first_vector = seen.get(slab.key, 0)
        seen[slab.key] = first_vector + (kept.before(slab.num_rows) if kept else slab.num_rows)
        if slab.entry.storage == SPARSE:  # one item per file: a module's splits count in parallel
            for i in range(len(slab.entry.files)):
                yield slab, i, i + 1, first_vector
            continue
        if slab.entry.storage != MAPPED:
            yield slab, 0, slab.num_rows, first_vector
            continue
        step = _chunk_rows(slab, chunk_rows)
        for first, rows, _ in slab.runs:  # windows of each run of rows (one, unless in regions)
            for start in range(first, first + rows, step):
                end = min(start + step, first + rows)
                yield slab, start, end, first_vector + (kept.before(start) if kept else start)


def _fetch_ahead(work: Iterator[WorkItem], io_threads: int | None) -> Iterator[WorkItem]:
    """Work items as they come, the remote windows of the next ``io_threads`` already being
    fetched: one counting thread (an SAE's encoding, ``--io-threads 1``) overlaps them too."""
    from collections import deque

    n = io_threads or IO_THREADS
    session = current()
    queue: deque[WorkItem] = deque()
    for item in work:
        slab, start, end, _ = item
        if slab.entry.storage == MAPPED:
            session.fetch_ahead(slab.path, *slab.byte_range(start, end), n)  # type: ignore[arg-type]
        queue.append(item)
        if len(queue) > n:
            yield queue.popleft()
    yield from queue


def _chunk_rows(slab: TensorSlab, chunk_rows: int | None) -> int:
    if chunk_rows:
        return chunk_rows
    if is_remote(slab.path):
        return max(1, WINDOW_BYTES // max(slab.row_bytes, 1))
    return max(1, CHUNK_BYTES // max(slab.row_bytes, 1))


class _Sum:
    """States of one key that a sparse reader counted, added up as they come."""

    name = "numpy"

    def __init__(self, width: int, track_last: bool) -> None:
        self.states = state.empty(width, state.TRACK_LAST if track_last else ())

    def add(self, states: States, first_vector: int) -> None:
        state.combine(self.states, states, first_vector)

    def result(self) -> States:
        return self.states


def _count(
    plan: ScanPlan, options: CountOptions, device: str, on_progress: ProgressCallback | None
) -> tuple[dict[str, tuple[States, int]], str]:
    """Per key: the states over its whole width and its number of vectors; and the kernel."""
    threads = 1 if device == "mps" else options.threads or min(os.cpu_count() or 1, 8)  # mps: one queue
    remote = any(is_remote(p) for p in plan.shards)
    if remote:  # each thread waits on its range request, then counts
        threads = options.io_threads or IO_THREADS
    widest = max((s.width for s in plan.slabs), default=1)
    threads = max(1, min(threads, STATE_BYTES // (widest * 8 * (2 + options.track_last)) or 1))
    read_ahead = bool(plan.saes)  # encoding is the slow part: the next window is read meanwhile
    if plan.saes:
        threads = 1  # the matrix products use every core already (BLAS threads, or the device)
    track_last = options.track_last
    skip = options.skip_positions
    work = _work(plan, options.chunk_rows, skip)
    if threads == 1 and remote:
        work = _fetch_ahead(work, options.io_threads)
    lock = threading.Lock()
    stop = threading.Event()
    rules: dict[str, FireRule] = {}
    progress = on_progress or (lambda path, nbytes: None)

    def next_item() -> WorkItem | None:
        with lock:
            return None if stop.is_set() else next(work, None)

    def rule_for(dtype: str) -> FireRule:
        with lock:
            return rules.setdefault(dtype, fire_rule(dtype, options.fire_above))

    def worker() -> dict[tuple[str, str], Counter | _Sum]:
        counters: dict[tuple[str, str], Counter | _Sum] = {}
        try:
            while (item := next_item()) is not None:
                slab, start, end, first_vector = item
                key = (slab.key, slab.dtype)
                reader = READERS[slab.entry.format]
                if slab.entry.storage == SPARSE:
                    sums = counters.setdefault(key, _Sum(slab.width, track_last))
                    files = slab.entry.files[start:end]
                    native = options.kernel in (None, "native")
                    counted = reader.count(slab, rule_for(slab.dtype), track_last, files, native, skip)
                    for path, states, nbytes in counted:
                        sums.add(states, first_vector)  # type: ignore[union-attr]
                        progress(path, nbytes)
                    continue
                if key not in counters and slab.key in plan.saes:
                    from .sae import SaeCounter  # as in _load_saes

                    saes = [b.sae for b in plan.saes[slab.key]]
                    counters[key] = SaeCounter(
                        slab.dtype, saes, device, options.kernel, track_last, options.fire_above, options.sae_dtype
                    )
                elif key not in counters:
                    rule = rule_for(slab.dtype)
                    counters[key] = make_counter(rule, slab.width, device, options.kernel, track_last)
                counter = counters[key]
                kept = _positions(slab, skip)
                if slab.entry.storage == MAPPED:
                    keep = kept.mask(start, end) if kept else None
                    _count_chunk(slab, start, end, counter, first_vector, read_ahead, keep)  # type: ignore[arg-type]
                    progress(slab.path, (end - start) * slab.row_bytes)
                    continue
                row = 0
                for bits in reader.chunks(slab, _chunk_rows(slab, options.chunk_rows)):
                    nbytes, row = bits.nbytes, row + bits.shape[0]
                    if kept:
                        bits = bits[kept.mask(row - bits.shape[0], row)]
                    counter.update(bits, first_vector)  # type: ignore[union-attr]
                    first_vector += bits.shape[0]
                    progress(slab.path, nbytes)
                    if stop.is_set():
                        break
        except BaseException:
            stop.set()
            raise
        return counters

    results = _run_threads(worker, threads, stop)
    optional = state.TRACK_LAST if track_last else ()
    totals = {
        g.key: (state.empty(g.width, optional + (state.SAE_STATS if g.key in plan.saes else ())), 0)
        for g in plan.groups.values()
    }
    for slab in plan.slabs:
        states, n = totals[slab.key]
        kept = _positions(slab, skip)
        totals[slab.key] = (states, n + (kept.before(slab.num_rows) if kept else slab.num_rows))
    kernels = set()
    for counters in results:
        for (key, _dtype), counter in counters.items():
            state.combine(totals[key][0], counter.result(), 0)
            kernels.add(counter.name)
    kernel = "+".join(sorted(kernels)) or kernel_for(device, options.kernel)
    return totals, kernel


def _run_threads(worker: Callable[[], object], threads: int, stop: threading.Event) -> list:
    """``worker()`` on ``threads`` threads; their results, or the first error raised in one (the
    others stop at their next item). Plain threads: concurrent.futures costs start-up (logging)."""
    results: list = [None] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = worker()
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            errors.append(e)

    pool = [
        threading.Thread(target=in_this_context(run), args=(i,), name=f"nact-count-{i}", daemon=True)  # the scan's session
        for i in range(threads)
    ]
    for t in pool:
        t.start()
    try:
        for t in pool:
            while t.is_alive():
                t.join(0.2)  # a join with a timeout lets Ctrl-C through
    except BaseException:
        stop.set()
        for t in pool:
            t.join()
        raise
    if errors:
        raise errors[0]
    return results


def _count_chunk(
    slab: TensorSlab, start: int, end: int, counter: Counter, first_vector: int, read_ahead: bool = False,
    keep: np.ndarray | None = None,
) -> None:
    """Map rows ``[start, end)`` of ``slab`` read-only and count them (those ``keep`` marks, if
    given); the mapping is dropped after. ``read_ahead``: ask the kernel to start reading the
    next window while this one is counted."""
    rule_view = np.dtype(f"u{slab.row_bytes // slab.width}") if slab.width else np.dtype(np.uint8)
    begin, stop = slab.byte_range(start, end)
    if isinstance(slab.path, RemotePath):  # one range request; the counting threads keep several in flight
        data = read_range(slab.path, begin, stop)  # (the same range as _fetch_ahead's)
        rows = np.frombuffer(data, dtype=rule_view).reshape(end - start, slab.width)
        counter.update(rows if keep is None else rows[keep], first_vector)
        return
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
        if read_ahead and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, stop, stop - begin, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)
    faulted = False
    try:
        rows = np.frombuffer(mapped, dtype=rule_view, count=(end - start) * slab.width, offset=begin - base)
        rows = rows.reshape(end - start, slab.width)
        try:
            counter.update(rows if keep is None else rows[keep], first_vector)
        except BufferError:  # the C kernel caught a SIGBUS: the file shrank under the mapping
            faulted = True
        del rows
    finally:
        mapped.close()
    if faulted:
        raise BadInput(slab.path, "changed during the scan: it was truncated while being counted")


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
    options = CountOptions(fire_above=fire_above, flatten=flatten, device=device, kernel=kernel, track_last=track_last)
    if _on_a_gpu(array) and not track_last and not flatten:  # counted where it lies: no copy to the host
        from .metric import TensorActivity

        shape = tuple(array.shape)  # type: ignore[attr-defined]
        components = shape[1] if len(shape) == 3 else None
        counter = TensorActivity(shape[-1], components, fire_above=options.fire_above, name=name)
        counter.update(array)
        return counter.activity()
    dtype, bits = raw_bits(array)
    if bits.ndim < 2:
        raise BadOption("array", f"shape {list(bits.shape)}", "has no batch axis: need [N, F] or [..., C, F]")
    names, num_rows, num_features = component_layout(name, tuple(bits.shape), flatten)
    rows = np.ascontiguousarray(bits).reshape(num_rows, len(names) * num_features)
    rule = fire_rule(dtype, options.fire_above)
    counter = make_counter(rule, rows.shape[1], resolve_device(options.device), options.kernel, track_last)
    counter.update(rows)
    states = counter.result()
    activity = NeuronActivity(options.fire_above)
    for i, component in enumerate(names):
        part = slice(i * num_features, (i + 1) * num_features)
        activity.add_states(component, state.select(states, part), num_rows)
    return activity


def _on_a_gpu(array: object) -> bool:
    device = getattr(array, "device", None)
    return type(array).__module__.startswith("torch") and getattr(device, "type", "cpu") != "cpu" and array.dim() in (2, 3)  # type: ignore[attr-defined]


def raw_bits(array: object) -> tuple[str, np.ndarray]:
    """The dtype name and the raw bits (as unsigned integers) of a numpy array or torch tensor."""
    if isinstance(array, np.ndarray):
        dtype = NUMPY_NAMES.get(array.dtype.name)
        if dtype is None:
            raise BadOption("array", f"dtype {array.dtype}", "cannot be counted")
        return dtype, np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
    module = type(array).__module__
    if module.startswith("torch"):
        import torch

        assert isinstance(array, torch.Tensor)
        dtype = TORCH_NAMES.get(str(array.dtype).removeprefix("torch."))
        if dtype is None:
            raise BadOption("array", f"dtype {array.dtype}", "cannot be counted")
        bits = signed_bits(array.detach().cpu().contiguous()).numpy()  # type: ignore[attr-defined]
        return dtype, bits.view(f"u{array.element_size()}")
    raise BadOption("array", f"of type {type(array).__name__}", "cannot be counted: pass a numpy array or torch tensor")
