"""Finding shards, telling their formats apart, and planning what to count.

Planning reads only headers (or schemas), so shape, format and size problems are found before
any counting starts. Format detection lives here, in ``detect``; each format's reader is a
module that follows ``base.DenseReader`` or ``base.SparseReader``, and the registry below is
built from the formats and suffixes the readers declare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import fnmatch
import math
import os
import re
from pathlib import Path
from types import ModuleType

from ..dtypes import FLOAT_FORMATS, INTEGER_FORMATS, ITEMSIZE
from ..errors import AxisProblem, BadInput, KeyNotFound, MixedFormats, NoVectors, ShapeMismatch
from . import arrow_files, delphi_caches, grouping, numpy_files, safetensors_files, torch_files
from .safetensors_files import is_counts_file
from .base import BATCHES, COMPRESSED, LOADED, MAPPED, SPARSE, TensorEntry, TensorSlab, is_remote, natural_key

DENSE_READERS: tuple[ModuleType, ...] = (safetensors_files, numpy_files, torch_files, arrow_files)
SPARSE_READERS: tuple[ModuleType, ...] = (delphi_caches,)
READERS: dict[str, ModuleType] = {fmt: r for r in (*DENSE_READERS, *SPARSE_READERS) for fmt in r.FORMATS}
INPUT_FORMATS = tuple(READERS)
SPARSE_FORMATS = tuple(fmt for r in SPARSE_READERS for fmt in r.FORMATS)
SUFFIX_FORMATS: dict[str, str] = {
    suffix: fmt for r in (*DENSE_READERS, *SPARSE_READERS) for suffix, fmt in r.SUFFIXES.items()
}


@dataclass
class ComponentGroup:
    """The components that one named stream holds (one, or one per index of a component axis),
    identical in every file that has it, and the files it is read from."""

    name: str
    names: tuple[str, ...]
    num_features: int
    first_path: Path
    first_shape: tuple[int, ...]
    files: list[Path] = field(default_factory=list)
    first_neuron: int = 0  # the index of its first neuron (a partial delphi module's run)
    widths: tuple[int, ...] = ()  # per name, where they differ (the latents of several SAEs)
    _listed: set[Path] = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._listed.update(self.files)

    @property
    def width(self) -> int:
        """Neurons of all its components together."""
        return sum(self.widths) if self.widths else len(self.names) * self.num_features

    def spans(self) -> list[tuple[str, slice]]:
        """Each component's name and its neurons' place in the group's states."""
        widths = self.widths or (self.num_features,) * len(self.names)
        starts = [sum(widths[:i]) for i in range(len(widths))]
        return [(n, slice(a, a + w)) for n, a, w in zip(self.names, starts, widths)]

    def add_files(self, paths: tuple[Path, ...]) -> None:
        """Record files this group is read from, once each, in order (constant time each)."""
        for p in paths:
            if p not in self._listed:
                self._listed.add(p)
                self.files.append(p)

    @property
    def key(self) -> str:  # the stream's name, as slabs call it
        return self.name


@dataclass
class ScanPlan:
    shards: list[Path]
    formats: dict[Path, str] = field(default_factory=dict)
    entries: list[TensorEntry] = field(default_factory=list)
    groups: dict[str, ComponentGroup] = field(default_factory=dict)
    slabs: list[TensorSlab] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    empty_units: list[Path] = field(default_factory=list)  # units whose tensors hold no vectors
    saes: dict[str, list] = field(default_factory=dict)  # stream -> the SAEs that encode it (sae.BoundSae)

    def units(self) -> list[Path]:
        """What can be counted apart, in stream order: shard files, or a delphi module's folder
        (units with nothing to count included, so that they are recorded as counted)."""
        return sorted(dict.fromkeys([*(s.path for s in self.slabs), *self.empty_units]), key=natural_key)

    def restrict(self, keep: list[Path] | set[Path]) -> None:
        """Count only the slabs of these units; every component keeps its place and shape."""
        keep = set(keep)
        self.slabs = [s for s in self.slabs if s.path in keep]
        self.empty_units = [u for u in self.empty_units if u in keep]
        files = {f for s in self.slabs for f in s.entry.files}  # the files of kept multi-file units
        self.shards = [p for p in self.shards if p in keep or p in files]

    def shard_bytes(self) -> dict[Path, int]:
        """Bytes to count per shard (0 for shards with nothing to count)."""
        out = {p: 0 for p in self.shards}
        for s in self.slabs:
            if s.entry.files:
                for path, nbytes in zip(s.entry.files, s.entry.file_bytes):
                    out[path] += nbytes
            else:
                out[s.path] += s.nbytes
        return out

    def sources(self) -> dict[str, list[str]]:
        """Per component, the files it is read from (of the units counted), in stream order."""
        files: dict[str, dict[str, None]] = {}
        for slab in self.slabs:
            listed = files.setdefault(slab.stream, {})
            listed.update(dict.fromkeys(str(p) for p in (slab.entry.files or (slab.path,))))
        return {name: list(files.get(g.name, {})) for g in self.groups.values() for name in g.names}


