"""The feature-density report of any counts nact reads (activations, saved counts, SAELens
sparsity files): per component its log10-density histogram and summary, optionally beside the
same components of other counts, drawn to a figure on request; and its JSON document."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .activity import NeuronActivity
from .counts_file import load_merged
from .density import DensityHistogram, DensitySummary, histogram, summarize
from .errors import BadOption
from .files import check_outputs
from .options import CountOptions, ReportOptions, check_bins_per_decade
from .plot import FONT_SIZE, PANEL_INCHES, check_plot_path, plot_histograms
from .remote.objects import RemotePath
from .report import JSON_SCHEMA_VERSION
from .scan import ProgressCallback, scan
from .sources.base import ShardPath, to_path
from .sources.planning import ScanPlan
from .sources.safetensors_files import is_counts_file
from .sparsity import is_sparsity_file, load_sparsity

DPI_RANGE = (10, 1200)
INCHES_RANGE = (1.0, 40.0)  # a panel's width and height
FONT_RANGE = (4.0, 40.0)
COLUMNS_RANGE = (1, 16)


@dataclass(frozen=True)
class Figure:
    """Where and how to draw the histograms: a .png, .svg or .pdf file; dots per inch; a log y
    axis; each panel's size in inches, the font size of its labels, how many panels side by side."""

    path: Path
    dpi: int = 200
    log_y: bool = False
    panel: tuple[float, float] = PANEL_INCHES
    font_size: float = FONT_SIZE
    columns: int = 1

    def __post_init__(self) -> None:
        check_plot_path(self.path)
        if not DPI_RANGE[0] <= self.dpi <= DPI_RANGE[1]:
            raise BadOption("dpi", self.dpi, f"must be from {DPI_RANGE[0]} to {DPI_RANGE[1]}")
        if len(self.panel) != 2 or not all(INCHES_RANGE[0] <= x <= INCHES_RANGE[1] for x in self.panel):
            shown = ",".join(f"{x:g}" for x in self.panel)
            raise BadOption("figsize", shown, f"must be WIDTH,HEIGHT inches, each from {INCHES_RANGE[0]:g} to 40")
        if not FONT_RANGE[0] <= self.font_size <= FONT_RANGE[1]:
            raise BadOption("font_size", f"{self.font_size:g}", "must be from 4 to 40 points")
        if not COLUMNS_RANGE[0] <= self.columns <= COLUMNS_RANGE[1]:
            raise BadOption("columns", self.columns, f"must be from {COLUMNS_RANGE[0]} to {COLUMNS_RANGE[1]}")

    @classmethod
    def parse(cls, path: Path, figsize: str | None = None, **settings: Any) -> Figure:
        """A figure whose panel size is given as text, ``WIDTH,HEIGHT`` in inches."""
        if figsize is None:
            return cls(path, **settings)
        try:
            width, height = (float(x) for x in figsize.split(","))
        except ValueError:
            raise BadOption("figsize", figsize, "must be WIDTH,HEIGHT in inches, such as 9,2.6") from None
        return cls(path, panel=(width, height), **settings)


@dataclass(frozen=True)
class DensityReport:
    """Per component with vectors: its histogram and summary; ``compared``: the histograms of the
    same components in the other counts (empty without them)."""

    histograms: list[DensityHistogram]
    summaries: list[DensitySummary]
    marks: ReportOptions  # the thresholds marked, and the dense and ultralow bounds
    bins_per_decade: int
    compared: list[DensityHistogram]
    warnings: list[str]

    @property
    def thresholds(self) -> list[float]:
        return [float(t.value) for t in self.marks.thresholds]

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "schema_version": JSON_SCHEMA_VERSION,
            "bins_per_decade": self.bins_per_decade,
            "components": [
                {
                    **s.as_dict(),
                    "num_vectors": h.num_vectors,
                    "log10_density_edges": h.edges.tolist(),
                    "alive_per_bin": h.counts.tolist(),
                }
                for h, s in zip(self.histograms, self.summaries)
            ],
        }
        if self.compared:
            doc["compare"] = [
                {
                    "component": h.component,
                    "num_vectors": h.num_vectors,
                    "never_fired": h.dead,
                    "log10_density_edges": h.edges.tolist(),
                    "alive_per_bin": h.counts.tolist(),
                }
                for h in self.compared
            ]
        return doc


