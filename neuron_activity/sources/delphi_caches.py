"""Sparse latent caches written by EleutherAI's delphi.

A module folder holds ``{start}_{end}.safetensors`` splits (latents ``start..end`` inclusive),
each with ``locations`` ``[nnz, 3]`` (batch, position, latent - start), ``activations`` ``[nnz]``
and ``tokens`` ``[batch, position]``. The module is one component of ``batch x position``
vectors over its whole width; fires are counted from the stored entries with a bincount, at a
cost proportional to the entries. ``LatentCache.save()`` writes one file per module instead
(``{module}.safetensors``, latent indices absolute, no width in the name).

The splits must cover the whole width (from ``config.json``'s ``n_splits`` where it is there,
so that a missing last split is caught): latents that were never read are never reported as
dead. A gap is an error naming the missing latents, unless partial modules are allowed: then
each run of splits is a component of its own (``module:start-end``) whose neurons keep their
true latent indices. Splits named one by one are such a choice.

delphi keeps only entries with ``|activation| > 1e-5`` and stores activations as fp16: what it
dropped counts as not firing.
"""

from __future__ import annotations

import math
import mmap
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..counters import States
from ..cpu_counting import in_ranges
from ..dtypes import INTEGER_FORMATS, FireRule
from ..errors import BadInput
from ..json_files import read_json
from ..native import kernels
from ..remote.objects import RemoteArray, RemotePath
from .base import SPARSE, ShardPath, TensorEntry, TensorSlab, drop_pages
from .safetensors_files import read_header

FORMAT = "delphi"
FORMATS = (FORMAT,)
SUFFIXES: dict[str, str] = {}  # splits are safetensors files, told apart by their header
SPLIT_NAME = re.compile(r"^(\d+)_(\d+)$")
ENTRIES_PER_CHUNK = 1 << 22
NOTE = (
    "sparse cache: delphi stores only entries with |activation| > 1e-5, as fp16; "
    "entries it did not store count as not firing"
)


def is_split(header: list[TensorEntry]) -> bool:
    tensors = {e.key: e for e in header}
    a, loc = tensors.get("activations"), tensors.get("locations")
    return a is not None and loc is not None and len(a.shape) == 1 and loc.shape[1:] == (3,)


@dataclass(frozen=True, slots=True)
class Split:
    path: ShardPath
    start: int  # first latent (inclusive)
    end: int  # last latent (inclusive)
    tensors: dict[str, TensorEntry]
    relative: bool  # locations hold latent - start (splits), or absolute latents (save())


def _split(path: ShardPath, num_latents: int | None = None) -> Split:
    tensors = {e.key: e for e in read_header(path)}
    if not is_split(list(tensors.values())):
        raise BadInput(path, "not a delphi cache: needs 'locations' [nnz, 3] and 'activations' [nnz]")
    match = SPLIT_NAME.match(path.stem)
    if match:
        start, end, relative = int(match.group(1)), int(match.group(2)), True
        if start > end:  # a width taken from a name is bounded by memory, when the plan is made
            raise BadInput(path, f"split {path.stem}: not a latent range (start <= end)")
    elif num_latents is not None:
        start, end, relative = 0, num_latents - 1, False
    else:
        raise BadInput(
            path,
            "a delphi cache saved whole (LatentCache.save): its width is not in its name; give the number of latents",
        )
    if tensors["locations"].shape[0] != tensors["activations"].shape[0]:
        raise BadInput(path, "'locations' and 'activations' have different numbers of entries")
    if tensors["locations"].dtype not in INTEGER_FORMATS:
        raise BadInput(path, f"'locations' has dtype {tensors['locations'].dtype}, not an integer type")
    tokens = tensors.get("tokens")
    if tokens is not None and len(tokens.shape) != 2:
        raise BadInput(path, f"'tokens' has shape {list(tokens.shape)}, not [batch, position]")
    return Split(path, start, end, tensors, relative)