class Shards(dict):  # type: ignore[type-arg]
    """Shard files and their formats, in natural path order, with notes on what was skipped."""

    def __init__(self, items: dict[Path, str], notes: list[str] | None = None, named: set[Path] | None = None) -> None:
        super().__init__(items)
        self.notes = list(notes or [])
        self.named = frozenset(named or ())  # files named one by one, not found in a folder


def detect(path: Path) -> str:
    """The format of one file, from its name and, for safetensors, its header."""
    fmt = SUFFIX_FORMATS.get(path.suffix)
    if fmt is None:
        raise BadInput(path, f"unknown file type: nact reads {', '.join(sorted(SUFFIX_FORMATS))} files")
    if fmt == "safetensors":
        try:
            header = safetensors_files.read_header(path)
        except BadInput:
            return fmt  # its reader reports the problem, file by file
        if delphi_caches.is_split(header):
            return "delphi"
    return fmt


SAE_CHECKPOINTS = {
    "sae_weights.safetensors": "a SAELens SAE checkpoint",
    "sae.safetensors": "a sparsify SAE checkpoint",
    "sparsity.safetensors": "a SAELens feature-sparsity file",
}


def sae_checkpoint(path: Path) -> str | None:
    """What kind of SAE file ``path`` is (weights or sparsity, not activations), or None."""
    kind = SAE_CHECKPOINTS.get(path.name)
    if kind is None:
        return None
    if path.name == "sparsity.safetensors" or (path.parent / "cfg.json").is_file():
        return kind
    return None


def _refuse_sae(path: Path, kind: str) -> BadInput:
    return BadInput(path, f"{kind}, not activations: scan the cache of activations the SAE reads")


def discover(paths: list[Path], input_format: str | None = None) -> Shards:
    """Shard files under ``paths`` with their formats, in natural path order.

    Directories are searched recursively for files nact can read; hidden files and folders
    (dot names) are skipped, and so are saved counts (an audit's state), both with a note. A
    saved ``datasets`` folder gives only the files its ``state.json`` lists. An SAE checkpoint
    is refused. Files of several formats are refused unless ``input_format`` picks one (files
    named on the command line are then read as that format).
    """
    if input_format is not None and input_format not in READERS:
        from ..errors import BadOption

        raise BadOption("input_format", input_format, f"is not a format: use {', '.join(INPUT_FORMATS)}")
    found: dict[Path, str] = {}
    notes: list[str] = []
    named: set[Path] = set()
    remote = [p for p in paths if is_remote(p)]
    if remote and len(remote) < len(paths):
        raise BadInput(remote[0], "remote objects and local files cannot be scanned together: give one kind")
    for path in paths:
        if is_remote(path):
            _discover_remote(path, input_format, found, notes, named)
        elif path.is_dir():
            try:
                files, hidden, counts = _files_under(path)
            except OSError as e:
                raise BadInput(e.filename or path, f"cannot list: {e.strerror or e}") from None
            formats = {p: detect(p) for p in files}
            if input_format is not None:
                other = sorted({f for f in formats.values() if f != input_format})
                formats = {p: f for p, f in formats.items() if f == input_format}
                if not formats and other:
                    raise BadInput(path, f"no {input_format} shards found (it holds {', '.join(other)} files)")
            if not formats:
                kind = f"{input_format} " if input_format else ""
                raise BadInput(path, f"no {kind}shards found ({', '.join(sorted(SUFFIX_FORMATS))} files)")
            found.update(formats)
            notes += _skipped(path, hidden, "file(s) or folder(s)", counts, "file(s)")
        elif path.is_file():
            if path.suffix == ".safetensors" and is_counts_file(path):
                raise BadInput(path, "saved counts, not activations: read it with nact report or nact density")
            kind = sae_checkpoint(path)
            if kind is not None:
                raise _refuse_sae(path, kind)
            found[path] = input_format or detect(path)
            named.add(path)
        elif path.exists():
            raise BadInput(path, "not a regular file or directory")
        else:
            raise BadInput(path, "no such file or directory")
    kinds = sorted(set(found.values()))
    if len(kinds) > 1:
        raise MixedFormats({k: sum(1 for f in found.values() if f == k) for k in kinds})
    return Shards({p: found[p] for p in sorted(found, key=natural_key)}, notes, named)


