"""Comparing two activities: which neurons died, revived, or stayed dead."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activity import NeuronActivity, Threshold
from .decimals import decimal_text
from .errors import CountsMismatch, NactError, ShapeMismatch
from .report import JSON_SCHEMA_VERSION


@dataclass(frozen=True)
class ComponentChange:
    component: str
    died: list[int]  # alive in old, dead in new
    revived: list[int]  # dead in old, alive in new
    stayed_dead: list[int]
    dead_old: int
    dead_new: int

    def as_dict(self, neurons: bool = False) -> dict[str, object]:
        d: dict[str, object] = {
            "component": self.component,
            "died": len(self.died),
            "revived": len(self.revived),
            "stayed_dead": len(self.stayed_dead),
            "dead_old": self.dead_old,
            "dead_new": self.dead_new,
        }
        if neurons:
            d["neurons"] = {"died": self.died, "revived": self.revived, "stayed_dead": self.stayed_dead}
        return d


@dataclass(frozen=True)
class Changes:
    """Per component, the neurons that changed at ``threshold``; the JSON document of ``nact diff``."""

    threshold: Threshold
    components: list[ComponentChange]

    @property
    def died(self) -> int:
        return sum(len(c.died) for c in self.components)

    def to_json(self, neurons: bool = False) -> dict[str, object]:
        return {
            "schema_version": JSON_SCHEMA_VERSION,
            "threshold": float(self.threshold.value),
            "components": [c.as_dict(neurons) for c in self.components],
        }


def _listed(names: list[str], most: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(map(repr, names[:most])) + (f" and {len(names) - most} more" if len(names) > most else "")


def compare(old: NeuronActivity, new: NeuronActivity, threshold: Threshold) -> list[ComponentChange]:
    """Per component present in both: neurons that died, revived and stayed dead at ``threshold``.

    Counts made with different ``fire_above`` count different events: they are not compared."""
    if old.fire_above != new.fire_above:
        raise CountsMismatch(
            f"the counts were made with different fire rules (fire above {decimal_text(old.fire_above)} before, "
            f"{decimal_text(new.fire_above)} after): compare counts made with the same fire rule"
        )
    common = [name for name in new.components if name in old.components]
    if not common:
        raise CountsMismatch(
            f"the two counts have no component in common: before only {_listed(list(old.components))}; "
            f"after only {_listed(list(new.components))}"
        )
    changes = []
    for name in common:
        a, b = old.components[name], new.components[name]
        if a.num_features != b.num_features:
            raise ShapeMismatch(f"component {name!r} has {a.num_features} features before and {b.num_features} after")
        if not a.num_vectors or not b.num_vectors:
            raise NactError(f"component {name!r} has no vectors in one of the two counts")
        dead_a, dead_b = a.dead(threshold), b.dead(threshold)
        changes.append(
            ComponentChange(
                name,
                np.flatnonzero(~dead_a & dead_b).tolist(),
                np.flatnonzero(dead_a & ~dead_b).tolist(),
                np.flatnonzero(dead_a & dead_b).tolist(),
                int(dead_a.sum()),
                int(dead_b.sum()),
            )
        )
    return changes
