"""Scans that remember: saved counts extended by incremental audits, and scans split in parts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .counts_file import (
    SavedCounts,
    ShardRecord,
    load_counts,
    merge_counts,
    save_counts,
)
from .dtypes import as_fraction
from .errors import NactError
from .files import locked
from .scan import ScanResult, scan


def parse_part(text: str) -> tuple[int, int]:
    """``I/N`` (this process counts part I of N, from 0) as a pair."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise NactError(f"--shard {text!r} is not I/N (for example 0/4)") from None
    if not 0 <= i < n:
        raise NactError(f"--shard {text!r}: I must be from 0 to N-1")
    return i, n


def part_of(units: list[Path], i: int, n: int) -> list[Path]:
    """Part ``i`` of ``n`` of the sorted units: a contiguous run, so parts merged in order keep
    stream order. Every unit is in exactly one part."""
    return units[i * len(units) // n : (i + 1) * len(units) // n]


@dataclass
class AuditResult:
    saved: SavedCounts  # everything counted so far, as now saved
    scan: ScanResult | None  # the scan of the new shards (None when there were none)
    new_shards: list[Path]


def audit(paths: list[Path], state: Path, *, rescan: bool = False, **scan_options: Any) -> AuditResult:
    """Count the shards under ``paths`` that ``state`` has not counted yet, add them, save.

    A shard counted before that has changed (size or modification time) is an error, unless
    ``rescan`` starts the state over. The state is locked for the whole audit and replaced
    atomically at the end: an interrupted audit leaves the previous state as it was.
    """
    state = Path(state)
    with locked(state):
        previous = load_counts(state) if state.exists() else None
        fire_above = as_fraction(scan_options.get("fire_above", 0), "fire-above")
        if previous is not None and previous.activity.fire_above != fire_above and not rescan:
            raise NactError(
                f"{state}: counted with fire-above {float(previous.activity.fire_above)}, not {float(fire_above)}: "
                "use the same --fire-above, or --rescan to start over"
            )
        known = {} if previous is None or rescan else {s.path: s for s in previous.shards}
        new_units: list[Path] = []
        new_records: list[ShardRecord] = []

        def pick_new(units: list[Path]) -> list[Path]:
            for unit in units:
                record = ShardRecord.of(unit)
                before = known.get(record.path)
                if before is None:
                    new_units.append(unit)
                    new_records.append(record)
                elif before != record:
                    raise NactError(
                        f"{unit}: changed since {state} counted it (size {before.size} -> {record.size}, "
                        "or its modification time): use --rescan to count every shard again"
                    )
            return new_units

        result = scan(paths, track_last=True, count_only=pick_new, **scan_options)
        fresh = SavedCounts(result.activity, new_records)
        if previous is None or rescan:
            saved = fresh
        elif new_units:
            saved = merge_counts([(state, previous), (Path("new shards"), fresh)])
        else:
            saved = previous
        save_counts(state, saved)
        return AuditResult(saved, result if new_units else None, new_units)
