"""Accumulated fire counts per component, and the dead-neuron rows computed from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .dtypes import parse_decimal
from .errors import BadThreshold, NoVectors, ShapeMismatch

DEFAULT_THRESHOLDS = ("0", "1e-5", "1e-6")


@dataclass(frozen=True)
class Threshold:
    """A dead threshold: a portion of vectors, kept exactly as the decimal the user typed."""

    text: str
    value: Fraction

    @classmethod
    def parse(cls, text: str) -> Threshold:
        value = parse_decimal(text, "threshold")
        if not 0 <= value <= 1:
            raise BadThreshold(f"threshold {text!r} is not a portion of vectors between 0 and 1")
        return cls(text.strip(), value)

    def max_dead_fires(self, num_vectors: int) -> int:
        """The largest fire count that is still dead: ``floor(threshold * num_vectors)``."""
        return math.floor(self.value * num_vectors)


@dataclass
class ComponentActivity:
    """Exact per-neuron fire counts of one component over ``num_vectors`` vectors."""

    name: str
    fire_counts: np.ndarray  # int64 [num_features]
    num_vectors: int = 0
    nan_counts: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.fire_counts = np.asarray(self.fire_counts, dtype=np.int64)
        if self.nan_counts is None:
            self.nan_counts = np.zeros_like(self.fire_counts)
        self.nan_counts = np.asarray(self.nan_counts, dtype=np.int64)

    @property
    def num_features(self) -> int:
        return int(self.fire_counts.shape[0])

    @property
    def nan_count(self) -> int:
        return int(self.nan_counts.sum())

    def dead(self, threshold: Threshold) -> np.ndarray:
        """Boolean mask of dead neurons: ``fire_count <= threshold * num_vectors`` (inclusive)."""
        return self.fire_counts <= threshold.max_dead_fires(self.num_vectors)

    def add(self, fire_counts: np.ndarray, num_vectors: int, nan_counts: np.ndarray | None = None) -> None:
        if fire_counts.shape != self.fire_counts.shape:
            raise ShapeMismatch(
                f"component {self.name!r} has {self.num_features} features, cannot add counts for {fire_counts.shape[0]}"
            )
        self.fire_counts = self.fire_counts + fire_counts.astype(np.int64)
        self.num_vectors += int(num_vectors)
        if nan_counts is not None:
            self.nan_counts = self.nan_counts + nan_counts.astype(np.int64)


@dataclass(frozen=True)
class ActivityRow:
    """One row of the result: a component at one threshold."""

    component: str
    threshold: Threshold
    dead: int
    alive: int
    num_features: int
    num_vectors: int
    dead_fraction: float

    def as_dict(self) -> dict[str, object]:
        return {
            "component": self.component,
            "threshold": float(self.threshold.value),
            "dead": self.dead,
            "alive": self.alive,
            "num_features": self.num_features,
            "num_vectors": self.num_vectors,
            "dead_fraction": self.dead_fraction,
        }


ROW_COLUMNS = ("component", "threshold", "dead", "alive", "num_features", "num_vectors", "dead_fraction")


class NeuronActivity:
    """Fire counts and vector counts per component; every state reduces by sum.

    >>> import numpy as np
    >>> activity = NeuronActivity()
    >>> activity.add("sae", np.array([1, 0, 1]), num_vectors=2)
    >>> [row.dead for row in activity.rows([Threshold.parse("0")])]
    [1]
    """

    def __init__(self, fire_above: Fraction | int = 0) -> None:
        self.fire_above = Fraction(fire_above)
        self.components: dict[str, ComponentActivity] = {}

    def add(
        self, name: str, fire_counts: np.ndarray, num_vectors: int, nan_counts: np.ndarray | None = None
    ) -> None:
        """Add counts for component ``name`` (created on first sight, in that order)."""
        fire_counts = np.asarray(fire_counts, dtype=np.int64)
        if name not in self.components:
            self.components[name] = ComponentActivity(name, np.zeros_like(fire_counts))
        self.components[name].add(fire_counts, num_vectors, nan_counts)

    def merge(self, other: NeuronActivity) -> NeuronActivity:
        """Add another activity's counts into this one (same ``fire_above``); returns self."""
        if other.fire_above != self.fire_above:
            raise BadThreshold(
                f"cannot merge counts made with fire-above {float(other.fire_above)} into counts made "
                f"with fire-above {float(self.fire_above)}"
            )
        for c in other.components.values():
            self.add(c.name, c.fire_counts, c.num_vectors, c.nan_counts)
        return self

    def rows(self, thresholds: list[Threshold]) -> list[ActivityRow]:
        """One row per (component, threshold): components in order first seen, thresholds as given."""
        if not self.components:
            raise NoVectors("no vectors were counted: no component was read")
        rows = []
        for c in self.components.values():
            if not c.num_vectors:
                raise NoVectors(f"component {c.name!r} has no vectors: every tensor read for it is empty")
            for t in thresholds:
                dead = int(c.dead(t).sum())
                rows.append(
                    ActivityRow(
                        component=c.name,
                        threshold=t,
                        dead=dead,
                        alive=c.num_features - dead,
                        num_features=c.num_features,
                        num_vectors=c.num_vectors,
                        dead_fraction=dead / c.num_features if c.num_features else 0.0,
                    )
                )
        return rows
