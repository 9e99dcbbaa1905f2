"""One scan, whatever its mode: plan -> count -> report.

``run_scan(request)`` is the one entry point the CLI calls. In order, before anything is
counted or written: the request's options were checked when it was made; the output files are
checked (their folders exist and are writable, none is a folder); the inputs are listed and no
output may be one of them; every header is read (the plan). Then the mode counts: plain, a part
of N, an incremental state, or one rank of torchrun. The report is made before any file is
written, so a scan that is going to fail writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .activity import NeuronActivity
from .counts_file import PartRecord, SavedCounts, ShardRecord, save_counts
from .distributed import run_on_ranks
from .errors import NactError
from .files import check_not_inputs, check_outputs
from .options import CountOptions, Part, ScanRequest
from .remote.objects import session
from .report import Report, make_report
from .scan import ProgressCallback, ScanResult, count, device_for, plan_for
from .sources import ScanPlan, discover
from .sources.base import ShardPath
from .sparsity import check_one_component, save_sparsity


class EmptyPart(NactError):
    """A part of a split scan that holds no shards (more parts than shards), with nowhere to
    save its empty counts."""

    def __init__(self, part: Part, units: int) -> None:
        self.part, self.units = part, units
        super().__init__(f"part {part} holds no shards ({units} in all): nothing to count")


@dataclass
class ScanOutcome:
    """What a scan gives its caller: the report to show (None on a torchrun rank other than 0,
    and for an empty part), the counts saved (if any), and notes for stderr."""

    report: Report | None
    saved: SavedCounts | None = None
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # an audit's counted shards that are gone


def _outputs(request: ScanRequest) -> list[Path]:
    return [p for p in (request.output, request.save_counts, request.state, request.save_sparsity) if p is not None]


def run_scan(
    request: ScanRequest,
    *,
    on_plan: Callable[[ScanPlan], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ScanOutcome:
    """Run ``request`` (see the module's docstring for the order of checks and work)."""
    with session():
        return _run(request, on_plan, on_progress)


def _run(
    request: ScanRequest, on_plan: Callable[[ScanPlan], None] | None, on_progress: ProgressCallback | None
) -> ScanOutcome:
    outputs = _outputs(request)
    check_outputs(outputs, read_back=[request.state] if request.state is not None else [])
    device = None if request.distributed else device_for(request.count)  # ranks pick their own
    shards = discover(list(request.paths), request.count.input_format)
    check_not_inputs(outputs, list(shards))
    tracking = request.count.track_last or request.report.window is not None or request.save_counts is not None
    options = replace(request.count, track_last=tracking)
    if request.state is not None:
        return _audit(request, request.state, options, device, shards, on_plan, on_progress)
    if request.distributed:
        return _on_ranks(request, options, shards)
    assert device is not None
    plan, mine, record = _my_part(request, shards, options)
    if on_plan is not None:
        on_plan(plan)
    result = count(plan, options, device, on_progress)
    return _finish(request, result, mine, record, [str(p) for p in plan.shards], plan.sources())


def _my_part(
    request: ScanRequest, shards: dict[ShardPath, str], options: CountOptions
) -> tuple[ScanPlan, list[ShardPath], PartRecord | None]:
    """The plan of the units this scan counts (all of them, or its part's), those units, and
    its part record. A part with no units is refused unless it saves (empty) counts."""
    plan = plan_for(shards, options)
    if request.save_sparsity is not None:
        check_one_component(request.save_sparsity, list(plan.sources()))
    units = plan.units()
    part = request.part
    if part is None:
        return plan.restricted(units), units, None  # shards with nothing to count are not listed
    start, stop = part.bounds(len(units))
    if start == stop and request.save_counts is None:
        raise EmptyPart(part, len(units))
    mine = units[start:stop]
    return plan.restricted(mine), mine, PartRecord(part.index, part.of, start, stop - start, len(units))


def _finish(
    request: ScanRequest,
    result: ScanResult,
    units: list[ShardPath],
    part: PartRecord | None,
    shards: list[str],
    sources: dict[str, list[str]],
) -> ScanOutcome:
    """Report, then save: a report that cannot be made (no vectors) stops before any write.
    An empty part saves empty counts that merge with the other parts, and reports nothing.
    ``units`` are those counted (by every rank), ``shards`` their files."""
    target = request.save_counts
    saved = None
    if target is not None:
        records = [ShardRecord.of(u) for u in units]
        saved = SavedCounts(result.activity, records, part, result.kernel, result.device)
    if part is not None and not units:
        assert target is not None and saved is not None  # an empty part saves counts, or is EmptyPart before counting
        save_counts(target, saved)
        note = (
            f"part {request.part} holds no shards ({part.total_units} in all): "
            f"saved empty counts to {request.save_counts}, which merge with the other parts"
        )
        return ScanOutcome(None, saved, [note])
    report = make_report(
        result.activity, request.report, shards, result.device, result.kernel, result.warnings, sources
    )
    if target is not None and saved is not None:
        save_counts(target, saved)
    if request.save_sparsity is not None:
        save_sparsity(request.save_sparsity, result.activity)
    return ScanOutcome(report, saved)


def _audit(
    request: ScanRequest,
    state: Path,
    options: CountOptions,
    device: str | None,
    shards: dict[ShardPath, str],
    on_plan: Callable[[ScanPlan], None] | None,
    on_progress: ProgressCallback | None,
) -> ScanOutcome:
    from .audit import audit  # 0.4 ms of every run's start-up: only an audit (--state) needs it

    reports: list[Report] = []

    def check(saved: SavedCounts, scanned: ScanResult | None) -> None:
        warnings = list(scanned.warnings) if scanned else []
        device = scanned.device if scanned else None
        kernel = scanned.kernel if scanned else None
        shard_paths = [s.path for s in saved.shards]
        sources = scanned.plan.sources() if scanned else {}
        reports.append(make_report(saved.activity, request.report, shard_paths, device, kernel, warnings, sources))

    audited = audit(
        list(request.paths),
        state,
        options,
        rescan=request.rescan,
        shards=shards,
        check=check,
        on_plan=on_plan,
        on_progress=on_progress,
        device=device,
    )
    for was, now in audited.moved:
        reports[0].warnings.append(f"{was} moved to {now} (the same bytes): counted before, not counted again")
    if audited.missing and not request.fail_on_missing:  # else each is named as a breach
        listed = ", ".join(audited.missing[:3]) + (", ..." if len(audited.missing) > 3 else "")
        gone = f"{len(audited.missing)} shard(s) counted before are gone ({listed}): their counts stay in {state}"
        reports[0].warnings.append(gone)
    return ScanOutcome(reports[0], audited.saved, missing=audited.missing)


RankResult = tuple[ScanResult, list[ShardPath], PartRecord | None, list[str], dict[str, list[str]]]


def _on_ranks(request: ScanRequest, options: CountOptions, shards: dict[ShardPath, str]) -> ScanOutcome:
    """One rank of torchrun: every rank plans every header (so all agree on the components) and
    counts its share of the units (of ``part``'s units, with a part); rank 0 reports and saves
    the whole, recording every unit counted by any rank."""

    def work(rank: int, world: int, device: str) -> tuple[NeuronActivity, RankResult]:
        plan, mine, record = _my_part(request, shards, options)
        files, sources = [str(p) for p in plan.shards], plan.sources()
        result = count(plan.restricted(Part(rank, world).of_units(mine)), options, device_for(options, device))
        return result.activity, (result, mine, record, files, sources)

    done = run_on_ranks(options.device, work)
    if done is None:
        return ScanOutcome(None)
    result, mine, record, files, sources = done
    return _finish(request, result, mine, record, files, sources)
