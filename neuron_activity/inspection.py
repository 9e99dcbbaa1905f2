"""What a scan would read, without counting: formats, tensors, components and the files each
is read from, and every problem that would stop the scan."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import NactError
from .options import CountOptions
from .remote.objects import session
from .report import JSON_SCHEMA_VERSION
from .scan import plan_for
from .sources import SPARSE_FORMATS, ComponentGroup, Shards, TensorEntry, discover, layout_of, why_not_counted
from .sources.base import ShardPath, to_path
from .sources.registry import entries_of


@dataclass(frozen=True)
class InspectedTensor:
    entry: TensorEntry
    components: tuple[str, ...]
    num_vectors: int
    num_features: int
    skipped: str | None  # why it would not be counted

    def as_dict(self) -> dict[str, object]:
        e = self.entry
        return {
            "path": str(e.path),
            "format": e.format,
            "key": e.key,
            "dtype": e.dtype,
            "shape": list(e.shape),
            "components": list(self.components),
            "num_vectors": self.num_vectors,
            "num_features": self.num_features,
            "bytes": e.nbytes,
            "counted": self.skipped is None,
            "skipped": self.skipped,
            "note": e.note,
        }


@dataclass
class Inspection:
    shards: Shards = field(default_factory=lambda: Shards({}))
    tensors: list[InspectedTensor] = field(default_factory=list)
    groups: list[ComponentGroup] = field(default_factory=list)  # as a scan would count them
    notes: list[str] = field(default_factory=list)
    problems: list[NactError] = field(default_factory=list)
    saes: list[dict[str, object]] = field(default_factory=list)  # each SAE: its latents, what it encodes, how

    def groups_as_dicts(self) -> list[dict[str, object]]:
        return [
            {"components": list(g.names), "num_features": g.num_features, "files": [str(p) for p in g.files]}
            for g in self.groups
        ]

    def to_json(self, worded: Callable[[NactError], str] = str) -> dict[str, object]:
        """The JSON document of ``nact inspect``; ``worded`` says each problem (the CLI names its
        flags)."""
        return {
            "schema_version": JSON_SCHEMA_VERSION,
            "shards": [{"path": str(p), "format": f} for p, f in self.shards.items()],
            "tensors": [t.as_dict() for t in self.tensors],
            "groups": self.groups_as_dicts(),
            "notes": self.notes,
            "saes": self.saes,
            "problems": [worded(p) for p in self.problems],
        }


def inspect(paths: Sequence[ShardPath | str], options: CountOptions | None = None, **settings: Any) -> Inspection:
    """Describe what ``scan`` would read; problems that would stop it are collected, not raised.
    ``options`` (or the settings of ``CountOptions`` one by one) as for ``scan``."""
    options = options or CountOptions(device="cpu", **settings)
    with session():
        return _inspect(paths, options)


def _inspect(paths: Sequence[ShardPath | str], options: CountOptions) -> Inspection:
    result = Inspection()
    try:
        result.shards = discover([to_path(p) for p in paths], options.input_format)
    except NactError as e:
        result.problems.append(e)
        return result
    by_format: dict[str, list[ShardPath]] = {}
    for path, fmt in result.shards.items():
        by_format.setdefault(fmt, []).append(path)
    for fmt, files in by_format.items():
        for unit in _reader_units(fmt, files):
            try:
                entries = entries_of(
                    fmt,
                    unit,
                    num_latents=options.num_latents,
                    num_vectors=options.num_vectors,
                    partial=options.partial_latents,
                    named=result.shards.named,
                )
            except NactError as e:
                result.problems.append(e)
                continue
            for entry in entries:
                why = why_not_counted(entry, explicitly_named=entry.key in options.keys)
                layout = None
                if why is None:
                    try:
                        layout = layout_of(entry.key, entry.key, entry.shape, options.flatten, options.component_axis)
                    except NactError as e:
                        why = str(e)
                names, rows, features = (layout.names, layout.num_rows, layout.num_features) if layout else ((), 0, 0)
                result.tensors.append(InspectedTensor(entry, names, rows, features, why))
    if not result.problems:
        try:
            plan = plan_for(result.shards, options)
            result.groups = list(plan.groups.values())
            result.notes = list(plan.warnings)
            result.saes = [
                {"latents": b.name, "component": b.component, **b.sae.as_dict()}
                for found in plan.saes.values()
                for b in found
            ]
        except NactError as e:
            result.problems.append(e)
    return result


def _reader_units(fmt: str, files: list[ShardPath]) -> list[list[ShardPath]]:
    """Files in the groups a reader takes them (a delphi module is one folder), so that one bad
    file is reported without hiding the rest."""
    if fmt not in SPARSE_FORMATS:
        return [[p] for p in files]
    folders: dict[ShardPath, list[ShardPath]] = {}
    for p in files:
        folders.setdefault(p.parent, []).append(p)
    return list(folders.values())
