"""Planning a scan: every shard's header read, each tensor given its component, layout and
place in its component's stream, and every problem found before anything is counted."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..dtypes import FLOAT_FORMATS, FLOAT_INPUTS, INTEGER_FORMATS, ITEMSIZE
from ..errors import AxisProblem, BadInput, BadOption, KeyNotFound, NoVectors, SaeNotBound, ShapeMismatch
from ..memory import check_width
from ..remote.objects import ObjectInfo, RemotePath, info, session
from . import delphi_caches, grouping
from .base import (
    BATCHES,
    COMPRESSED,
    LOADED,
    MAPPED,
    SPARSE,
    ShardPath,
    TensorEntry,
    TensorSlab,
    natural_key,
)
from .discovery import Shards
from .grouping import Grouping
from .layout import PATTERN_HOOKS, heads_merged, last_part, layout_of
from .registry import entries_of

if TYPE_CHECKING:
    from ..sae.model import Sae


@dataclass(frozen=True)
class ComponentGroup:
    """The components that one named stream holds (one, or one per index of a component axis),
    identical in every file that has it, and the files it is read from, in stream order."""

    name: str
    names: tuple[str, ...]
    num_features: int
    first_path: ShardPath
    first_shape: tuple[int, ...]
    files: tuple[ShardPath, ...] = ()
    first_neuron: int = 0  # the index of its first neuron (a partial delphi module's run)
    widths: tuple[int, ...] = ()  # per name, where they differ (the latents of several SAEs)

    @property
    def width(self) -> int:
        """Neurons of all its components together."""
        return sum(self.widths) if self.widths else len(self.names) * self.num_features

    def spans(self) -> list[tuple[str, slice]]:
        """Each component's name and its neurons' place in the group's states."""
        widths = self.widths or (self.num_features,) * len(self.names)
        starts = [sum(widths[:i]) for i in range(len(widths))]
        return [(n, slice(a, a + w)) for n, a, w in zip(self.names, starts, widths)]

    @property
    def key(self) -> str:  # the stream's name, as slabs call it
        return self.name


@dataclass(frozen=True)
class BoundSae:
    """An SAE bound to the component whose activations it encodes; its latents' component name."""

    sae: Sae
    component: str
    label: str  # the SAE's name among those of the scan

    @property
    def name(self) -> str:
        return f"{self.component}:{self.label}"


@dataclass(frozen=True, eq=False)
class ScanPlan:
    """What a scan counts, decided from headers only: the shards, the component groups, the
    slabs to count in stream order, the SAEs that encode a stream (whose latents are then what
    is counted), warnings, and what the store said of each remote shard when it was planned.
    Made once by ``plan_scan`` and never changed: its mappings are read-only copies, and two
    plans are the same plan only if they are one object. ``restricted`` gives the plan of some
    of its units."""

    shards: tuple[ShardPath, ...]
    groups: Mapping[str, ComponentGroup]
    slabs: tuple[TensorSlab, ...]
    warnings: tuple[str, ...] = ()
    empty_units: tuple[ShardPath, ...] = ()  # units whose tensors hold no vectors
    saes: Mapping[str, tuple[BoundSae, ...]] = field(default_factory=dict)  # stream -> the SAEs that encode it
    objects: Mapping[RemotePath, ObjectInfo] = field(default_factory=dict)  # remote shards, as planned

    def __post_init__(self) -> None:
        for name in ("groups", "saes", "objects"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def units(self) -> list[ShardPath]:
        """What can be counted apart, in stream order: shard files, or a delphi module's folder
        (units with nothing to count included, so that they are recorded as counted)."""
        return sorted(dict.fromkeys([*(s.path for s in self.slabs), *self.empty_units]), key=natural_key)

    def restricted(self, keep: Sequence[ShardPath] | set[ShardPath]) -> ScanPlan:
        """The plan that counts only the slabs of these units: its shards, slabs, empty units,
        objects and each group's files are those of the units kept; every component keeps its
        place and shape."""
        keep = set(keep)
        slabs = tuple(s for s in self.slabs if s.path in keep)
        files = {f for s in slabs for f in s.entry.files}  # the files of kept multi-file units
        shards = tuple(p for p in self.shards if p in keep or p in files)
        kept = {*shards, *keep}
        return replace(
            self,
            shards=shards,
            groups={k: replace(g, files=tuple(f for f in g.files if f in kept)) for k, g in self.groups.items()},
            slabs=slabs,
            empty_units=tuple(u for u in self.empty_units if u in keep),
            objects={p: found for p, found in self.objects.items() if p in kept},
        )

    def shard_bytes(self) -> dict[ShardPath, int]:
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


def read_entries(
    formats: dict[ShardPath, str],
    *,
    num_latents: int | None = None,
    num_vectors: int | None = None,
    partial: bool = False,
) -> list[TensorEntry]:
    """Every tensor entry of the shards, shard by shard in their order; the options are those of
    sparse caches (``registry.entries_of``)."""
    by_format: dict[str, list[ShardPath]] = {}
    for path, fmt in formats.items():
        by_format.setdefault(fmt, []).append(path)
    named = formats.named if isinstance(formats, Shards) else frozenset()  # the files named one by one
    found = []
    with session():  # each object's first block is fetched once, for every reader that reads it
        for fmt, paths in by_format.items():
            found += entries_of(
                fmt, paths, num_latents=num_latents, num_vectors=num_vectors, partial=partial, named=named
            )
    for entry in found:
        if isinstance(entry.path, RemotePath) and entry.storage not in (MAPPED, COMPRESSED, SPARSE, BATCHES):
            raise BadInput(
                entry.path, f"tensor {entry.key!r} ({entry.note}) is read from local files only: download it first"
            )
    order = {p: i for i, p in enumerate(formats)}
    return sorted(found, key=lambda e: order.get(e.files[0] if e.files else e.path, 0))


def _matches(patterns: list[str], *names: str) -> list[str]:
    return [p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)]