# formats whose layout lets a remote object be read by range requests: a header (or a zip
# directory), then windows of rows (of entries, for delphi splits)
REMOTE_FORMATS = ("safetensors", "npy", "npz", "torch", "delphi", "arrow")


def _discover_remote(path: Path, input_format: str | None, found: dict[Path, str], notes: list[str], named: set[Path]) -> None:
    """The remote twin of a folder search: ``path`` is an object, or a prefix listed as a folder
    (natural order, hidden objects skipped, saved counts skipped, SAE checkpoints refused)."""
    from ..remote import forget, listing, prefetch_heads
    from .arrow_remote import forget as forget_plans

    forget(path)  # type: ignore[arg-type]  # each scan lists and reads headers afresh
    forget_plans(path)
    objects, hidden = listing(path)  # type: ignore[arg-type]
    alone = objects == [path]
    prefetch_heads([o for o in objects if alone or o.suffix in SUFFIX_FORMATS])  # type: ignore[misc]
    names = set(objects)
    formats: dict[Path, str] = {}
    counts: list[Path] = []
    datasets: dict[Path, list[Path] | None] = {}
    for obj in objects:
        kind = SAE_CHECKPOINTS.get(obj.name)
        if kind and (obj.name == "sparsity.safetensors" or obj.parent / "cfg.json" in names):
            raise _refuse_sae(obj.parent, kind)
        if not alone and obj.suffix not in SUFFIX_FORMATS:
            continue
        fmt = input_format if input_format and alone else detect(obj)
        if input_format is not None and fmt != input_format:
            continue
        if fmt not in REMOTE_FORMATS:
            raise BadInput(obj, f"{fmt} files are read from local files only: download it first (remote: {', '.join(REMOTE_FORMATS)})")
        if fmt == "arrow" and not alone:  # a saved datasets folder: only the files its state.json lists
            if obj.parent not in datasets:
                datasets[obj.parent] = arrow_files.dataset_files(obj.parent)
            if datasets[obj.parent] is not None and obj not in datasets[obj.parent]:  # type: ignore[operator]
                continue
        if obj.suffix == ".safetensors" and is_counts_file(obj):
            if alone:
                raise BadInput(obj, "saved counts, not activations: read it with nact report or nact density")
            counts.append(obj)
            continue
        formats[obj] = fmt
    if not formats:
        kind = f"{input_format} " if input_format else ""
        raise BadInput(path, f"no {kind}shards found ({', '.join(REMOTE_FORMATS)} objects)")
    found.update(formats)
    if alone:
        named.add(path)
    notes += _skipped(path, hidden, "object(s)", counts, "object(s)")


def _skipped(path: Path, hidden: int, hidden_things: str, counts: list[Path], count_things: str) -> list[str]:
    """The notes of a folder (or prefix) search: hidden entries and saved counts left out."""
    notes = []
    if hidden:
        notes.append(f"{path}: skipped {hidden} hidden {hidden_things} (names starting with '.')")
    if counts:
        listed = ", ".join(str(p) for p in counts[:3]) + (", ..." if len(counts) > 3 else "")
        notes.append(f"{path}: skipped {len(counts)} {count_things} of saved counts, not activations ({listed})")
    return notes


