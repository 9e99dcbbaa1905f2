"""Sparse latent caches written by EleutherAI's delphi.

A module folder holds ``{start}_{end}.safetensors`` splits (latents ``start..end`` inclusive),
each with ``locations`` ``[nnz, 3]`` (batch, position, latent - start), ``activations`` ``[nnz]``
and ``tokens`` ``[batch, position]``. The module is one component of ``batch x position``
vectors and ``max(end) + 1`` latents. Fires are counted from the stored entries with a bincount,
at a cost proportional to the entries. Such caches keep only the entries above their own storage
threshold: what they dropped counts as not firing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..counting import States, in_ranges
from ..dtypes import INTEGER_FORMATS, FireRule
from ..errors import BadInput
from .base import SPARSE, TensorEntry, TensorSlab
from .safetensors_files import read_header

FORMAT = "delphi"
FORMATS = (FORMAT,)
SUFFIXES: dict[str, str] = {}  # splits are safetensors files, told apart by their header
SPLIT_NAME = re.compile(r"^(\d+)_(\d+)$")
ENTRIES_PER_CHUNK = 1 << 22
NOTE = "sparse cache: entries it did not store (below its own threshold) count as not firing"


def is_split(header: list[TensorEntry]) -> bool:
    tensors = {e.key: e for e in header}
    a, loc = tensors.get("activations"), tensors.get("locations")
    return a is not None and loc is not None and len(a.shape) == 1 and loc.shape[1:] == (3,)


def _split(path: Path) -> tuple[int, int, dict[str, TensorEntry]]:
    match = SPLIT_NAME.match(path.stem)
    if not match:
        raise BadInput(path, "a delphi split must be named {start}_{end}.safetensors")
    start, end = int(match.group(1)), int(match.group(2))
    tensors = {e.key: e for e in read_header(path)}
    if not is_split(list(tensors.values())) or start > end:
        raise BadInput(path, "not a delphi split: needs 'locations' [nnz, 3] and 'activations' [nnz]")
    if tensors["locations"].shape[0] != tensors["activations"].shape[0]:
        raise BadInput(path, "'locations' and 'activations' have different numbers of entries")
    if tensors["locations"].dtype not in INTEGER_FORMATS:
        raise BadInput(path, f"'locations' has dtype {tensors['locations'].dtype}, not an integer type")
    return start, end, tensors


def entries(paths: list[Path]) -> list[TensorEntry]:
    modules: dict[Path, list[Path]] = {}
    for path in paths:
        modules.setdefault(path.parent, []).append(path)
    out = []
    for folder, files in modules.items():
        splits = sorted((_split(p) + (p,) for p in files), key=lambda s: s[0])
        num_vectors, dtype = None, splits[0][2]["activations"].dtype
        for start, end, tensors, path in splits:
            if "tokens" in tensors:
                n = math.prod(tensors["tokens"].shape)
                if num_vectors is not None and n != num_vectors:
                    raise BadInput(path, f"'tokens' gives {n} vectors, another split of {folder.name} gives {num_vectors}")
                num_vectors = n
            if tensors["activations"].dtype != dtype:
                raise BadInput(path, "splits of one module have different activation dtypes")
        for (_, end_a, _, a), (start_b, _, _, b) in zip(splits, splits[1:]):
            if start_b <= end_a:
                raise BadInput(b, f"latents overlap those of {a.name}")
        if num_vectors is None:
            raise BadInput(folder, "no split has a 'tokens' tensor, so the number of vectors is unknown")
        width = max(end for _, end, _, _ in splits) + 1
        out.append(
            TensorEntry(
                folder,
                folder.name,
                dtype,
                (num_vectors, width),
                FORMAT,
                files=tuple(p for *_, p in splits),
                file_bytes=tuple(t["activations"].nbytes + t["locations"].nbytes for _, _, t, _ in splits),
                note=NOTE,
                storage=SPARSE,
            )
        )
    return out


def _mapped(path: Path, entry: TensorEntry, dtype: type) -> np.ndarray:
    if math.prod(entry.shape) == 0:
        return np.empty(entry.shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=entry.offset, shape=entry.shape)


def count(slab: TensorSlab, rule: FireRule, track_last: bool = False) -> Iterator[tuple[Path, States, int]]:
    """Per chunk of a split: its path, counts over all latents (the last fired as a vector index
    ``batch * positions + position``), and the bytes read."""
    width = slab.width
    for path in slab.entry.files:
        start, _, tensors = _split(path)
        positions = tensors["tokens"].shape[-1] if "tokens" in tensors else 0
        locations = _mapped(path, tensors["locations"], INTEGER_FORMATS[tensors["locations"].dtype])
        bits = _mapped(path, tensors["activations"], rule.unsigned)
        for lo in range(0, bits.shape[0], ENTRIES_PER_CHUNK):
            a = np.asarray(bits[lo : lo + ENTRIES_PER_CHUNK])
            where = np.asarray(locations[lo : lo + ENTRIES_PER_CHUNK]).astype(np.int64)
            latents = where[:, 2] + start
            if latents.size and (latents.min() < 0 or latents.max() >= width):
                raise BadInput(path, f"a location names latent {int(latents.max())}, outside 0..{width - 1}")
            fires = np.zeros(a.shape, np.bool_)
            if rule.fire_ranges:
                in_ranges(a, rule.fire_ranges, fires, np.empty_like(a), np.empty_like(fires))
            fire_counts = np.bincount(latents[fires], minlength=width).astype(np.int64)
            nan_counts = np.zeros(width, np.int64)
            if rule.nan_above is not None:
                nans = (a & np.asarray(rule.magnitude_mask, a.dtype)) > rule.nan_above
                nan_counts = np.bincount(latents[nans], minlength=width).astype(np.int64)
            states = {"fire_counts": fire_counts, "nan_counts": nan_counts}
            if track_last:
                states["last_fired"] = np.full(width, -1, np.int64)
                vectors = where[:, 0] * positions + where[:, 1]
                np.maximum.at(states["last_fired"], latents[fires], vectors[fires])
            yield path, states, a.nbytes + where.size * locations.itemsize
        del locations, bits