def plan_scan(
    shards: dict[ShardPath, str],
    keys: tuple[str, ...] | list[str] | None = None,
    flatten: bool = False,
    *,
    component_axis: int | None = None,
    group_by: Grouping = "auto",
    saes: Sequence[tuple[str | None, Sae, str]] = (),
    num_latents: int | None = None,
    num_vectors: int | None = None,
    partial: bool = False,
) -> ScanPlan:
    """Read every shard's header and decide what to count; raises on any problem found.

    ``keys`` are names or glob patterns matched against tensor keys and component names.
    ``group_by`` is a rule of ``grouping.GROUPINGS``; ``num_latents``, ``num_vectors`` and
    ``partial`` are the options of sparse caches.
    ``saes``: SAEs whose latents are counted instead of the activations they encode, each with
    the component it is asked to encode (None: the one named as its hook) and its name.
    """
    warnings = list(getattr(shards, "notes", []))
    # components an attention SAE reads as hook_z's [..., heads, d_head], its heads merged
    merge_heads = {key for asked, sae, _ in saes if sae.reshape == "hook_z" for key in _hooks(asked, sae)}
    with session():  # what the store says of each object, as the headers were read
        entries = read_entries(shards, num_latents=num_latents, num_vectors=num_vectors, partial=partial)
        objects = {p: info(p) for p in shards if isinstance(p, RemotePath)}
    patterns = list(keys or ())
    if not patterns:
        _refuse_sae_weights(entries)
    used: set[str] = set()
    seen_keys: set[str] = set()
    skipped: dict[str, tuple[str, str, int]] = {}  # key -> (dtype, why, shard count)
    notes: dict[str, str] = {}
    read_as: dict[
        str, dict[str, tuple[tuple[int, ...], int, int | None]]
    ] = {}  # layout -> name -> shape, vectors, positions
    ambiguous: dict[str, list[ShardPath]] = {}
    empty: dict[str, None] = {}
    empty_units: list[ShardPath] = []
    groups: dict[str, ComponentGroup] = {}
    group_files: dict[str, dict[ShardPath, None]] = {}  # stream -> its files, once each, in order
    slabs: list[TensorSlab] = []
    keys_of = []  # each entry's component key: a single-array file's from its name
    for entry in entries:
        key = entry.key
        if entry.from_file:
            stem = grouping.stem_key(key, group_by)
            key = stem.key
            if stem.ambiguous:
                ambiguous.setdefault(str(entry.path.parent / re.sub(r"\d+$", "*", entry.key)), []).append(entry.path)
        keys_of.append((key, entry.path, entry.from_file))  # a delphi module's path is its folder
    for entry, name in zip(entries, grouping.component_names(keys_of, group_by)):
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
            empty_units.append(entry.path)
            continue
        try:
            if name in merge_heads and len(entry.shape) >= 3:
                layout = heads_merged(name, entry.shape)
            else:
                layout = layout_of(name, entry.key, entry.shape, flatten, component_axis)
        except AxisProblem as e:
            e.path = str(entry.path)
            raise
        if layout.note:
            read_as.setdefault(layout.note, {})[name] = (entry.shape, layout.num_rows, layout.positions)
        if entry.storage == SPARSE:
            notes.setdefault(name, f"component {name!r}: {entry.note}")
        if layout.first_axis and entry.storage not in (MAPPED, LOADED):
            raise AxisProblem(
                name, entry.shape, "component axis 0 is read only from safetensors, .npy and .pt files", entry.path
            )
        parts = (
            [(f, (f,), i) for i, f in enumerate(layout.names)] if layout.first_axis else [(name, layout.names, None)]
        )
        for stream, names, index in parts:
            group = groups.get(stream)
            if group is None:
                first = delphi_caches.first_latent(entry) if entry.storage == SPARSE else 0
                group = ComponentGroup(stream, names, layout.num_features, entry.path, entry.shape, first_neuron=first)
                groups[stream] = group
            elif (group.names, group.num_features) != (names, layout.num_features):
                raise ShapeMismatch(
                    f"tensor {entry.key!r} has shape {list(group.first_shape)} in {group.first_path} "
                    f"but {list(entry.shape)} in {entry.path}: every shard must give a component the same "
                    "number of features (and components)"
                )
            group_files.setdefault(stream, {}).update(dict.fromkeys(entry.files or (entry.path,)))
            positions = layout.positions or (entry.positions if len(entry.shape) == 2 else None)
            slabs.append(TensorSlab(entry, layout.num_rows, len(names) * layout.num_features, stream, index, positions))
    missing = [p for p in patterns if p not in used]
    if missing:
        raise KeyNotFound(missing, sorted(seen_keys))
    by_reason: dict[str, list[tuple[str, str, int]]] = {}
    for key, (dtype, why, count) in skipped.items():
        by_reason.setdefault(why, []).append((key, dtype, count))
    for why, found in by_reason.items():  # one line per reason
        (key, dtype, count), *others = found
        if not others:
            warnings.append(f"skipped tensor {key!r} ({dtype}) in {count} shard(s): {why}")
            continue
        listed = ", ".join(repr(k) for k, _, _ in found[:4]) + (", ..." if len(found) > 4 else "")
        warnings.append(f"skipped {len(found)} tensors ({listed}): {why}")
    for pattern, files in ambiguous.items():
        if len(files) > 1:
            warnings.append(
                f"{len(files)} files {pattern} were counted as {len(files)} components: a number that is not "
                "zero-padded is taken as a layer (--group-by key counts them as shards of one component)"
            )
    warnings += [_read_as(layout, found) for layout, found in read_as.items()] + list(notes.values())
    if not groups and empty:
        listed = ", ".join(map(repr, empty))
        raise NoVectors(f"no vectors were counted (components: {listed}): every tensor read is empty")
    if not groups:
        detail = "; ".join(warnings) or "the shards hold no tensors"
        raise NoVectors(f"nothing to count in {len(shards)} shard(s): {detail}")
    groups = {k: replace(g, files=tuple(group_files[k])) for k, g in groups.items()}
    widest = max(groups.values(), key=lambda g: g.width)
    check_width(
        widest.first_path,
        f"{len(groups)} component(s), the widest {widest.name!r}",
        sum(g.width for g in groups.values()),
    )
    plan = ScanPlan(tuple(shards), groups, tuple(slabs), tuple(warnings), tuple(empty_units), objects=objects)
    return _bind(plan, saes) if saes else plan