def _files_under(folder: Path) -> tuple[list[Path], int, list[Path]]:
    """Readable files under ``folder``, the number of hidden entries skipped, and the saved
    counts skipped. Unreadable sub-folders are errors, not skipped."""
    files: list[Path] = []
    hidden = 0
    counts: list[Path] = []
    listed: dict[Path, set[Path] | None] = {}

    def fail(error: OSError) -> None:
        raise error

    for top, dirs, names in os.walk(folder, onerror=fail, followlinks=True):
        here = Path(top)
        hidden += sum(1 for d in dirs if d.startswith(".")) + sum(1 for n in names if n.startswith("."))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "cfg.json" in names or "sparsity.safetensors" in names:
            for name in names:
                kind = sae_checkpoint(here / name)
                if kind is not None:
                    raise _refuse_sae(here, kind)
        for name in names:
            p = here / name
            if name.startswith(".") or p.suffix not in SUFFIX_FORMATS or not p.is_file():
                continue
            if p.suffix == ".safetensors" and is_counts_file(p):
                counts.append(p)  # saved counts (an audit's state, say) kept beside the shards
                continue
            if p.suffix == ".arrow":
                if p.parent not in listed:
                    data = arrow_files.dataset_files(p.parent)
                    listed[p.parent] = None if data is None else set(data)
                if listed[p.parent] is not None and p not in listed[p.parent]:  # type: ignore[operator]
                    continue  # a datasets cache file, not a data file
            files.append(p)
    return files, hidden, counts


MAX_COMPONENTS = 64  # a longer axis before the features is positions, not components
MAX_FEATURES = 1 << 24  # per component: far above any layer or SAE, and bounds per-neuron state


@dataclass(frozen=True)
class Layout:
    """How a tensor is counted: component names, vectors and features per component; whether
    its first axis is the component axis (each component then a block of its own); a note."""

    names: tuple[str, ...]
    num_rows: int
    num_features: int
    first_axis: bool = False
    note: str | None = None
    positions: int | None = None  # vectors are sequences of this many positions, when known


def _looks_like_positions(key: str, shape: tuple[int, ...]) -> str | None:
    """Why the axis before the features of ``key`` holds positions, or None."""
    last = key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    if len(shape) == 3 and last.startswith("hook_"):
        return "a TransformerLens hook's [batch, position, d] layout"
    if len(shape) == 3 and last == "states":
        return "activault's [batch, position, d] states"
    return None


def layout_of(
    name: str, key: str, shape: tuple[int, ...], flatten: bool = False, component_axis: int | None = None
) -> Layout:
    """The layout of a tensor of ``shape`` under ``key`` whose component is called ``name``.

    ``[N, F]`` is one component. ``[..., C, F]``: ``C`` is a component axis (the reference
    metric's ``[batch, component, feature]``) when it is at most ``MAX_COMPONENTS`` long; a
    size-1 axis gives one component. A TransformerLens hook or activault ``states`` tensor
    ``[batch, position, d]`` is flattened (positions are vectors), with a note; any other
    longer axis is an error that names the choices. ``flatten`` makes every axis before ``F``
    a batch axis; ``component_axis`` picks the component axis (0 or the one before ``F``).
    """
    features, ndim = shape[-1], len(shape)
    if ndim == 2 or flatten:  # flattened [batch, position, d]: axis 1 is taken as the positions
        return Layout((name,), math.prod(shape[:-1]), features, positions=shape[1] if ndim == 3 else None)
    if component_axis is not None:
        axis = component_axis + ndim if component_axis < 0 else component_axis
        if not 0 <= axis <= ndim - 2:
            raise AxisProblem(name, shape, f"has no axis {component_axis} before its features")
        if axis == 0 and ndim > 2 and axis != ndim - 2:
            count = shape[0]
            return Layout(tuple(f"{name}[{i}]" for i in range(count)), math.prod(shape[1:-1]), features, first_axis=True)
        if axis != ndim - 2:
            raise AxisProblem(name, shape, f"component axis {component_axis}: nact takes axis 0 or the axis before the features")
        return Layout(tuple(f"{name}[{i}]" for i in range(shape[-2])), math.prod(shape[:-2]), features)
    count = shape[-2]
    positions = _looks_like_positions(key, shape)
    if positions:
        note = (
            f"component {name!r}: {list(shape)} read as {positions}: {count} positions flattened into "
            f"{math.prod(shape[:-1])} vectors (pick a component axis to count per position)"
        )
        return Layout((name,), math.prod(shape[:-1]), features, note=note, positions=count)
    if count == 1:
        return Layout((name,), math.prod(shape[:-2]), features)
    if count > MAX_COMPONENTS:
        raise AxisProblem(
            name, shape,
            f"axis {ndim - 2} has {count} entries, too many for a component axis (at most {MAX_COMPONENTS}): "
            "flatten it (its entries are positions or tokens) or pick the component axis",
            options=("flatten", "component_axis"),
        )
    return Layout(tuple(f"{name}[{i}]" for i in range(count)), math.prod(shape[:-2]), features)


