"""What a scan would read, without counting: formats, tensors, components, and problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import NactError
from .sources import READERS, TensorEntry, component_layout, discover, plan_scan, why_not_counted


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
    shards: dict[Path, str] = field(default_factory=dict)
    tensors: list[InspectedTensor] = field(default_factory=list)
    problems: list[NactError] = field(default_factory=list)


def inspect(
    paths: list[Path] | list[str],
    *,
    keys: list[str] | None = None,
    flatten: bool = False,
    input_format: str | None = None,
) -> Inspection:
    """Describe what ``scan`` would read; problems that would stop it are collected, not raised."""
    result = Inspection()
    try:
        result.shards = discover([Path(p) for p in paths], input_format)
    except NactError as e:
        result.problems.append(e)
        return result
    by_format: dict[str, list[Path]] = {}
    for path, fmt in result.shards.items():
        by_format.setdefault(fmt, []).append(path)
    named = set(keys or ())
    for fmt, files in by_format.items():
        groups = _reader_units(fmt, files)
        for unit in groups:
            try:
                entries = READERS[fmt].entries(unit)
            except NactError as e:
                result.problems.append(e)
                continue
            for entry in entries:
                if named and entry.key not in named:
                    continue
                why = why_not_counted(entry, explicitly_named=entry.key in named)
                names, rows, features = component_layout(entry.key, entry.shape, flatten) if why is None else ((), 0, 0)
                result.tensors.append(InspectedTensor(entry, names, rows, features, why))
    if not result.problems:
        try:
            plan_scan(result.shards, keys=keys, flatten=flatten)
        except NactError as e:
            result.problems.append(e)
    return result


def _reader_units(fmt: str, files: list[Path]) -> list[list[Path]]:
    """Files in the groups a reader takes them (a delphi module is one folder), so that one bad
    file is reported without hiding the rest."""
    if fmt != "delphi":
        return [[p] for p in files]
    folders: dict[Path, list[Path]] = {}
    for p in files:
        folders.setdefault(p.parent, []).append(p)
    return list(folders.values())