def load_activity(
    paths: list[ShardPath],
    options: CountOptions,
    on_plan: Callable[[ScanPlan], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[NeuronActivity, list[str]]:
    """The counts of ``paths``, and warnings: saved counts merged, SAELens sparsity files (each
    one component; ``options.num_vectors`` says over how many vectors), or activations scanned."""
    files = [p for p in paths if not isinstance(p, RemotePath)]  # objects in a store: activations
    if files and len(files) == len(paths) and all(p.is_file() and is_counts_file(p) for p in files):
        return load_merged(files)[0].activity, []
    if files and len(files) == len(paths) and all(is_sparsity_file(p) for p in files):
        activity, notes = NeuronActivity(), []
        for p in files:
            one, note = load_sparsity(p, options.num_vectors)
            if set(one.components) & set(activity.components):
                raise BadOption("paths", str(p), f"gives component {next(iter(one.components))!r} twice")
            activity.merge(one)
            notes.append(note)
        return activity, notes
    result = scan(paths, options=options, on_plan=on_plan, on_progress=on_progress)
    return result.activity, result.warnings


def density_report(
    paths: Sequence[ShardPath | str],
    options: CountOptions,
    marks: ReportOptions,
    *,
    bins_per_decade: int = 4,
    compare: Path | str | None = None,
    figure: Figure | None = None,
    labels: tuple[str, str] | None = None,
    on_plan: Callable[[ScanPlan], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> DensityReport:
    """The density report of ``paths`` (see ``load_activity``), beside ``compare``'s counts of the
    same components (``COMPONENT=PATH``: of one component, bound to COMPONENT), drawn to
    ``figure`` (``labels`` name the two sides in its legend)."""
    check_bins_per_decade(bins_per_decade)
    if figure is not None:
        check_outputs([figure.path])
    activity, warnings = load_activity([to_path(p) for p in paths], options, on_plan, on_progress)
    components = [c for c in activity.components.values() if c.num_vectors]
    if not components:
        activity.rows(list(marks.thresholds))  # raises: no vectors at all
    histograms = [histogram(c, bins_per_decade) for c in components]
    summaries = [summarize(c, marks.dense_above, marks.ultralow_below) for c in components]
    compared: list[DensityHistogram] = []
    if compare is not None:
        source, bound = _compared(compare)
        other, more = load_activity([source], options, on_plan, on_progress)
        warnings += more
        if bound is not None:
            other = _bound(other, bound, str(compare))
        shared = [c.name for c in components if c.name in other.components and other.components[c.name].num_vectors]
        if not shared:
            names = ", ".join(c.name for c in components)
            theirs = ", ".join(other.components) or "none"
            raise BadOption(
                "compare",
                str(compare),
                f"has no component of {names} (it has {theirs}): name the component it is of, COMPONENT=PATH",
            )
        histograms = [h for h in histograms if h.component in shared]
        summaries = [s for s in summaries if s.component in shared]
        compared = [histogram(other.components[name], bins_per_decade) for name in shared]
    report = DensityReport(histograms, summaries, marks, bins_per_decade, compared, warnings)
    if figure is not None:
        plot_histograms(
            histograms,
            figure.path,
            report.thresholds,
            float(marks.dense_above),
            float(marks.ultralow_below),
            dpi=figure.dpi,
            log_y=figure.log_y,
            compare=compared or None,
            labels=labels if compared else None,
            panel=figure.panel,
            font_size=figure.font_size,
            columns=figure.columns,
        )
    return report


def _compared(compare: Path | str) -> tuple[ShardPath, str | None]:
    """What ``--compare`` reads and the component it is bound to: ``COMPONENT=PATH`` (a path that
    exists as given is a path)."""
    text = str(compare)
    component, equals, path = text.rpartition("=")
    if not equals or to_path(text) is not None and Path(text).exists():
        return to_path(text), None
    if not component or not path:
        raise BadOption("compare", text, "names no component or no path: use COMPONENT=PATH or PATH")
    return to_path(path), component


def _bound(activity: NeuronActivity, component: str, given: str) -> NeuronActivity:
    """Counts of one component, renamed to ``component``."""
    if len(activity.components) != 1:
        names = ", ".join(activity.components)
        raise BadOption(
            "compare", given, f"holds {len(activity.components)} components ({names}): COMPONENT=PATH binds one"
        )
    (counts,) = activity.components.values()
    bound = NeuronActivity(activity.fire_above)
    bound.add_states(component, counts.states, counts.num_vectors)
    return bound