SAE_WEIGHTS = ({"encoder.weight", "decoder.weight"}, {"W_enc", "W_dec"}, {"w_enc", "w_dec"})


def _refuse_sae_weights(entries: Sequence[TensorEntry]) -> None:
    """A file of an SAE's weights (an encoder and a decoder: an OpenAI or dictionary_learning
    state dict, ...) is not activations: counting its weights would answer another question."""
    keys: dict[ShardPath, set[str]] = {}
    for entry in entries:
        keys.setdefault(entry.path, set()).add(entry.key)
    for path, found in keys.items():
        if any(pair <= found for pair in SAE_WEIGHTS):
            raise BadInput(
                path,
                "holds an SAE's encoder and decoder weights, not activations: give it with --sae and scan the "
                "cache of activations it reads (or name the tensors to count with --key)",
            )


def _read_as(layout: str, found: dict[str, tuple[tuple[int, ...], int, int | None]]) -> str:
    """One note for every component whose axes were read as ``layout`` (the first few named)."""
    (name, (shape, rows, positions)), *others = found.items()
    how = (
        "--component-axis -2 counts per position, --flatten reads them so without this note"
        if "component per head" not in layout
        else "--flatten would count the heads as one component"
    )
    if not others:
        return (
            f"component {name!r}: {list(shape)} read as {layout}: {positions} positions flattened into {rows} vectors "
            f"({how})"
        )
    listed = ", ".join(list(found)[:4]) + (", ..." if len(others) > 3 else "")
    return f"{len(found)} components ({listed}) read as {layout}: their positions flattened into vectors ({how})"