def _config_splits(folder: ShardPath) -> int | None:
    """``n_splits`` from a module's ``config.json``, if it has one."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    n = read_json(config).get("n_splits")
    return n if isinstance(n, int) and n > 0 else None


def _runs(splits: list[Split]) -> list[list[Split]]:
    """Splits in latent order, cut where the next does not start right after the last."""
    runs: list[list[Split]] = []
    for s in splits:
        if runs and s.start == runs[-1][-1].end + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def _gaps(runs: list[list[Split]], width: int) -> list[tuple[int, int]]:
    gaps, at = [], 0
    for run in runs:
        if run[0].start > at:
            gaps.append((at, run[0].start - 1))
        at = run[-1].end + 1
    if at < width:
        gaps.append((at, width - 1))
    return gaps


def _span(a: int, b: int) -> str:
    return f"latent {a}" if a == b else f"latents {a}-{b}"


def entries(
    paths: list[ShardPath],
    *,
    num_latents: int | None = None,
    num_vectors: int | None = None,
    partial: bool = False,
    named: frozenset[ShardPath] = frozenset(),
) -> list[TensorEntry]:
    """One entry per module (or, for a partial module, per run of splits). ``named``: files
    the user named one by one (a choice of splits, so partial)."""
    modules: dict[ShardPath, list[ShardPath]] = {}
    for path in paths:
        unit = path.parent if SPLIT_NAME.match(path.stem) else path  # a folder of splits, or a whole file
        modules.setdefault(unit, []).append(path)
    out = []
    for unit, files in modules.items():
        splits = sorted((_split(p, num_latents) for p in files), key=lambda s: s.start)
        dtype = splits[0].tensors["activations"].dtype
        vectors = num_vectors
        positions = None
        for s in splits:
            if "tokens" in s.tensors:
                positions = s.tensors["tokens"].shape[1]
                n = math.prod(s.tensors["tokens"].shape)
                if vectors is not None and n != vectors:
                    raise BadInput(s.path, f"'tokens' gives {n} vectors, not {vectors} as the rest of {unit.name}")
                vectors = n
            if s.tensors["activations"].dtype != dtype:
                raise BadInput(s.path, "splits of one module have different activation dtypes")
        for a, b in zip(splits, splits[1:]):
            if b.start <= a.end:
                raise BadInput(b.path, f"latents overlap those of {a.path.name}")
        if vectors is None:
            raise BadInput(
                unit, "no split has a 'tokens' tensor, so the number of vectors is unknown; give it with --num-vectors"
            )
        runs = _runs(splits)
        expected = _config_splits(unit) if unit.is_dir() else None
        name = unit.name if unit.is_dir() else unit.stem
        width = num_latents if num_latents is not None else splits[-1].end + 1
        chosen = partial or all(p in named for p in files)
        gaps = _gaps(runs, width)
        if expected is not None and expected != len(splits) and not gaps and not chosen and num_latents is None:
            raise BadInput(
                unit, f"config.json says {expected} splits but {len(splits)} are here: the last split(s) are missing"
            )
        if gaps and not chosen:
            listed = ", ".join(_span(a, b) for a, b in gaps[:5]) + (", ..." if len(gaps) > 5 else "")
            raise BadInput(unit, f"the splits do not cover the module's {width} latents: {listed} are in no split")
        if gaps:
            for run in runs:
                first, last = run[0].start, run[-1].end
                out.append(_entry(unit, f"{name}:{first}-{last}", dtype, vectors, run, first, last, positions))
        else:
            told = num_latents is not None or expected is not None or not SPLIT_NAME.match(files[0].stem)
            note = None if told else f"its width, {width} latents, is taken from its split names (no config.json)"
            out.append(_entry(unit, name, dtype, vectors, splits, 0, width - 1, positions, note))
    return out


def _entry(
    unit: ShardPath,
    key: str,
    dtype: str,
    vectors: int,
    splits: list[Split],
    first: int,
    last: int,
    positions: int | None,
    note: str | None = None,
) -> TensorEntry:
    return TensorEntry(
        unit,
        key,
        dtype,
        (vectors, last - first + 1),
        FORMAT,
        member=str(first),  # the first latent this entry counts
        files=tuple(s.path for s in splits),
        file_bytes=tuple(s.tensors["activations"].nbytes + s.tensors["locations"].nbytes for s in splits),
        note=NOTE if note is None else f"{NOTE}; {note}",
        storage=SPARSE,
        positions=positions or None,  # from 'tokens' [batch, position]
    )


def first_latent(entry: TensorEntry) -> int:
    """The latent index of an entry's first neuron (nonzero for a partial module's run)."""
    return int(entry.member or 0)


class _Column:
    """An entry's column: mapped from a file (its pages dropped behind the loop), or fetched by
    range requests from an object as the loop slices it."""

    def __init__(self, path: ShardPath, entry: TensorEntry, dtype: type) -> None:
        self.map: mmap.mmap | None = None
        self.offset = entry.offset or 0
        self.rows: np.ndarray | RemoteArray
        if math.prod(entry.shape) == 0:
            self.rows = np.empty(entry.shape, dtype)
        elif isinstance(path, RemotePath):
            self.rows = RemoteArray(path, self.offset, entry.shape, dtype)
        else:
            with open(path, "rb") as f:
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            count = math.prod(entry.shape)
            self.rows = np.frombuffer(self.map, dtype=dtype, count=count, offset=self.offset).reshape(entry.shape)
        self.row_bytes = math.prod(entry.shape[1:]) * np.dtype(dtype).itemsize
        self.dropped = self.offset - self.offset % mmap.PAGESIZE  # where the next drop starts: the column's first page

    def drop_behind(self, rows: int) -> None:
        """Let the pages of the first ``rows`` rows leave the process (``drop_pages``), from where
        the last call stopped: the pages of the file before the column are not the column's."""
        if rows and self.map is not None:
            self.dropped = drop_pages(self.map, self.offset + rows * self.row_bytes, self.dropped)


