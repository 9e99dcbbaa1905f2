"""Working with saved counts, each in one call: a report of them (``report``), one file of
several (``merge``), and what changed between two (``diff``). Every output is checked before
any file is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .activity import Threshold, ThresholdLike
from .counts_file import load_counts, load_merged, save_counts
from .diff import Changes, compare
from .files import check_not_inputs, check_outputs
from .options import ReportOptions
from .report import Report, make_report
from .sparsity import save_sparsity


@dataclass(frozen=True)
class Reported:
    """A report of saved counts, and notes on how they were merged."""

    report: Report
    notes: list[str] = field(default_factory=list)


def report(
    files: list[Path],
    options: ReportOptions,
    *,
    union: bool = False,
    sparsity: Path | None = None,
    output: Path | None = None,
) -> Reported:
    """The report of the counts of ``files`` merged; ``sparsity``: also save SAELens' sparsity
    file of their one component. ``output`` is where the caller writes the report: it is only
    checked, with ``sparsity``, before anything is read."""
    outputs = [p for p in (output, sparsity) if p is not None]
    check_outputs(outputs)
    check_not_inputs(outputs, files)
    saved, notes = load_merged(files, union)
    made = make_report(saved.activity, options, [s.path for s in saved.shards])
    if sparsity is not None:
        save_sparsity(sparsity, saved.activity)
    return Reported(made, notes)


def merge(files: list[Path], output: Path, *, union: bool = False) -> list[str]:
    """Save the counts of ``files`` merged in stream order to ``output`` (atomically); notes."""
    check_outputs([output])
    check_not_inputs([output], files)
    saved, notes = load_merged(files, union)
    save_counts(output, saved)
    return notes


def diff(old: Path | str, new: Path | str, threshold: ThresholdLike) -> Changes:
    """Which neurons died, revived and stayed dead at ``threshold`` (``Threshold.of`` takes it:
    ``1e-6``, ``"0.1%"``) from ``old`` to ``new``."""
    checked = Threshold.of(threshold)
    return Changes(checked, compare(load_counts(Path(old)).activity, load_counts(Path(new)).activity, checked))
