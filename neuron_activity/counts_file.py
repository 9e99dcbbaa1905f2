"""Saved counts: exact fire counts, vectors and last-fired indices per component, with the
shards they came from, in one safetensors file.

Tensors are ``{component}/fire_counts``, ``/nan_counts``, ``/num_vectors`` (one value) and, when
tracked, ``/last_fired`` (the stream index of the last vector each neuron fired on, -1: never),
all int64. The metadata holds the schema version, nact's version, ``fire_above`` as an exact
fraction, the component order and the shards counted (path, size, modification time).

Stream order is the order shards were counted in (natural path order), rows in file order;
merged counts and incremental audits put later counts after earlier ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .activity import NeuronActivity
from .errors import BadInput, NactError

FORMAT_NAME = "nact-counts"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ShardRecord:
    """Which shard was counted, and what it looked like then."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> ShardRecord:
        """The record of a shard file, or of a folder counted as one unit (its files summed)."""
        resolved = Path(path).resolve()
        if resolved.is_dir():
            stats = [p.stat() for p in sorted(resolved.rglob("*")) if p.is_file()]
            return cls(str(resolved), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))
        st = resolved.stat()
        return cls(str(resolved), st.st_size, st.st_mtime_ns)


@dataclass
class SavedCounts:
    activity: NeuronActivity
    shards: list[ShardRecord] = field(default_factory=list)


def save_counts(path: Path, saved: SavedCounts) -> None:
    """Write ``saved`` to ``path`` atomically."""
    from safetensors.numpy import save_file

    from . import __version__
    from .files import write_atomic

    tensors: dict[str, np.ndarray] = {}
    for c in saved.activity.components.values():
        tensors[f"{c.name}/fire_counts"] = c.fire_counts.astype(np.int64)
        tensors[f"{c.name}/nan_counts"] = c.nan_counts.astype(np.int64)
        tensors[f"{c.name}/num_vectors"] = np.array([c.num_vectors], np.int64)
        if c.last_fired is not None:
            tensors[f"{c.name}/last_fired"] = c.last_fired.astype(np.int64)
    metadata = {
        "format": FORMAT_NAME,
        "schema_version": str(SCHEMA_VERSION),
        "nact_version": __version__,
        "fire_above": str(saved.activity.fire_above),
        "components": json.dumps(list(saved.activity.components)),
        "shards": json.dumps([vars(s) for s in saved.shards]),
        "order": "shards in the order counted (natural path order), rows in file order",
    }
    write_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def is_counts_file(path: Path) -> bool:
    """Whether ``path`` is a safetensors file that nact saved counts in (reads the header only)."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= 100 * 1024 * 1024:
                return False
            header = json.loads(f.read(length))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and (header.get("__metadata__") or {}).get("format") == FORMAT_NAME


def load_counts(path: Path) -> SavedCounts:
    """Read saved counts, or raise BadInput saying what is wrong with the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise BadInput(path, "no such file" if not path.exists() else "not a regular file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT_NAME:
                raise BadInput(path, "not a nact counts file (saved with nact scan --save-counts)")
            if metadata.get("schema_version") != str(SCHEMA_VERSION):
                raise BadInput(path, f"counts schema version {metadata.get('schema_version')} is not {SCHEMA_VERSION}")
            activity = NeuronActivity(Fraction(metadata["fire_above"]))
            keys = set(f.keys())
            for name in json.loads(metadata["components"]):
                last = f.get_tensor(f"{name}/last_fired") if f"{name}/last_fired" in keys else None
                activity.add(
                    name,
                    f.get_tensor(f"{name}/fire_counts"),
                    int(f.get_tensor(f"{name}/num_vectors")[0]),
                    f.get_tensor(f"{name}/nan_counts"),
                    last,
                )
            shards = [ShardRecord(**s) for s in json.loads(metadata["shards"])]
    except (SafetensorError, OSError) as e:
        raise BadInput(path, f"cannot read counts: {e}") from None
    except (KeyError, ValueError, TypeError) as e:
        raise BadInput(path, f"corrupt counts file: {type(e).__name__}: {e}") from None
    return SavedCounts(activity, shards)


def merge_counts(parts: list[tuple[Path, SavedCounts]]) -> SavedCounts:
    """Counts of several files added up, in the order given (for the time since last fired)."""
    merged: SavedCounts | None = None
    seen: dict[str, Path] = {}
    for path, part in parts:
        for shard in part.shards:
            if shard.path in seen:
                raise NactError(f"shard {shard.path} is counted in both {seen[shard.path]} and {path}")
            seen[shard.path] = path
        if merged is None:
            merged = SavedCounts(NeuronActivity(part.activity.fire_above), [])
        try:
            merged.activity.merge(part.activity)
        except NactError as e:
            raise NactError(f"{path}: {e}") from None
        merged.shards += part.shards
    if merged is None:
        raise NactError("no counts to merge")
    return merged

