"""Scans that remember: an incremental audit counts only the shards its state has not counted."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .counts_file import SavedCounts, ShardRecord, load_counts, merge_counts, save_counts
from .decimals import decimal_text
from .errors import ShardChanged, StateMismatch
from .files import locked
from .options import CountOptions
from .remote.objects import session
from .scan import ProgressCallback, ScanResult, count, device_for, plan_for
from .sources import ScanPlan, discover
from .sources.base import ShardPath, to_path


@dataclass
class AuditResult:
    saved: SavedCounts  # everything counted so far, as now saved
    scan: ScanResult | None  # the scan of the new shards (None when there were none)
    new_shards: list[ShardPath]


def what_changed(before: ShardRecord, now: ShardRecord) -> str:
    """How a shard differs from its record, in words."""
    if before.size != now.size:
        return f"size {before.size} -> {now.size} bytes"
    if before.tag != now.tag:
        return f"ETag {before.tag} -> {now.tag}"
    return f"same size, modification time {before.mtime_ns} -> {now.mtime_ns} ns"


def _same(before: ShardRecord, now: ShardRecord) -> bool:
    """Whether a shard is as it was counted: an object of a store by its size and ETag (the same
    bytes uploaded again are the same object), a file by its size and modification time."""
    if before.tag and now.tag:
        return (before.path, before.size, before.tag) == (now.path, now.size, now.tag)
    return before == now


def _check_same_saes(state: Path, previous: SavedCounts, plan: ScanPlan) -> None:
    """Latents the state counted with one SAE are not added to latents of another."""
    for bound in (b for found in plan.saes.values() for b in found):
        before = previous.activity.components.get(bound.name)
        old = str((before.sae or {}).get("fingerprint") or "") if before is not None else ""
        if old and old != bound.sae.fingerprint:
            raise StateMismatch(state, "sae", f"{old[:12]} (its fingerprint)", f"{bound.sae.fingerprint[:12]}")


def audit(
    paths: Sequence[ShardPath | str],
    state: Path,
    options: CountOptions | None = None,
    *,
    rescan: bool = False,
    shards: dict[ShardPath, str] | None = None,
    check: Callable[[SavedCounts, ScanResult | None], None] | None = None,
    on_plan: Callable[[ScanPlan], None] | None = None,
    on_progress: ProgressCallback | None = None,
    device: str | None = None,
    **count_options: Any,
) -> AuditResult:
    """Count the shards under ``paths`` that ``state`` has not counted yet, add them, save.

    A shard counted before that has changed (size or modification time) is an error, unless
    ``rescan`` starts the state over. The state (symlinks resolved) is locked for the whole
    audit and replaced atomically at the end, after ``check(saved, scan)`` (which may raise to
    leave it as it was): an interrupted or refused audit leaves the previous state as it was.
    ``shards`` are the discovered shards and ``device`` the resolved device, when the caller has
    them already.
    """
    settings = replace(options or CountOptions(device="cpu", **count_options), track_last=True)
    state = Path(os.path.realpath(state))
    with locked(state), session():
        previous = load_counts(state) if state.exists() else None
        if previous is not None and previous.activity.fire_above != settings.fire_above and not rescan:
            was, now = decimal_text(previous.activity.fire_above), decimal_text(settings.fire_above)
            raise StateMismatch(state, "fire_above", was, now)
        known = {} if previous is None or rescan else {s.path: s for s in previous.shards}
        device = device or device_for(settings)
        found = shards if shards is not None else discover([to_path(p) for p in paths], settings.input_format)
        plan = plan_for(found, settings)
        if previous is not None and not rescan:
            _check_same_saes(state, previous, plan)
        new_units: list[ShardPath] = []
        new_records: list[ShardRecord] = []
        for unit in plan.units():
            record = ShardRecord.of(unit)
            before = known.get(record.path)
            if before is None:
                new_units.append(unit)
                new_records.append(record)
            elif not _same(before, record):
                raise ShardChanged(unit, state, what_changed(before, record))
        plan = plan.restricted(new_units)
        if on_plan is not None:
            on_plan(plan)
        result = count(plan, settings, device, on_progress)
        fresh = SavedCounts(result.activity, new_records, kernel=result.kernel, device=device)
        if previous is None or rescan:
            saved = fresh
        elif new_units:
            saved, _ = merge_counts([(state, previous), (Path("new shards"), fresh)], union=True)
        else:
            saved = previous
        if check is not None:
            check(saved, result if new_units else None)
        if new_units or rescan or previous is None:
            save_counts(state, saved)
        return AuditResult(saved, result if new_units else None, new_units)
