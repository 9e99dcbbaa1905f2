"""The report of a scan or of saved counts: rows per component and threshold, density summaries,
neuron lists, the most and least active neurons, breaches of a limit, and the JSON document.

Renderers (the CLI's table, CSV and Markdown) read this model; none of them computes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ._version import __version__
from .activity import ROW_COLUMNS, ActivityRow, ComponentActivity, NeuronActivity
from .density import DensitySummary, densities, summarize, top_neurons
from .options import ReportOptions

JSON_SCHEMA_VERSION = 1


@dataclass
class Report:
    """What scan and report show: rows, and what they came from."""

    activity: NeuronActivity
    options: ReportOptions
    rows: list[ActivityRow]
    density: list[DensitySummary]
    shards: list[str]
    device: str | None = None
    kernel: str | None = None
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)  # component -> files read

    @property
    def window(self) -> int | None:
        return self.options.window

    @property
    def neurons(self) -> bool:
        return self.options.neurons

    @property
    def top(self) -> int | None:
        return self.options.top

    def breaches(self) -> list[ActivityRow]:
        """Rows whose dead fraction is above ``fail_above`` (none when no limit is set)."""
        limit = self.options.fail_above
        if limit is None:
            return []
        return [r for r in self.rows if Fraction(r.dead, r.num_features) > limit]

    def dead_neurons(self, row: ActivityRow) -> list[int]:
        c = self.activity.components[row.component]
        dead: list[int] = (np.flatnonzero(c.dead(row.threshold)) + c.first_neuron).tolist()
        return dead

    def file_groups(self) -> list[tuple[list[str], list[str]]]:
        """Components read from several files, grouped by their files: (components, files)."""
        grouped: dict[tuple[str, ...], list[str]] = {}
        for name, files in self.sources.items():
            if len(files) > 1 and name in self.activity.components:
                grouped.setdefault(tuple(files), []).append(name)
        return [(names, list(files)) for files, names in grouped.items()]

    def dead_in_window(self, row: ActivityRow) -> int:
        assert self.window is not None
        return int(self.activity.components[row.component].dead_in_window(self.window).sum())

    def top_neurons(self) -> dict[str, dict[str, list[dict[str, object]]]]:
        """Per component, the ``top`` most and least active neurons with counts and densities."""
        out = {}
        for c in self.activity.components.values():
            if not c.num_vectors:
                continue
            most, least = top_neurons(c, self.top or 0)
            density = densities(c)
            stats = activation_stats(c)
            out[c.name] = {
                label: [
                    {
                        "neuron": i + c.first_neuron,
                        "fire_count": int(c.fire_counts[i]),
                        "density": float(density[i]),
                        **stats(i),
                    }
                    for i in found
                ]
                for label, found in (("most_active", most), ("least_active", least))
            }
        return out

    def columns(self) -> list[str]:
        """The columns of a flat row (CSV): the row columns, then the optional ones."""
        columns = list(ROW_COLUMNS) + (["window", "dead_in_window"] if self.window is not None else [])
        columns += ["dead_neurons", "dead_neuron_fire_counts"] if self.neurons else []
        return columns + (["most_active", "least_active"] if self.top else [])

    def row_dict(self, row: ActivityRow, flat: bool = False) -> dict[str, object]:
        """A row as JSON has it; ``flat`` joins neuron lists with spaces (for CSV)."""
        d = row.as_dict()
        if self.window is not None:
            d["window"] = self.window
            d["dead_in_window"] = self.dead_in_window(row)
        if self.neurons:
            dead = self.dead_neurons(row)
            c = self.activity.components[row.component]
            at = [i - c.first_neuron for i in dead]
            counts = c.fire_counts[at].tolist()
            d["dead_neurons"] = " ".join(map(str, dead)) if flat else dead
            d["dead_neuron_fire_counts"] = " ".join(map(str, counts)) if flat else counts
            mean = None if flat else c.mean_when_firing()
            if mean is not None:
                d["dead_neuron_mean_activations"] = [_number(v) for v in mean[at]]
                d["dead_neuron_max_activations"] = [_number(v) for v in c.states["act_max"][at]]
        if flat and self.top:  # CSV rows carry their component's lists (JSON has them under "top")
            top = self._top_cache().get(row.component, {})
            for label, items in top.items():
                d[label] = " ".join(f"{e['neuron']}:{e['fire_count']}" for e in items)
        return d

    def _top_cache(self) -> dict[str, dict[str, list[dict[str, object]]]]:
        if not hasattr(self, "_top"):
            self._top = self.top_neurons()
        return self._top

    def to_json(self) -> dict[str, object]:
        """The JSON document (schema version ``JSON_SCHEMA_VERSION``)."""
        activity = self.activity
        doc: dict[str, object] = {
            "schema_version": JSON_SCHEMA_VERSION,
            "nact_version": __version__,
            "fire_above": float(activity.fire_above),
            "thresholds": [float(t.value) for t in self.options.thresholds],
            "device": self.device,
            "kernel": self.kernel,
            "shards": self.shards,
            "components": [self._component_json(c) for c in activity.components.values()],
            "warnings": self.warnings,
            "rows": [self.row_dict(r) for r in self.rows],
        }
        if self.window is not None:
            doc["window"] = self.window
        doc["density"] = [d.as_dict() for d in self.density]
        if self.top:
            doc["top"] = self.top_neurons()
        return doc

    def _component_json(self, c: ComponentActivity) -> dict[str, object]:
        doc: dict[str, object] = {
            "component": c.name,
            "num_features": c.num_features,
            "num_vectors": c.num_vectors,
            "nan_count": c.nan_count,
        }
        if c.first_neuron:
            doc["first_neuron"] = c.first_neuron
        files = self.sources.get(c.name)
        if files:
            doc["files"] = {"count": len(files), "first": files[0], "last": files[-1]}
        if c.sae:
            doc["sae"] = c.sae
        return doc


def _number(value: float) -> float | None:
    """A float as JSON has it: NaN and infinities (never fired, never seen) are null."""
    value = float(value)
    return value if np.isfinite(value) else None


def activation_stats(c: ComponentActivity) -> Callable[[int], dict[str, object]]:
    """Neuron ``i`` of ``c`` -> its mean activation when firing and largest activation, where they
    are kept (the means worked out once per component)."""
    mean = c.mean_when_firing()
    if mean is None:
        return lambda i: {}
    largest = c.states["act_max"]
    return lambda i: {"mean_activation": _number(mean[i]), "max_activation": _number(largest[i])}


def make_report(
    activity: NeuronActivity,
    options: ReportOptions,
    shards: list[str],
    device: str | None = None,
    kernel: str | None = None,
    warnings: list[str] | None = None,
    sources: dict[str, list[str]] | None = None,
) -> Report:
    """The report of ``activity``; raises NoVectors when nothing was counted, and NotTracked when
    a window is asked of counts that did not record when neurons last fired."""
    rows = activity.rows(list(options.thresholds))
    if options.window is not None:
        for c in activity.components.values():
            c.dead_in_window(options.window)  # raises NotTracked before anything is shown
    density = [
        summarize(c, options.dense_above, options.ultralow_below) for c in activity.components.values() if c.num_vectors
    ]
    return Report(activity, options, rows, density, shards, device, kernel, list(warnings or []), dict(sources or {}))
