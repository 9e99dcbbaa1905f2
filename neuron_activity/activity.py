"""Accumulated fire counts per component, and the dead-neuron rows computed from them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import state
from .decimals import Portion, as_portion, decimal_text
from .errors import BadThreshold, CountsMismatch, NotTracked, NoVectors, ShapeMismatch
from .stats import ActivationStats, summarize

DEFAULT_THRESHOLDS = ("0", "1e-5", "1e-6")


@dataclass(frozen=True, slots=True)
class Threshold:
    """A dead threshold: a portion of vectors, kept exactly as the decimal the user typed."""

    text: str
    value: Fraction

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """A portion as typed: a decimal (``1e-6``, ``0.01``) or a percentage (``1%``)."""
        return cls.of(text)

    @classmethod
    def of(cls, threshold: ThresholdLike) -> Threshold:
        """A threshold as the library takes one: a Threshold, text as typed (``"1e-6"``,
        ``"0.0001%"``) or a number (a float as the decimal it prints as: ``1e-6`` is exactly
        one millionth), as ``-t`` takes it.

        >>> Threshold.of(1e-6).value == Threshold.of("0.0001%").value == Fraction(1, 1_000_000)
        True
        """
        if isinstance(threshold, Threshold):
            return threshold
        value = as_portion(threshold, "threshold")
        text = threshold.strip() if isinstance(threshold, str) else _number_text(threshold, value)
        if not 0 <= value <= 1:
            raise BadThreshold("threshold", text, "is not a portion of vectors between 0 and 1")
        return cls(text, value)

    def max_dead_fires(self, num_vectors: int) -> int:
        """The largest fire count that is still dead: ``floor(threshold * num_vectors)``."""
        return math.floor(self.value * num_vectors)


ThresholdLike = Threshold | Portion  # what every call that takes a dead threshold accepts


def _number_text(number: Portion, value: Fraction) -> str:
    """How a threshold given as a number is shown: a float as it prints, others as a decimal."""
    if isinstance(number, float | np.floating):
        return str(number) if isinstance(number, np.floating) else repr(float(number))
    return decimal_text(value)


class ComponentActivity:
    """Exact per-neuron states (see ``state.FIELDS``) of one component over ``num_vectors`` vectors."""

    def __init__(self, name: str, states: dict[str, np.ndarray], num_vectors: int = 0) -> None:
        missing = [f.name for f in state.FIELDS if not f.optional and f.name not in states]
        if missing:
            raise ValueError(f"component {name!r}: missing states {missing}")
        self.name = name
        self.states = {n: np.asarray(v, dtype=state.BY_NAME[n].dtype) for n, v in states.items()}
        self.num_vectors = int(num_vectors)
        self.first_neuron = 0  # the index of neuron 0 in its layer (a partial delphi module's run)
        self.sae: dict[str, object] | None = None  # the SAE whose latents these are (sae.Sae.as_dict)

    def mean_when_firing(self) -> np.ndarray | None:
        """Per neuron, its mean activation over the vectors it fired on (NaN where it never
        fired); None when activations were not summed (only SAE latents are)."""
        sums = self.states.get("act_sums")
        if sums is None:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.fire_counts > 0, sums / np.maximum(self.fire_counts, 1), np.nan)

    @property
    def fire_counts(self) -> np.ndarray:
        return self.states["fire_counts"]

    @property
    def mean_l0(self) -> Fraction:
        """The mean number of neurons that fire per vector: the sum of the fire counts over
        ``num_vectors``, exactly (0 when there are no vectors)."""
        counts = self.fire_counts
        if self.num_vectors * len(counts) < 2**63:  # each count <= num_vectors: the int64 sum is exact
            total = int(counts.sum())
        else:
            total = sum(int(c) for c in counts.tolist())
        return Fraction(total, self.num_vectors) if self.num_vectors else Fraction(0)

    def activation_stats(self) -> ActivationStats | None:
        """What the moments of the values say (``stats.summarize``); None where they were not
        kept (counts made without stats, a sparse cache, SAE latents)."""
        if not all(name in self.states for name in state.MOMENTS):
            return None
        counts, means, m2 = (self.states[name] for name in state.MOMENTS)
        return summarize(counts, means, m2, self.first_neuron)

    @property
    def nan_counts(self) -> np.ndarray:
        return self.states["nan_counts"]

    @property
    def last_fired(self) -> np.ndarray | None:
        """Stream index of the last vector each neuron fired on (-1: never); None: not tracked."""
        return self.states.get("last_fired")

    @property
    def num_features(self) -> int:
        return int(self.fire_counts.shape[0])

    @property
    def nan_count(self) -> int:
        return int(self.nan_counts.sum())

    def dead(self, threshold: ThresholdLike) -> np.ndarray:
        """Boolean mask of dead neurons: ``fire_count <= threshold * num_vectors`` (inclusive);
        ``threshold`` as ``Threshold.of`` takes it (``0.0``, ``"1e-6"``, ``"0.1%"``)."""
        return self.fire_counts <= Threshold.of(threshold).max_dead_fires(self.num_vectors)

    @property
    def vectors_since_fired(self) -> np.ndarray | None:
        """Per neuron, how many vectors came after the last one it fired on (all of them if none)."""
        if self.last_fired is None:
            return None
        return np.where(self.last_fired >= 0, self.num_vectors - 1 - self.last_fired, self.num_vectors)

    def dead_in_window(self, window: int) -> np.ndarray:
        """Neurons that did not fire on any of the last ``window`` vectors (or of all, if fewer)."""
        since = self.vectors_since_fired
        if since is None:
            raise NotTracked(self.name)
        return since >= min(window, self.num_vectors)

    def add(self, states: dict[str, np.ndarray], num_vectors: int) -> None:
        """Add the states of vectors that come after those already counted (in stream order)."""
        width = len(states["fire_counts"])
        if width != self.num_features:
            raise ShapeMismatch(
                f"component {self.name!r} has {self.num_features} features, cannot add counts for {width}"
            )
        self.states = state.combined(self.states, self.num_vectors, states, int(num_vectors))
        self.num_vectors += int(num_vectors)


@dataclass(frozen=True, slots=True)
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
        self,
        name: str,
        fire_counts: np.ndarray,
        num_vectors: int,
        nan_counts: np.ndarray | None = None,
        last_fired: np.ndarray | None = None,
    ) -> None:
        """Add counts for component ``name`` (created on first sight, in that order) of vectors
        that come after those already counted."""
        states = {"fire_counts": np.asarray(fire_counts, dtype=np.int64)}
        states["nan_counts"] = np.zeros_like(states["fire_counts"]) if nan_counts is None else nan_counts
        if last_fired is not None:
            states["last_fired"] = last_fired
        self.add_states(name, states, num_vectors)

    def add_states(self, name: str, states: dict[str, np.ndarray], num_vectors: int) -> None:
        """Add the per-neuron ``states`` of component ``name`` (see ``state.FIELDS``)."""
        states = {n: np.asarray(v, dtype=state.BY_NAME[n].dtype) for n, v in states.items()}
        if name not in self.components:
            width = len(states["fire_counts"])
            self.components[name] = ComponentActivity(name, state.empty(width, tuple(states)), 0)
        self.components[name].add(states, num_vectors)

    def merge(self, other: NeuronActivity) -> NeuronActivity:
        """Add another activity's counts into this one (same ``fire_above``); returns self.

        ``other``'s vectors are taken to come after this one's, for the time since last fired."""
        if other.fire_above != self.fire_above:
            raise CountsMismatch(
                f"counts made with fire above {decimal_text(other.fire_above)} cannot be merged into counts made "
                f"with fire above {decimal_text(self.fire_above)}: they count different events"
            )
        for c in other.components.values():
            mine = self.components.get(c.name)
            if mine is not None and mine.sae and c.sae and mine.sae.get("fingerprint") != c.sae.get("fingerprint"):
                raise ShapeMismatch(
                    f"component {c.name!r} holds the latents of two different SAEs "
                    f"({mine.sae.get('path')}, {c.sae.get('path')}): their counts do not add up"
                )
            if c.name in self.components and self.components[c.name].first_neuron != c.first_neuron:
                raise ShapeMismatch(
                    f"component {c.name!r} starts at neuron {c.first_neuron} here, "
                    f"{self.components[c.name].first_neuron} there"
                )
            self.add_states(c.name, c.states, c.num_vectors)
            self.components[c.name].first_neuron = c.first_neuron
            self.components[c.name].sae = self.components[c.name].sae or c.sae
        return self

    def rows(self, thresholds: Sequence[ThresholdLike]) -> list[ActivityRow]:
        """One row per (component, threshold): components in order first seen, thresholds as given
        (each as ``Threshold.of`` takes it: ``[1e-6, "0", "0.1%"]``)."""
        checked = [Threshold.of(t) for t in thresholds]
        counted = [c for c in self.components.values() if c.num_vectors]
        if not counted:
            names = ", ".join(repr(name) for name in self.components) or "none"
            raise NoVectors(f"no vectors were counted (components: {names}): every tensor read is empty")
        rows = []
        for c in counted:
            for t in checked:
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