def _hooks(asked: str | None, sae: Sae) -> tuple[str, ...]:
    """The components an SAE may encode: the one named with it, else its hook by each of its names."""
    if asked is not None:
        return (asked,)
    return (sae.hook, *sae.hook_aliases) if sae.hook is not None else ()


def _bind(plan: ScanPlan, saes: Sequence[tuple[str | None, Sae, str]]) -> ScanPlan:
    """The plan that counts the latents of each SAE instead of the activations it encodes.

    An SAE encodes the component named with it, else the one named as its hook (by any of its
    names); that must be one component (not one index of a component axis) of ``d_in`` float
    features (an attention SAE's ``hook_z`` with its heads merged). Components no SAE is bound
    to are not counted. Raises ``SaeNotBound`` or ``BadInput``.
    """
    streams = {name: g for g in plan.groups.values() for name in g.names}
    components = list(streams)
    bound: dict[str, list[BoundSae]] = {}
    for asked, sae, label in saes:
        key = next((k for k in _hooks(asked, sae) if k in streams), asked or sae.hook)
        group = streams.get(key) if key is not None else None
        if group is None or key is None:
            raise SaeNotBound(sae.path, asked if asked is not None else sae.hook, components)
        where = group.first_path
        if len(group.names) > 1:
            raise BadInput(
                where, f"component {key!r} is one index of a component axis: an SAE encodes a whole component"
            )
        if group.num_features != sae.d_in:
            raise BadInput(
                sae.path, f"d_in is {sae.d_in}, but component {key!r} has {group.num_features} features ({where})"
            )
        for slab in plan.slabs:
            if slab.key == group.key and (slab.entry.storage == SPARSE or slab.dtype not in FLOAT_INPUTS):
                what = "a sparse cache of latents" if slab.entry.storage == SPARSE else f"{slab.dtype} values"
                raise BadInput(slab.path, f"component {key!r} holds {what}: an SAE encodes float activations")
        bound.setdefault(group.key, []).append(BoundSae(sae, key, label))
    by_name: dict[str, BoundSae] = {}
    for b in (b for found in bound.values() for b in found):
        before = by_name.setdefault(b.name, b)
        if before is b:
            continue
        if before.sae.path.resolve() == b.sae.path.resolve():
            raise BadOption("sae", str(b.sae.path), f"is given twice for component {b.component!r}")
        raise BadOption(
            "sae",
            f"{before.sae.path}, {b.sae.path}",
            f"both name their latents {b.name!r}: tell them apart with PATH#NAME",
        )
    groups = {
        key: ComponentGroup(
            plan.groups[key].name,
            tuple(b.name for b in found),
            found[0].sae.d_sae,
            plan.groups[key].first_path,
            plan.groups[key].first_shape,
            files=plan.groups[key].files,
            widths=tuple(b.sae.d_sae for b in found),
        )
        for key, found in bound.items()
    }
    latents = [b for found in bound.values() for b in found]
    check_width(latents[0].sae.path, f"the latents of {len(latents)} SAE(s)", sum(b.sae.d_sae for b in latents))
    kept = plan.restricted({s.path for s in plan.slabs if s.key in bound})
    notes = tuple(dict.fromkeys(note for _, sae, _ in saes for note in sae.notes))
    return replace(
        kept,
        warnings=kept.warnings + notes,
        groups=groups,
        slabs=tuple(s for s in kept.slabs if s.key in bound),
        saes={key: tuple(found) for key, found in bound.items()},
    )


def why_not_counted(entry: TensorEntry, explicitly_named: bool) -> str | None:
    """Why an entry is not counted (None when it is)."""
    if entry.dtype in INTEGER_FORMATS and not explicitly_named:
        return "integer and bool tensors are counted only when --key names them"
    if entry.dtype not in FLOAT_FORMATS and entry.dtype not in INTEGER_FORMATS:
        return f"dtype {entry.dtype} is not supported (supported: {', '.join(ITEMSIZE)})"
    if len(entry.shape) < 2:
        return f"shape {list(entry.shape)} has no batch axis: activations need [N, F] or [..., C, F]"
    if entry.shape[-1] == 0 or (len(entry.shape) > 2 and entry.shape[-2] == 0):
        return f"shape {list(entry.shape)} has no features"
    if len(entry.shape) == 4 and last_part(entry.key) in PATTERN_HOOKS and not explicitly_named:
        return "a TransformerLens attention pattern [batch, head, query, key] is not neuron activations (--key names it to count it)"
    return None