def count(
    slab: TensorSlab,
    rule: FireRule,
    track_last: bool = False,
    files: tuple[ShardPath, ...] | None = None,
    native: bool = True,
    skip: tuple[int, ...] = (),
) -> Iterator[tuple[ShardPath, States, int]]:
    """Per chunk of a split (of ``files``, default all the entry's): its path, states over the
    entry's latents (the last fired as a vector index ``batch * positions + position``), and the
    bytes read. Only the latent column is decoded; batch and position columns are only range
    checked, and read whole only to track the last vector that fired. ``native``: count with the C
    kernel where it can (one pass over the columns), else with numpy. ``skip``: positions whose
    entries are left out (vectors are then numbered among those kept)."""
    width, base = slab.width, first_latent(slab.entry)
    num_latents = None if SPLIT_NAME.match(slab.entry.files[0].stem) else width
    for path in files or slab.entry.files:
        split = _split(path, num_latents)
        tokens = split.tensors.get("tokens")
        batches, positions = tokens.shape if tokens is not None else (None, None)
        if positions is None and skip and slab.positions:
            batches, positions = slab.num_rows // slab.positions, slab.positions  # 'tokens' of another split
        if track_last and positions is None:
            raise BadInput(
                path,
                "no 'tokens' tensor: the vector each entry belongs to is unknown, so the time since last fired is too",
            )
        kept_before = None
        if skip:
            keep_position = np.ones(positions or 0, np.bool_)
            keep_position[list(skip)] = False
            kept_before = np.concatenate([[0], np.cumsum(keep_position)])
        location_column = _Column(path, split.tensors["locations"], INTEGER_FORMATS[split.tensors["locations"].dtype])
        bits_column = _Column(path, split.tensors["activations"], rule.unsigned)
        locations, bits = location_column.rows, bits_column.rows
        first = split.start if split.relative else 0  # the latent that raw index 0 names
        span = split.end - first + 1  # raw indices 0 .. span - 1 are this file's latents
        offset = first - base  # where raw index 0 lands in the entry's width
        usable = native and not skip and (positions is None or batches and positions)
        kernel = _native_counter(locations, bits, track_last) if usable else None
        for lo in range(0, bits.shape[0], ENTRIES_PER_CHUNK):
            a = np.ascontiguousarray(bits[lo : lo + ENTRIES_PER_CHUNK])  # rows of a mapped array: no copy
            where = np.ascontiguousarray(locations[lo : lo + ENTRIES_PER_CHUNK])
            nbytes = a.nbytes + where.nbytes
            if kernel is not None:  # one pass in C: ranges checked, fires and NaNs counted
                fired, nan = np.zeros(span, np.int64), np.zeros(span, np.int64)
                try:
                    bad = kernel(
                        where,
                        LOCATION_CODES[(where.dtype.kind, where.itemsize)],
                        len(a),
                        a,
                        a.itemsize,
                        list(rule.fire_ranges),
                        rule.magnitude_mask if rule.nan_above is not None else 0,
                        rule.nan_above or 0,
                        split.start - first,
                        span - (split.start - first),
                        batches or 0,
                        positions or 0,
                        fired[split.start - first :],
                        nan[split.start - first :],
                    )
                except BufferError:
                    raise BadInput(path, "changed during the scan: it was truncated while being counted") from None
                if bad < 0:
                    states = {"fire_counts": _placed(fired, offset, width), "nan_counts": _placed(nan, offset, width)}
                    del a, where
                    bits_column.drop_behind(lo + ENTRIES_PER_CHUNK)
                    location_column.drop_behind(lo + ENTRIES_PER_CHUNK)
                    yield path, states, nbytes
                    continue
                # an entry out of range: the checks below name it
            raw = where[:, 2]
            i = _first_outside(raw, split.start - first, span)
            if i is not None:
                raise BadInput(
                    path,
                    f"a location names latent {int(raw[i])}, outside this file's latents {split.start}..{split.end}",
                )
            if positions is not None:
                for column, limit in ((0, batches or 0), (1, positions)):
                    i = _first_outside(where[:, column], 0, limit)
                    if i is not None:
                        raise BadInput(
                            path,
                            f"a location names batch {int(where[i, 0])}, position {int(where[i, 1])}, "
                            f"outside 'tokens' [{batches}, {positions}]",
                        )
            if kept_before is not None:  # entries at skipped positions are not counted
                kept = keep_position[where[:, 1]]
                a, where = a[kept], where[kept]
                raw = where[:, 2]
            fires = np.zeros(a.shape, np.bool_)
            if rule.fire_ranges:
                in_ranges(a, rule.fire_ranges, fires, np.empty_like(a), np.empty_like(fires))
            states = {"fire_counts": _placed(np.bincount(raw[fires], minlength=span), offset, width)}
            states["nan_counts"] = np.zeros(width, np.int64)
            if rule.nan_above is not None:
                nans = (a & np.asarray(rule.magnitude_mask, a.dtype)) > rule.nan_above
                if nans.any():
                    states["nan_counts"] = _placed(np.bincount(raw[nans], minlength=span), offset, width)
            if track_last:
                hit = where[fires]
                if kept_before is None:
                    vectors = hit[:, 0].astype(np.int64) * (positions or 0) + hit[:, 1]
                else:
                    vectors = hit[:, 0].astype(np.int64) * int(kept_before[-1]) + kept_before[hit[:, 1]]
                last = np.full(width, -1, np.int64)
                np.maximum.at(last, hit[:, 2].astype(np.int64) + offset, vectors)
                states["last_fired"] = last
            yield path, states, nbytes
            bits_column.drop_behind(lo + ENTRIES_PER_CHUNK)
            location_column.drop_behind(lo + ENTRIES_PER_CHUNK)
        del locations, bits, location_column, bits_column


