"""The counting engine: a plan's slabs cut into work items (windows of mapped rows, whole
entries a reader streams, files of a sparse cache), counted on threads, each thread keeping one
counter per stream and dtype, and the counters' states combined per stream.

Windows of a local file are mapped read-only and dropped after they are counted; windows of a
remote object are fetched by range requests on the counting threads (one thread: fetched
ahead). Positions a scan skips are left out before any counter sees a row.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from . import state
from .counters import Counted, Counter, States
from .counting import kernel_for, make_counter
from .dtypes import FireRule, fire_rule
from .errors import BadInput
from .options import CountOptions
from .remote.objects import IO_THREADS, WINDOW_BYTES, RemotePath, current, in_this_context, read_range
from .sources.base import FORTRAN, MAPPED, SPARSE, SWAPPED, ShardPath, TensorSlab
from .sources.planning import ScanPlan
from .sources.registry import DENSE_READERS, SPARSE_READERS

if TYPE_CHECKING:
    from .digests import Blocks  # an audit's: it passes one in

CHUNK_BYTES = 32 * 1024 * 1024  # default window mapped at a time, per thread
STATE_BYTES = 512 * 1024 * 1024  # per-neuron state of all threads: wide layers count with fewer threads

ProgressCallback = Callable[[ShardPath, int], None]
Totals = dict[str, tuple[States, int]]  # per stream: its states over its whole width, its vectors


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
    n = io_threads or IO_THREADS
    session = current()
    queue: deque[WorkItem] = deque()
    for item in work:
        slab, start, end, _ = item
        if slab.entry.storage == MAPPED and isinstance(slab.path, RemotePath):
            session.fetch_ahead(slab.path, *slab.byte_range(start, end), n)
        queue.append(item)
        if len(queue) > n:
            yield queue.popleft()
    yield from queue


def _chunk_rows(slab: TensorSlab, chunk_rows: int | None) -> int:
    if chunk_rows:
        return chunk_rows
    if isinstance(slab.path, RemotePath):
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


def count_slabs(
    plan: ScanPlan,
    options: CountOptions,
    device: str,
    on_progress: ProgressCallback | None,
    blocks: Blocks | None = None,
) -> tuple[Totals, str]:
    """Per key: the states over its whole width and its number of vectors; and the kernel.
    ``blocks``: where the block digests of the local files' counted bytes go (an audit's)."""
    threads = 1 if device == "mps" else options.threads or min(os.cpu_count() or 1, 8)  # mps: one queue
    remote = any(isinstance(p, RemotePath) for p in plan.shards)
    if remote:  # each thread waits on its range request, then counts
        threads = options.io_threads or IO_THREADS
    widest = max((s.width for s in plan.slabs), default=1)
    fields = 2 + options.track_last + 3 * options.stats  # int64 or float64 states per neuron and thread
    threads = max(1, min(threads, STATE_BYTES // (widest * 8 * fields) or 1))
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

    def worker() -> dict[tuple[str, str], Counted]:
        counters: dict[tuple[str, str], Counter] = {}
        steps: dict[tuple[str, str], int] = {}  # rows an SAE encodes at a time: a stop is seen between them
        sparse: dict[tuple[str, str], _Sum] = {}  # states of sparse caches, which their readers count
        try:
            while (item := next_item()) is not None:
                slab, start, end, first_vector = item
                key = (slab.key, slab.dtype)
                if slab.entry.storage == SPARSE:
                    sums = sparse.setdefault(key, _Sum(slab.width, track_last))
                    files = slab.entry.files[start:end]
                    native = options.kernel in (None, "native")
                    reader = SPARSE_READERS[slab.entry.format]
                    counted = reader.count(slab, rule_for(slab.dtype), track_last, files, native, skip)
                    for path, states, nbytes in counted:
                        sums.add(states, first_vector)
                        progress(path, nbytes)
                    continue
                if key not in counters and slab.key in plan.saes:
                    from .sae import sae_counter  # only scans with SAEs load their code (~6 ms)

                    saes = [b.sae for b in plan.saes[slab.key]]
                    made = sae_counter(
                        slab.dtype,
                        saes,
                        device,
                        options.kernel,
                        track_last,
                        options.fire_above,
                        options.sae_dtype,
                        options.stats,
                    )
                    counters[key], steps[key] = made, made.step
                elif key not in counters:
                    rule = rule_for(slab.dtype)
                    counters[key] = make_counter(rule, slab.width, device, options.kernel, track_last, options.stats)
                counter = counters[key]
                kept = _positions(slab, skip)
                if slab.entry.storage == MAPPED:
                    keep = kept.mask(start, end) if kept else None
                    _count_chunk(
                        slab, start, end, counter, first_vector, read_ahead, keep, steps.get(key), stop, blocks
                    )
                    progress(slab.path, (end - start) * slab.row_bytes)
                    continue
                _check_size(slab)
                row = 0
                try:
                    for bits in DENSE_READERS[slab.entry.format].chunks(slab, _chunk_rows(slab, options.chunk_rows)):
                        nbytes, row = bits.nbytes, row + bits.shape[0]
                        if kept:
                            bits = bits[kept.mask(row - bits.shape[0], row)]
                        counter.update(bits, first_vector)
                        first_vector += bits.shape[0]
                        progress(slab.path, nbytes)
                        if stop.is_set():
                            break
                except (OSError, ValueError):  # numpy's memmap of a file that shrank: "mmap length is greater ..."
                    _check_size(slab)
                    raise
        except BaseException:
            stop.set()
            raise
        return {**counters, **sparse}

    results = _run_threads(worker, threads, stop)
    optional = state.TRACK_LAST if track_last else ()
    stats = {True: state.MARGINS, False: state.MOMENTS} if options.stats else {True: (), False: ()}
    totals = {  # a sparse cache's readers keep no moments: combining its states drops them
        g.key: (
            state.empty(
                g.width, optional + (state.SAE_STATS if g.key in plan.saes else ()) + stats[g.key in plan.saes]
            ),
            0,
        )
        for g in plan.groups.values()
    }
    for slab in plan.slabs:
        states, n = totals[slab.key]
        kept = _positions(slab, skip)
        totals[slab.key] = (states, n + (kept.before(slab.num_rows) if kept else slab.num_rows))
    kernels: set[str] = set()
    for counters in results:
        for (key, _dtype), counter in counters.items():
            state.combine(totals[key][0], counter.result(), 0)
            kernels.add(counter.name)
    kernel = "+".join(sorted(kernels)) or kernel_for(device, options.kernel)
    return totals, kernel


Result = TypeVar("Result")


STOP_WAIT_SECONDS = 10.0  # after a stop, how long the counting threads may take to finish their item
THREAD_PREFIX = "nact-count-"


def _run_threads(worker: Callable[[], Result], threads: int, stop: threading.Event) -> list[Result]:
    """``worker()`` on ``threads`` threads; their results, or the first error raised in one (the
    others stop at their next item). Plain threads: concurrent.futures costs start-up (logging).

    Each thread sets its own completion event when it ends, and the caller waits on those, never
    on ``Thread.join``: a Ctrl-C (or SIGTERM) raised inside ``join(timeout)`` can leave Python 3.11
    taking a running thread for stopped, and an interpreter that shuts down under a thread still
    inside a BLAS product hangs or crashes. After a stop the threads get ``STOP_WAIT_SECONDS`` to
    finish their item; ``counting_threads_alive`` tells the caller whether one did not."""
    results: dict[int, Result] = {}
    errors: list[BaseException] = []
    done = [threading.Event() for _ in range(threads)]

    def run(i: int) -> None:
        try:
            results[i] = worker()
        except BaseException as e:
            errors.append(e)
        finally:
            done[i].set()

    pool = [
        threading.Thread(
            target=in_this_context(run),
            args=(i,),
            name=f"{THREAD_PREFIX}{i}",
            daemon=True,  # in the scan's session
        )
        for i in range(threads)
    ]
    started = 0
    try:
        for t in pool:
            t.start()
            started += 1
        for event in done:
            while not event.wait(0.2):  # a wait with a timeout lets Ctrl-C through
                pass
    except BaseException:
        stop.set()
        for event in done[started:]:  # never started: nothing to wait for
            event.set()
        _wait_stopped(done)
        raise
    if errors:
        raise errors[0]
    return [results[i] for i in range(threads)]


def _wait_stopped(done: list[threading.Event]) -> None:
    """Wait (at most ``STOP_WAIT_SECONDS`` in all) for stopped threads to finish their item; a
    second Ctrl-C or SIGTERM meanwhile does not cut the wait short."""
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    for event in done:
        while not event.is_set() and time.monotonic() < deadline:
            try:
                event.wait(min(0.2, max(deadline - time.monotonic(), 0)))
            except KeyboardInterrupt:
                continue


def counting_threads_alive() -> bool:
    """Whether a counting thread is still running (it did not stop within ``STOP_WAIT_SECONDS``):
    the process must then end without shutting the interpreter down under it (``os._exit``)."""
    return any(t.name.startswith(THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())


def _check_size(slab: TensorSlab) -> None:
    """A local entry its reader maps as it lies in the file (byte-swapped, Fortran order) must
    still fit in the file: one that shrank since it was planned changed during the scan."""
    if slab.entry.storage not in (SWAPPED, FORTRAN) or isinstance(slab.path, RemotePath):
        return
    needed = (slab.entry.offset or 0) + slab.entry.nbytes  # Fortran order: no offset kept, the data at least
    try:
        size = os.stat(slab.path).st_size
    except OSError as e:
        raise BadInput(slab.path, f"changed during the scan: {e.strerror or e}") from None
    if size < needed:
        raise BadInput(slab.path, f"changed during the scan: now {size} bytes, tensor {slab.key!r} needs {needed}")


def _count_chunk(
    slab: TensorSlab,
    start: int,
    end: int,
    counter: Counter,
    first_vector: int,
    read_ahead: bool = False,
    keep: np.ndarray | None = None,
    step: int | None = None,
    stopped: threading.Event | None = None,
    blocks: Blocks | None = None,
) -> None:
    """Map rows ``[start, end)`` of ``slab`` read-only and count them (those ``keep`` marks, if
    given); the mapping is dropped after. ``read_ahead``: ask the kernel to start reading the
    next window while this one is counted. ``step``: hand the counter that many rows at a time
    (an SAE's batch: the counter would split the window so itself), and stop between them once
    ``stopped`` is set. ``blocks``: hash the file's blocks the window covers as it is counted."""
    rule_view = np.dtype(f"u{slab.row_bytes // slab.width}") if slab.width else np.dtype(np.uint8)
    begin, stop = slab.byte_range(start, end)
    if isinstance(slab.path, RemotePath):  # one range request; the counting threads keep several in flight
        data = read_range(slab.path, begin, stop)  # (the same range as _fetch_ahead's)
        rows = np.frombuffer(data, dtype=rule_view).reshape(end - start, slab.width)
        _update(counter, rows if keep is None else rows[keep], first_vector, step, stopped)
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

        def count(a: int, b: int, rows: np.ndarray = rows) -> None:
            part, before = (rows[a:b], a) if keep is None else (rows[a:b][keep[a:b]], int(keep[:a].sum()))
            _update(counter, part, first_vector + before, step, stopped)

        try:
            if blocks is None:
                count(0, end - start)
            else:
                window = memoryview(mapped)[begin - base : stop - base]
                try:
                    blocks.count_and_hash(str(slab.path), window, begin, slab.row_bytes, count)
                finally:
                    window.release()
        except BufferError:  # the C kernel caught a SIGBUS: the file shrank under the mapping
            faulted = True
        del count  # its default holds the rows: the mapping closes only once nothing views it
        del rows
    finally:
        mapped.close()
    if faulted:
        raise BadInput(slab.path, "changed during the scan: it was truncated while being counted")


def _update(
    counter: Counter, rows: np.ndarray, first_vector: int, step: int | None, stop: threading.Event | None
) -> None:
    """``counter.update`` with ``rows``, ``step`` rows at a time (all at once without a step)."""
    step = step or max(rows.shape[0], 1)
    for at in range(0, rows.shape[0], step):
        if at and stop is not None and stop.is_set():
            return
        counter.update(rows[at : at + step], first_vector + at)