def component_layout(key: str, shape: tuple[int, ...], flatten: bool) -> tuple[tuple[str, ...], int, int]:
    """Component names, number of rows and features of a tensor of ``shape`` under ``key``."""
    layout = layout_of(key, key, shape, flatten)
    return layout.names, layout.num_rows, layout.num_features


def read_entries(formats: dict[Path, str], **reader_options: object) -> list[TensorEntry]:
    """Every tensor entry of the shards, shard by shard in their order."""
    by_format: dict[str, list[Path]] = {}
    for path, fmt in formats.items():
        by_format.setdefault(fmt, []).append(path)
    found = []
    for fmt, paths in by_format.items():
        reader = READERS[fmt]
        if fmt in SPARSE_FORMATS:
            found += reader.entries(paths, named=getattr(formats, "named", frozenset()), **reader_options)
        else:
            found += reader.entries(paths)
    for entry in found:
        if is_remote(entry.path) and entry.storage not in (MAPPED, COMPRESSED, SPARSE, BATCHES):
            raise BadInput(entry.path, f"tensor {entry.key!r} ({entry.note}) is read from local files only: download it first")
    order = {p: i for i, p in enumerate(formats)}
    return sorted(found, key=lambda e: order.get(e.files[0] if e.files else e.path, 0))


def _matches(patterns: list[str], *names: str) -> list[str]:
    return [p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)]


