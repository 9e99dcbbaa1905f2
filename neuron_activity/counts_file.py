"""Saved counts: exact per-neuron states per component, with the shards they came from, in one
safetensors file.

Tensors are ``{component}/{field}`` for every field of ``state.FIELDS`` that was kept (int64
``fire_counts``, ``nan_counts`` and, when tracked, ``last_fired``: the stream index of the last
vector each neuron fired on, -1: never; for SAE latents float64 ``act_sums`` and ``act_max``;
with stats, ``value_counts``, ``value_means`` and ``value_m2`` of stored activations, and
``pre_max`` and ``margins`` of SAE latents) and ``{component}/num_vectors`` (one value). Files
without the optional ones load as they are. ``saes`` in the metadata describes the SAE of
each latent component. The
metadata holds the schema version, nact's version, ``fire_above`` as an exact fraction, the
component order, the shards counted (path, size, modification time), and, for a part of a
split scan, which part it is and where its shards stand in the whole stream.

Stream order is the order shards were counted in (natural path order), rows in file order;
merged counts and incremental audits put later counts after earlier ones. Files of schema
version 1 (no part record) load as they are.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from . import state
from ._version import __version__
from .activity import NeuronActivity
from .decimals import decimal_text, parse_decimal
from .errors import BadInput, BadOutput, CountsMismatch, NactError, NotCountsFile
from .files import write_atomic
from .json_files import parse_json
from .memory import STATE_BYTES_PER_NEURON, check_fits
from .options import MAX_FIRE_ABOVE, MAX_PARTS
from .remote.objects import RemotePath, current
from .sources.base import ShardPath
from .sources.safetensors_files import COUNTS_FORMAT as FORMAT_NAME
from .sources.safetensors_files import read_header, read_metadata
from .sparsity import (
    check_one_component as check_one_component,
)
from .sparsity import (
    is_sparsity_file as is_sparsity_file,
)
from .sparsity import (
    load_sparsity as load_sparsity,
)
from .sparsity import (
    save_sparsity as save_sparsity,
)  # the "x as x" imports: names moved elsewhere, still importable here

SCHEMA_VERSION = 2
READABLE_VERSIONS = ("1", "2")
MAX_COUNT = 2**63 - 1  # int64: the most vectors (and so fires) a count holds, and the largest neuron index
SAFETENSORS_DTYPES = {"int64": "I64", "float64": "F64"}  # state.FIELDS' dtypes as safetensors names them


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """Which shard was counted, and what it looked like then."""

    path: str
    size: int
    mtime_ns: int
    tag: str = ""  # a remote object's version tag (its ETag); "" for files
    digest: str = ""  # a file's content digest (``digests``), where an audit recorded one

    @classmethod
    def of(cls, path: ShardPath) -> ShardRecord:
        """The record of a shard file, or of a folder counted as one unit (its files summed),
        or of a remote object (its URL, size, last modified and ETag as this run's listing said)."""
        if isinstance(path, RemotePath):
            if path.is_dir():  # a folder of objects (a delphi module): its objects' sum and tags
                import hashlib  # OpenSSL: 3 ms of every run, for remote module folders only

                found = current().objects_under(path)
                tag = hashlib.sha256("\n".join(f"{u} {f.tag}" for u, f in found.items()).encode()).hexdigest()[:32]
                return cls(
                    str(path), sum(f.size for f in found.values()), max(f.modified_ns for f in found.values()), tag
                )
            now = current().info(path)  # as this run's listing (or HEAD) found it
            return cls(str(path), now.size, now.modified_ns, now.tag)
        resolved = Path(path).resolve()
        if resolved.is_dir():
            stats = [p.stat() for p in sorted(resolved.rglob("*")) if p.is_file()]
            return cls(str(resolved), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))
        st = resolved.stat()
        return cls(str(resolved), st.st_size, st.st_mtime_ns)

    @classmethod
    def in_memory(cls) -> ShardRecord:
        """The record of vectors counted in memory (a training loop's metric), which no file
        names: a name of its own, so that the same counts merged twice are recognised."""
        return cls(f"<counted in memory {uuid.uuid4().hex[:16]}>", 0, time.time_ns())


