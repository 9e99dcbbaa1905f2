"""Scans that remember: an incremental audit counts only the shards its state has not counted."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .counts_file import SavedCounts, ShardRecord, load_counts, merge_counts, save_counts
from .decimals import decimal_text
from .digests import Blocks, digest, digests
from .errors import ShardChanged, StateMismatch
from .files import locked
from .options import CountOptions
from .remote.objects import RemotePath, session
from .scan import ProgressCallback, ScanResult, count, device_for, plan_for
from .sources import ScanPlan, discover
from .sources.base import ShardPath, to_path


@dataclass
class AuditResult:
    saved: SavedCounts  # everything counted so far, as now saved
    scan: ScanResult | None  # the scan of the new shards (None when there were none)
    new_shards: list[ShardPath]
    missing: list[str] = field(default_factory=list)  # shards counted before that are gone
    moved: list[tuple[str, str]] = field(default_factory=list)  # (was, now): counted before, elsewhere now


def when(ns: int) -> str:
    """A modification time as a date (UTC, to the second)."""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def what_changed(before: ShardRecord, now: ShardRecord) -> str:
    """How a shard differs from its record, in words."""
    if before.size != now.size:
        return f"size {before.size} -> {now.size} bytes"
    if before.tag != now.tag:
        return f"ETag {before.tag} -> {now.tag}"
    moved = f"modified {when(before.mtime_ns)} -> {when(now.mtime_ns)}"
    return f"same size, {moved}, other bytes" if before.digest and now.digest else f"same size, {moved}"


def _same(before: ShardRecord, now: ShardRecord) -> bool:
    """Whether a shard's record says it is as it was counted: an object of a store by its size and
    ETag (the same bytes uploaded again are the same object), a file by its size and modification
    time (and, when those moved, by its content digest: see ``_as_counted``)."""
    if before.tag and now.tag:
        return (before.path, before.size, before.tag) == (now.path, now.size, now.tag)
    return (before.path, before.size, before.mtime_ns) == (now.path, now.size, now.mtime_ns)


def _with_digest(unit: ShardPath, before: ShardRecord, now: ShardRecord) -> ShardRecord:
    """The record of a file whose time moved, with its digest now (a file of the same size whose
    record has a digest: ``touch``, ``cp`` without ``-p`` or a re-sync left its bytes as they were
    when they are the same; anything else is a change, as it was)."""
    if not before.digest or before.size != now.size or isinstance(unit, RemotePath):
        return now
    return replace(now, digest=digest(Path(unit)))


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

    A shard counted before that has changed is an error, unless ``rescan`` starts the state
    over: a file by its size and, when its modification time moved, its content digest
    (recorded when it was counted); an object of a store by its size and ETag. A shard counted
    before that is gone is listed in ``missing`` (its counts stay), unless a new file holds its
    bytes: then it moved (``moved``), and is not counted again. The state (symlinks resolved) is locked for the whole
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
        refreshed: dict[str, ShardRecord] = {}  # counted before, touched since: their records as now
        seen: set[str] = set()
        for unit in plan.units():
            record = ShardRecord.of(unit)
            seen.add(record.path)
            before = known.get(record.path)
            if before is None:
                new_units.append(unit)
                new_records.append(record)
            elif not _same(before, record):
                record = _with_digest(unit, before, record)
                if not record.digest or record.digest != before.digest:
                    raise ShardChanged(unit, state, what_changed(before, record))
                refreshed[record.path] = record
        missing = [path for path in known if path not in seen and not _exists(path)]
        moved = _moved(new_units, new_records, [known[path] for path in missing])
        if moved:  # counted before under another path: recognised by their bytes, not counted again
            kept = [i for i, r in enumerate(new_records) if r.path not in {m.path for m in moved.values()}]
            new_units, new_records = [new_units[i] for i in kept], [new_records[i] for i in kept]
            missing = [path for path in missing if path not in moved]
            refreshed.update(moved)  # their records, under their new paths
        plan = plan.restricted(new_units)
        if on_plan is not None:
            on_plan(plan)
        blocks = Blocks()  # the new shards' block digests, hashed as they are counted
        result = count(plan, settings, device, on_progress, blocks)
        local = [i for i, unit in enumerate(new_units) if not isinstance(unit, RemotePath)]
        hashed = digests([Path(new_units[i]) for i in local], blocks, settings.threads or 2)
        for i, d in zip(local, hashed):
            new_records[i] = replace(new_records[i], digest=d)
        fresh = SavedCounts(result.activity, new_records, kernel=result.kernel, device=device)
        if previous is None or rescan:
            saved = fresh
        elif new_units:
            saved, _ = merge_counts([(state, previous), (Path("new shards"), fresh)], union=True)
        else:
            saved = previous
        if refreshed:
            saved = replace(saved, shards=[refreshed.get(s.path, s) for s in saved.shards])
        if check is not None:
            check(saved, result if new_units else None)
        if new_units or rescan or previous is None or refreshed:
            save_counts(state, saved)
        moves = [(old, record.path) for old, record in moved.items()]
        return AuditResult(saved, result if new_units else None, new_units, missing, moves)


def _moved(units: list[ShardPath], records: list[ShardRecord], gone: list[ShardRecord]) -> dict[str, ShardRecord]:
    """New files that are shards counted before under a path that is gone (a folder moved or
    renamed): by their size, then their digest. The old path -> the new record, with its digest."""
    sizes = {r.size for r in gone if r.digest}
    by_digest = {r.digest: r for r in gone if r.digest}
    moved = {}
    for unit, record in zip(units, records):
        if record.size in sizes and not isinstance(unit, RemotePath):
            found = digest(Path(unit))
            before = by_digest.pop(found, None)
            if before is not None:
                moved[before.path] = replace(record, digest=found)
    return moved


def _exists(path: str) -> bool:
    """Whether a recorded shard is still there (an object of a store is taken to be: a listing
    does not say why an object is not in it)."""
    return "://" in path or Path(path).exists()