def plan_scan(
    shards: dict[Path, str],
    keys: tuple[str, ...] | list[str] | None = None,
    flatten: bool = False,
    *,
    component_axis: int | None = None,
    group_by: str = "auto",
    **reader_options: object,
) -> ScanPlan:
    """Read every shard's header and decide what to count; raises on any problem found.

    ``keys`` are names or glob patterns matched against tensor keys and component names.
    ``group_by`` is a rule of ``grouping.GROUPINGS``; ``reader_options`` go to sparse readers.
    """
    plan = ScanPlan(shards=list(shards), formats=dict(shards))
    plan.warnings += getattr(shards, "notes", [])
    plan.entries = read_entries(shards, **reader_options)
    patterns = list(keys or ())
    used: set[str] = set()
    seen_keys: set[str] = set()
    skipped: dict[str, tuple[str, str, int]] = {}  # key -> (dtype, why, shard count)
    notes: dict[str, str] = {}
    ambiguous: dict[str, list[Path]] = {}
    empty: dict[str, None] = {}
    root = grouping.common_folder([e.path for e in plan.entries])  # a delphi module's path is its folder
    for entry in plan.entries:
        key, file = entry.key, entry.path
        if entry.from_file:
            stem = grouping.stem_key(key, group_by)
            key = stem.key
            if stem.ambiguous:
                ambiguous.setdefault(str(file.parent / re.sub(r"\d+$", "*", entry.key)), []).append(file)
        name = grouping.component_name(key, file, root, group_by, entry.from_file)
        seen_keys.add(entry.key)
        hits = _matches(patterns, entry.key, name)
        if patterns and not hits:
            continue
        used.update(hits)
        named = bool(hits)
        why = why_not_counted(entry, explicitly_named=named)
        if why is not None:
            if named:
                raise BadInput(entry.path, f"tensor {entry.key!r}: {why}")
            dtype, reason, count = skipped.get(entry.key, (entry.dtype, why, 0))
            skipped[entry.key] = (dtype, reason, count + 1)
            continue
        if math.prod(entry.shape) == 0:  # no vectors: nothing to count, and no state to keep
            empty.setdefault(name, None)
            plan.empty_units.append(entry.path)
            continue
        if entry.shape[-1] > MAX_FEATURES:
            raise BadInput(entry.path, f"tensor {entry.key!r} has {entry.shape[-1]} features, more than nact counts ({MAX_FEATURES})")
        try:
            layout = layout_of(name, entry.key, entry.shape, flatten, component_axis)
        except AxisProblem as e:
            e.path = str(entry.path)
            raise
        if layout.note and name not in notes:
            notes[name] = layout.note
        if entry.storage == SPARSE:
            notes.setdefault(name, f"component {name!r}: {entry.note}")
        if layout.first_axis and entry.storage not in (MAPPED, LOADED):
            raise AxisProblem(name, entry.shape, "component axis 0 is read only from safetensors, .npy and .pt files", entry.path)
        parts = (
            [(f, (f,), i) for i, f in enumerate(layout.names)] if layout.first_axis else [(name, layout.names, None)]
        )
        for stream, names, index in parts:
            group = plan.groups.get(stream)
            if group is None:
                first = delphi_caches.first_latent(entry) if entry.storage == SPARSE else 0
                group = ComponentGroup(stream, names, layout.num_features, entry.path, entry.shape, first_neuron=first)
                plan.groups[stream] = group
            elif (group.names, group.num_features) != (names, layout.num_features):
                raise ShapeMismatch(
                    f"tensor {entry.key!r} has shape {list(group.first_shape)} in {group.first_path} "
                    f"but {list(entry.shape)} in {entry.path}: every shard must give a component the same "
                    "number of features (and components)"
                )
            group.add_files(entry.files or (entry.path,))
            positions = layout.positions or (entry.positions if len(entry.shape) == 2 else None)
            plan.slabs.append(
                TensorSlab(entry, layout.num_rows, len(names) * layout.num_features, stream, index, positions)
            )
    missing = [p for p in patterns if p not in used]
    if missing:
        raise KeyNotFound(missing, sorted(seen_keys))
    for key, (dtype, why, count) in skipped.items():
        plan.warnings.append(f"skipped tensor {key!r} ({dtype}) in {count} shard(s): {why}")
    for pattern, files in ambiguous.items():
        if len(files) > 1:
            plan.warnings.append(
                f"{len(files)} files {pattern} were counted as {len(files)} components: a number that is not "
                "zero-padded is taken as a layer (group by key to count them as shards of one component)"
            )
    plan.warnings += list(notes.values())
    if not plan.groups and empty:
        names = ", ".join(map(repr, empty))
        raise NoVectors(f"no vectors were counted (components: {names}): every tensor read is empty")
    if not plan.groups:
        detail = "; ".join(plan.warnings) or "the shards hold no tensors"
        raise NoVectors(f"nothing to count in {len(shards)} shard(s): {detail}")
    return plan


def why_not_counted(entry: TensorEntry, explicitly_named: bool) -> str | None:
    """Why an entry is not counted (None when it is)."""
    if entry.dtype in INTEGER_FORMATS and not explicitly_named:
        return "integer and bool tensors are counted only when their key is named"
    if entry.dtype not in FLOAT_FORMATS and entry.dtype not in INTEGER_FORMATS:
        return f"dtype {entry.dtype} is not supported (supported: {', '.join(ITEMSIZE)})"
    if len(entry.shape) < 2:
        return f"shape {list(entry.shape)} has no batch axis: activations need [N, F] or [..., C, F]"
    if entry.shape[-1] == 0 or (len(entry.shape) > 2 and entry.shape[-2] == 0):
        return f"shape {list(entry.shape)} has no features"
    return None


__all__ = [
    "INPUT_FORMATS",
    "SPARSE_FORMATS",
    "Layout",
    "Shards",
    "layout_of",
    "READERS",
    "ComponentGroup",
    "ScanPlan",
    "TensorEntry",
    "TensorSlab",
    "component_layout",
    "detect",
    "discover",
    "plan_scan",
]