LOCATION_CODES = {("u", 2): "H", ("u", 4): "I", ("i", 4): "i", ("i", 8): "q"}  # the kernel's location types


def _native_counter(
    locations: np.ndarray | RemoteArray, bits: np.ndarray | RemoteArray, track_last: bool
) -> Callable[..., int] | None:
    """The C kernel's sparse count, where it takes these columns (uint16, uint32, int32 or int64
    locations, 16- or 32-bit values; not when the last vector that fired is tracked),
    else None."""
    counter: Callable[..., int] | None = getattr(kernels, "count_sparse", None)
    kind = (locations.dtype.kind, locations.itemsize)
    if counter is None or track_last or kind not in LOCATION_CODES or bits.itemsize not in (2, 4):
        return None
    if locations.ndim != 2 or locations.shape[1] != 3:
        return None
    return counter


def _first_outside(values: np.ndarray, low: int, stop: int) -> int | None:
    """The index of the first value outside ``[low, stop)``, or None when every one is inside
    (checked by min and max first: no copy)."""
    if not values.size or (int(values.min()) >= low and int(values.max()) < stop):
        return None
    as_int = values.astype(np.int64)
    return int(np.flatnonzero((as_int < low) | (as_int >= stop))[0])


def _placed(counts: np.ndarray, offset: int, width: int) -> np.ndarray:
    """Counts of a file's raw latent indices, placed at ``offset`` in the entry's ``width``."""
    out = np.zeros(width, np.int64)
    out[offset : offset + len(counts)] = counts
    return out