@dataclass(frozen=True)
class PartRecord:
    """Part ``index`` of ``of`` of a split scan: units ``[first_unit, first_unit + units)`` of
    the ``total_units`` sorted units of the whole scan."""

    index: int
    of: int
    first_unit: int
    units: int
    total_units: int


@dataclass
class SavedCounts:
    activity: NeuronActivity
    shards: list[ShardRecord] = field(default_factory=list)
    part: PartRecord | None = None
    kernel: str | None = None  # what counted, when known
    device: str | None = None


def tensor_prefix(name: str) -> str:
    """A component's name as the names of its tensors hold it: as it is, or, when it cannot be
    UTF-8 (a file name's undecodable bytes, kept as surrogates), escaped as JSON escapes it. The
    metadata's component list (JSON) holds the name itself, so nothing is lost."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(name)[1:-1]
    return name


def save_counts(path: Path, saved: SavedCounts) -> None:
    """Write ``saved`` to ``path`` atomically. Counts of vectors that no shard record names (a
    training loop's metric) are recorded as counted in memory, so a merge can tell them apart."""
    tensors: dict[str, np.ndarray] = {}
    prefixes: dict[str, str] = {}
    for c in saved.activity.components.values():
        prefix = tensor_prefix(c.name)
        if prefix in prefixes:
            raise BadOutput(path, f"cannot write: components {prefixes[prefix]!r} and {c.name!r} share tensor names")
        prefixes[prefix] = c.name
        for name, values in c.states.items():
            tensors[f"{prefix}/{name}"] = np.ascontiguousarray(values, dtype=state.BY_NAME[name].dtype)
        tensors[f"{prefix}/num_vectors"] = np.array([c.num_vectors], np.int64)
    shards = saved.shards
    if not shards and any(c.num_vectors for c in saved.activity.components.values()):
        shards = [ShardRecord.in_memory()]
    metadata = {
        "format": FORMAT_NAME,
        "schema_version": str(SCHEMA_VERSION),
        "nact_version": __version__,
        "fire_above": str(saved.activity.fire_above),
        "components": json.dumps(list(saved.activity.components)),
        "shards": json.dumps([{k: v for k, v in asdict(s).items() if k not in ("tag", "digest") or v} for s in shards]),
        "order": "shards in the order counted (natural path order), rows in file order",
    }
    if saved.part is not None:
        metadata["part"] = json.dumps(asdict(saved.part))
    saes = {c.name: c.sae for c in saved.activity.components.values() if c.sae}
    if saes:
        metadata["saes"] = json.dumps(saes)
    firsts = {c.name: c.first_neuron for c in saved.activity.components.values() if c.first_neuron}
    if firsts:
        metadata["first_neurons"] = json.dumps(firsts)
    for key in ("kernel", "device"):
        if getattr(saved, key):
            metadata[key] = str(getattr(saved, key))
    write_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


JsonKind = TypeVar("JsonKind", list[Any], dict[str, Any])


def _json(path: Path, metadata: dict[str, str], key: str, kind: type[JsonKind]) -> JsonKind:
    try:
        value = parse_json(metadata[key], path)
    except KeyError:
        raise BadInput(path, f"corrupt counts file: no {key!r} in its metadata") from None
    except BadInput:
        raise BadInput(path, f"corrupt counts file: {key!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise BadInput(path, f"corrupt counts file: {key!r} is not a JSON {kind.__name__}")
    return value


def _check_states(path: Path, name: str, states: dict[str, np.ndarray], num_vectors: int) -> None:
    """Counts that could not have come from a scan are refused, naming what is wrong."""
    problems = {
        "fire_counts": (states["fire_counts"] < 0) | (states["fire_counts"] > num_vectors),
        "nan_counts": (states["nan_counts"] < 0) | (states["nan_counts"] > num_vectors),
    }
    for stat in ("act_sums", "act_max", "pre_max", "margins"):  # kept for SAE latents
        if stat in states:
            problems[stat] = np.isnan(states[stat])
    if "value_counts" in states:  # kept with stats
        problems["value_counts"] = (states["value_counts"] < 0) | (states["value_counts"] > num_vectors)
    if "value_m2" in states:
        problems["value_m2"] = states["value_m2"] < 0
    if "last_fired" in states:
        last = states["last_fired"]
        problems["last_fired"] = (last < -1) | (last >= num_vectors) | ((last >= 0) != (states["fire_counts"] > 0))
    for field_name, bad in problems.items():
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise BadInput(
                path,
                f"corrupt counts file: {name}/{field_name}[{i}] = {states[field_name][i]} "
                f"cannot be with {num_vectors} vectors",
            )


def _check_tensors(path: Path, names: list[str]) -> dict[str, int]:
    """Each component's width, from the file's header, before any tensor is read: its tensors
    are there, have one axis of one width, and are stored as a scan stores them (whole counts
    as int64: never floats, so never 2.7 fires); all of them fit in memory."""
    entries = {e.key: e for e in read_header(path)}
    widths: dict[str, int] = {}
    for name in names:
        prefix = tensor_prefix(name)
        for required in ("fire_counts", "nan_counts", "num_vectors"):
            if f"{prefix}/{required}" not in entries:
                raise BadInput(path, f"corrupt counts file: component {name!r} has no {required}")
        vectors = entries[f"{prefix}/num_vectors"]
        if vectors.shape != (1,) or vectors.dtype != "I64":
            raise BadInput(path, f"corrupt counts file: {name}/num_vectors is not one count")
        counts_shape = entries[f"{prefix}/fire_counts"].shape
        if len(counts_shape) != 1:
            raise BadInput(
                path, f"corrupt counts file: {name}/fire_counts has shape {list(counts_shape)}, not one axis"
            )
        width = counts_shape[0]
        for fld in state.FIELDS:
            entry = entries.get(f"{prefix}/{fld.name}")
            if entry is None:
                continue
            if entry.shape != (width,):
                raise BadInput(
                    path, f"corrupt counts file: {name}/{fld.name} has shape {list(entry.shape)}, not [{width}]"
                )
            if entry.dtype != SAFETENSORS_DTYPES[fld.dtype]:
                kind = "whole counts" if fld.dtype == "int64" else "values"
                raise BadInput(
                    path,
                    f"corrupt counts file: {name}/{fld.name} is stored as {entry.dtype}, "
                    f"not as a scan stores its {kind} ({SAFETENSORS_DTYPES[fld.dtype]})",
                )
        widths[name] = width
    total = sum(widths.values())
    check_fits(path, f"reading the counts of {total:,} neurons", total * STATE_BYTES_PER_NEURON)
    return widths


def _first_neurons(path: Path, metadata: dict[str, str], widths: dict[str, int]) -> dict[str, int]:
    """Where each component starts in its layer (a partial delphi module's run): an index that
    a neuron of a count can have."""
    if "first_neurons" not in metadata:
        return {}
    firsts = _json(path, metadata, "first_neurons", dict)
    for name, first in firsts.items():
        if name not in widths or type(first) is not int or first < 0:
            raise BadInput(path, "corrupt counts file: first_neurons names no component or no index")
        if first + widths[name] > MAX_COUNT:
            raise BadInput(path, f"corrupt counts file: first neuron {first} of {name!r} is beyond any layer")
    return firsts


def _part(path: Path, metadata: dict[str, str]) -> PartRecord | None:
    """The part record: a part of a split scan as ``--shard`` makes them."""
    if "part" not in metadata:
        return None
    record = _json(path, metadata, "part", dict)
    try:
        values = {f.name: record[f.name] for f in fields(PartRecord)}
    except KeyError:
        raise BadInput(path, "corrupt counts file: the part record is incomplete") from None
    if not all(type(v) is int for v in values.values()):
        raise BadInput(path, "corrupt counts file: the part record is not whole numbers")
    part = PartRecord(**values)
    if not (
        1 <= part.of <= MAX_PARTS
        and 0 <= part.index < part.of
        and 0 <= part.first_unit
        and 0 <= part.units
        and part.first_unit + part.units <= part.total_units <= MAX_COUNT
    ):
        raise BadInput(
            path,
            f"corrupt counts file: part {part.index}/{part.of} of units {part.first_unit}+{part.units} "
            f"of {part.total_units} is not a part of a split scan (at most {MAX_PARTS:,} parts)",
        )
    return part


def load_counts(path: Path) -> SavedCounts:
    """Read saved counts, or raise BadInput saying what is wrong with the file. Everything the
    header says is checked before a tensor is read."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(path, "no such file" if not path.exists() else "not a regular file")
    metadata = read_metadata(path)
    if metadata is None or metadata.get("format") != FORMAT_NAME:
        raise NotCountsFile(path, "not a nact counts file")
    if metadata.get("schema_version") not in READABLE_VERSIONS:
        raise BadInput(
            path,
            f"counts schema version {metadata.get('schema_version')} is not one this nact reads ({', '.join(READABLE_VERSIONS)})",
        )
    try:
        fire_above = parse_decimal(str(metadata.get("fire_above")), "fire_above")
    except NactError:
        raise BadInput(
            path, f"corrupt counts file: fire_above {metadata.get('fire_above')!r} is not a number"
        ) from None
    if abs(fire_above) > MAX_FIRE_ABOVE:
        raise BadInput(
            path, f"corrupt counts file: fire_above {metadata.get('fire_above')!r} is beyond every float format"
        )
    names = _json(path, metadata, "components", list)
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise BadInput(path, "corrupt counts file: the component list is not a list of distinct names")
    widths = _check_tensors(path, names)
    firsts = _first_neurons(path, metadata, widths)
    shards = []
    for s in _json(path, metadata, "shards", list):
        try:
            shards.append(
                ShardRecord(
                    str(s["path"]), int(s["size"]), int(s["mtime_ns"]), str(s.get("tag", "")), str(s.get("digest", ""))
                )
            )
        except (KeyError, TypeError, ValueError):
            raise BadInput(path, "corrupt counts file: a shard record is not {path, size, mtime_ns}") from None
    part = _part(path, metadata)
    activity = NeuronActivity(fire_above)
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            for name in names:
                prefix = tensor_prefix(name)
                vectors = f.get_tensor(f"{prefix}/num_vectors")
                if int(vectors[0]) < 0:
                    raise BadInput(path, f"corrupt counts file: {name}/num_vectors is not one count")
                num_vectors = int(vectors[0])
                states = {
                    fld.name: f.get_tensor(f"{prefix}/{fld.name}")
                    for fld in state.FIELDS
                    if f"{prefix}/{fld.name}" in keys
                }
                _check_states(path, name, states, num_vectors)
                activity.add_states(name, states, num_vectors)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise BadInput(path, f"cannot read counts: {e}") from None
    for name, first in firsts.items():
        activity.components[name].first_neuron = first
    if "saes" in metadata:
        for name, described in _json(path, metadata, "saes", dict).items():
            if name in activity.components and isinstance(described, dict):
                activity.components[name].sae = described
    return SavedCounts(activity, shards, part, metadata.get("kernel"), metadata.get("device"))


def stream_order(parts: list[tuple[Path, SavedCounts]]) -> tuple[list[tuple[Path, SavedCounts]], list[str]]:
    """The parts in stream order, and notes on what the order rests on.

    Parts of one split scan (every file records a part of the same split) are put in the order
    of their part numbers, whatever order they were given in; a missing part is noted. Other
    files keep the order given: the time since last fired takes each to come after the one before.
    """
    records = [(path, p.part) for path, p in parts if p.part is not None]
    if not parts or len(records) < len(parts):
        return parts, []
    splits = {(r.of, r.total_units) for _, r in records}
    if len(splits) > 1:
        listed = ", ".join(f"{path} is part {r.index}/{r.of}" for path, r in records)
        raise CountsMismatch(f"the counts are parts of different splits ({listed})")
    seen: dict[int, Path] = {}
    for path, r in records:
        if r.index in seen:
            raise CountsMismatch(f"part {r.index}/{r.of} is given twice: {seen[r.index]} and {path}")
        seen[r.index] = path
    order = {path: r.index for path, r in records}
    ordered = sorted(parts, key=lambda item: order[item[0]])
    of = records[0][1].of
    missing = [i for i in range(of) if i not in seen]
    notes = []
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        notes.append(f"{len(parts)} of {of} parts merged; missing part(s) {shown}")
    return ordered, notes


def merge_counts(parts: list[tuple[Path, SavedCounts]], *, union: bool = False) -> tuple[SavedCounts, list[str]]:
    """Counts of several files added up in stream order (see ``stream_order``), and notes.

    Every file must have the same components (unless ``union``), feature counts and
    ``fire_above``, and no shard may be counted twice.
    """
    if not parts:
        raise NactError("no counts to merge")
    ordered, notes = stream_order(parts)
    first_path, first = ordered[0]
    merged = SavedCounts(NeuronActivity(first.activity.fire_above), [])
    seen: dict[str, Path] = {}
    vectors: dict[str, int] = {}
    for path, part in ordered:
        _check_recorded(path, part, len(ordered))
        for c in part.activity.components.values():
            vectors[c.name] = vectors.get(c.name, 0) + c.num_vectors
            if vectors[c.name] > MAX_COUNT:
                raise CountsMismatch(
                    f"{path}: component {c.name!r} would count {vectors[c.name]:,} vectors in all, more than a "
                    f"count holds (2^63 - 1)"
                )
        if part.activity.fire_above != first.activity.fire_above:
            raise CountsMismatch(
                f"{path}: counted with fire above {decimal_text(part.activity.fire_above)}, {first_path} with "
                f"{decimal_text(first.activity.fire_above)}: counts of different fire rules do not add up"
            )
        if not union and set(part.activity.components) != set(first.activity.components):
            raise ComponentsDiffer(first_path, list(first.activity.components), path, list(part.activity.components))
        for shard in part.shards:
            if shard.path in seen:
                raise CountsMismatch(f"shard {shard.path} is counted in both {seen[shard.path]} and {path}")
            seen[shard.path] = path
        try:
            merged.activity.merge(part.activity)
        except NactError as e:
            raise CountsMismatch(f"{path}: {e}") from None
        merged.shards += part.shards
    return merged, notes


def _check_recorded(path: Path, part: SavedCounts, files: int) -> None:
    """Counts merged with others say what they counted: without shard records nact cannot tell
    whether they are in the others already (a file merged twice, or a merge of its own parts)."""
    if files > 1 and not part.shards and any(c.num_vectors for c in part.activity.components.values()):
        raise CountsMismatch(
            f"{path}: records no shards, so nact cannot tell whether its counts are in the others already: "
            "merge only counts saved with their shards"
        )


class ComponentsDiffer(CountsMismatch):
    """Two counts files hold different components."""

    def __init__(self, a: Path, a_names: list[str], b: Path, b_names: list[str]) -> None:
        self.a, self.b = a, b
        only_a = [n for n in a_names if n not in b_names]
        only_b = [n for n in b_names if n not in a_names]
        listed = "; ".join(
            f"only {path} has {', '.join(map(repr, names[:5]))}{', ...' if len(names) > 5 else ''}"
            for path, names in ((a, only_a), (b, only_b))
            if names
        )
        super().__init__(f"the counts hold different components ({listed})")


def load_merged(files: list[Path], union: bool = False) -> tuple[SavedCounts, list[str]]:
    """The counts of ``files`` read and merged in stream order (see ``merge_counts``), and notes."""
    return merge_counts([(Path(f), load_counts(Path(f))) for f in files], union=union)
