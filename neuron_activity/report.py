"""The report of a scan or of saved counts: rows per component and threshold, density summaries,
neuron lists, the most and least active neurons, activation statistics (``stats``), breaches of
a limit, and the JSON document.

Renderers (the CLI's table, CSV and Markdown) read this model; none of them computes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from . import state
from ._version import __version__
from .activity import ROW_COLUMNS, ActivityRow, ComponentActivity, NeuronActivity
from .density import DensitySummary, densities, summarize, top_neurons
from .options import ReportOptions
from .stats import ActivationStats, json_number

JSON_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ComponentStats:
    """What ``stats`` shows of a component: its mean L0 (exact), what the moments of its values
    say where they were kept, and for SAE latents how far those that never fired stayed from
    firing (their margins' smallest, median and largest; None: not kept, or none never fired)."""

    component: str
    mean_l0: Fraction
    activations: ActivationStats | None
    never_fired_margins: tuple[float, float, float] | None = None

    def as_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"mean_l0": float(self.mean_l0)}
        if self.activations is not None:
            doc.update(self.activations.as_dict())
        if self.never_fired_margins is not None:
            low, median, high = self.never_fired_margins
            doc["never_fired_margins"] = {
                "min": json_number(low),
                "median": json_number(median),
                "max": json_number(high),
            }
        return doc


def component_stats(c: ComponentActivity) -> ComponentStats:
    """The ``ComponentStats`` of ``c``."""
    margins = c.states.get("margins")
    spread = None
    if margins is not None and (c.fire_counts == 0).any():
        never = margins[c.fire_counts == 0]
        spread = (float(never.min()), float(np.median(never)), float(never.max()))
    return ComponentStats(c.name, c.mean_l0, c.activation_stats(), spread)


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

    def stats(self) -> list[ComponentStats]:
        """Per component that counted vectors, its statistics (none unless ``stats`` was asked)."""
        if not self.options.stats:
            return []
        return [component_stats(c) for c in self.activity.components.values() if c.num_vectors]

    def top_neurons(self) -> dict[str, dict[str, list[dict[str, object]]]]:
        """Per component, the ``top`` most and least active neurons with counts and densities."""
        out = {}
        for c in self.activity.components.values():
            if not c.num_vectors:
                continue
            most, least = top_neurons(c, self.top or 0)
            density = densities(c)
            stats = latent_values(c)
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
        columns += ["mean_l0", "gamma"] if self.options.stats else []
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
                d["dead_neuron_mean_activations"] = [json_number(v) for v in mean[at]]
                d["dead_neuron_max_activations"] = [json_number(v) for v in c.states["act_max"][at]]
            if not flat and self.options.stats and "margins" in c.states:
                d["dead_neuron_margins"] = [json_number(v) for v in c.states["margins"][at]]
        if flat and self.options.stats:  # CSV rows carry their component's (JSON has them in components)
            summary = self._stats_cache()[row.component]
            gamma = summary.activations.gamma if summary.activations is not None else None
            d["mean_l0"] = float(summary.mean_l0)
            d["gamma"] = "" if gamma is None else json_number(gamma)
        if flat and self.top:  # CSV rows carry their component's lists (JSON has them under "top")
            top = self._top_cache().get(row.component, {})
            for label, items in top.items():
                d[label] = " ".join(f"{e['neuron']}:{e['fire_count']}" for e in items)
        return d

    def _top_cache(self) -> dict[str, dict[str, list[dict[str, object]]]]:
        if not hasattr(self, "_top"):
            self._top = self.top_neurons()
        return self._top

    def _stats_cache(self) -> dict[str, ComponentStats]:
        if not hasattr(self, "_stats"):
            self._stats = {s.component: s for s in self.stats()}
        return self._stats

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
        summary = self._stats_cache().get(c.name)
        if summary is not None:
            stats = summary.as_dict()
            if self.neurons and "pre_max" in c.states:  # every latent's, alive ones too
                stats["max_pre_activations"] = [json_number(v) for v in c.states["pre_max"]]
            doc["stats"] = stats
        return doc


def latent_values(c: ComponentActivity) -> Callable[[int], dict[str, object]]:
    """Neuron ``i`` of ``c`` -> its mean activation when firing and largest activation, and its
    margin and largest pre-activation, where they are kept (the means worked out once)."""
    mean = c.mean_when_firing()
    if mean is None:
        return lambda i: {}
    largest, margins, pre_max = c.states["act_max"], c.states.get("margins"), c.states.get("pre_max")

    def values(i: int) -> dict[str, object]:
        found: dict[str, object] = {"mean_activation": json_number(mean[i]), "max_activation": json_number(largest[i])}
        if margins is not None and pre_max is not None:
            found.update(margin=json_number(margins[i]), max_pre_activation=json_number(pre_max[i]))
        return found

    return values


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
    said = list(warnings or []) + (_unkept_stats(activity) if options.stats else [])
    return Report(activity, options, rows, density, shards, device, kernel, said, dict(sources or {}))


def _unkept_stats(activity: NeuronActivity) -> list[str]:
    """What stats cannot show: components whose counts kept no moments (or, for SAE latents, no
    margins): counted without stats, or read from a sparse cache."""
    said = []
    for c in activity.components.values():
        kept = state.MARGINS if c.sae else state.MOMENTS
        if c.num_vectors and not all(name in c.states for name in kept):
            what = "margins" if c.sae else "mean or standard deviation"
            said.append(
                f"component {c.name!r}: no {what} kept (its counts were made without stats, or read from a "
                "sparse cache): its stats are mean_l0 only"
            )
    return said
