"""Exact neuron activity inside training: counts made on the tensor's own device, the same fire
rule as a scan (raw-bit ranges, exact in bf16 and fp16), int64 counts, and dead thresholds
applied exactly as given.

``TensorActivity`` needs only torch; ``NeuronActivityMetric`` is a drop-in for the
``NeuronActivityMetric`` of ``sparse_autoencoder`` (a ``torchmetrics.Metric``: ``pip install
torchmetrics``) with the same constructor and ``compute``, made exact. Both save counts that
``nact report``, ``merge`` and ``diff`` read.

>>> import torch
>>> metric = TensorActivity(num_learned_features=3)
>>> metric.update(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
>>> metric.dead_counts("0")
tensor(1)
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from . import state
from .activity import NeuronActivity, Threshold
from .counts_file import SavedCounts, save_counts
from .decimals import as_fraction, decimal_text
from .dtypes import TORCH_NAMES, fire_rule, signed_bits
from .errors import BadOption, ShapeMismatch
from .torch_counting import fire_mask, nan_mask

COUNTED = tuple(f for f in state.FIELDS if not f.optional)  # the per-neuron states kept in training


def exact_portion(threshold: float | str | Fraction) -> Fraction:
    """A dead threshold exactly as given: a decimal string as typed, or a float as the decimal it
    prints as (``1e-5`` is exactly 1/100000, not the binary float nearest to it)."""
    if isinstance(threshold, Fraction):
        value = threshold
    elif isinstance(threshold, str):
        value = Threshold.parse(threshold).value
    else:
        value = Fraction(repr(float(threshold)))
    if not 0 <= value <= 1:
        raise BadOption(
            "threshold",
            threshold if isinstance(threshold, str) else decimal_text(value),
            "is not a portion of vectors between 0 and 1",
        )
    return value


def count_tensor(activations: Any, fire_above: str | Fraction | int = 0) -> tuple[Any, Any]:
    """Per-neuron fire and NaN counts (int64, on the tensor's device) of ``activations`` of
    shape ``[batch, ..., features]``, summed over the batch axis: ``[..., features]``. Nothing is
    copied to the host."""
    dtype = TORCH_NAMES.get(str(activations.dtype).removeprefix("torch."))
    if dtype is None:
        raise BadOption("activations", f"dtype {activations.dtype}", "cannot be counted")
    rule = fire_rule(dtype, as_fraction(fire_above, "fire_above"))
    bits = signed_bits(activations.detach())
    zeros = torch.zeros(activations.shape[1:], dtype=torch.int64, device=activations.device)
    fires, nans = fire_mask(bits, rule.signed_fire_ranges()), nan_mask(bits, rule)
    fire_counts = zeros if fires is None else fires.sum(dim=0, dtype=torch.int64)
    nan_counts = zeros.clone() if nans is None else nans.sum(dim=0, dtype=torch.int64)
    return fire_counts, nan_counts


class _Shape:
    """The layout both classes check: ``[batch, features]`` or ``[batch, components, features]``."""

    def __init__(self, num_learned_features: int, num_components: int | None) -> None:
        for name, value in (("num_learned_features", num_learned_features), ("num_components", num_components)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise BadOption(name, value, "must be a whole number of at least 1")
        self.features = num_learned_features
        self.components = num_components
        self.state_shape = (num_learned_features,) if num_components is None else (num_components, num_learned_features)

    def check(self, activations: Any) -> None:
        if tuple(activations.shape[1:]) != self.state_shape:
            want = "[batch, " + ", ".join(map(str, self.state_shape)) + "]"
            raise ShapeMismatch(f"activations of shape {list(activations.shape)} given where {want} is counted")


def dead_counts_of(fire_counts: Any, num_vectors: int, threshold: float | str | Fraction) -> Any:
    """Dead neurons per component (the last axis summed): ``fire_count <= floor(p * N)`` with
    ``p * N`` computed exactly."""
    bound = math.floor(exact_portion(threshold) * int(num_vectors))
    return (fire_counts <= bound).sum(dim=-1)


def activity_of(
    shape: _Shape, states: dict[str, Any], num_vectors: int, fire_above: Fraction, name: str
) -> NeuronActivity:
    """The counts as a NeuronActivity (host copies): components ``name`` or ``name[i]``."""
    activity = NeuronActivity(fire_above)
    host = {k: v.detach().cpu().numpy() for k, v in states.items()}
    if shape.components is None:
        activity.add_states(name, host, num_vectors)
    else:
        for i in range(shape.components):
            activity.add_states(f"{name}[{i}]", {k: v[i] for k, v in host.items()}, num_vectors)
    return activity


class TensorActivity:
    """Exact neuron activity of tensors fed batch by batch, counted on their own device.

    ``update`` takes ``[batch, features]`` or ``[batch, components, features]`` tensors;
    ``dead_counts(threshold)`` gives the dead neurons per component (a 0-d tensor without a
    component axis), exactly; ``activity()`` the counts as a NeuronActivity; ``save_counts``
    writes them for ``nact report``, ``merge`` and ``diff``.
    """

    def __init__(
        self,
        num_learned_features: int,
        num_components: int | None = None,
        *,
        fire_above: str | Fraction | int = 0,
        name: str = "activations",
    ) -> None:
        self.shape = _Shape(num_learned_features, num_components)
        self.fire_above = as_fraction(fire_above, "fire_above")
        self.name = name
        self.states: dict[str, Any] | None = None
        self.num_vectors = 0

    def update(self, activations: Any) -> None:
        self.shape.check(activations)
        fire_counts, nan_counts = count_tensor(activations, self.fire_above)
        if self.states is None:
            self.states = {"fire_counts": fire_counts, "nan_counts": nan_counts}
        else:
            self.states["fire_counts"] += fire_counts.to(self.states["fire_counts"].device)
            self.states["nan_counts"] += nan_counts.to(self.states["nan_counts"].device)
        self.num_vectors += int(activations.shape[0])

    def _states(self) -> dict[str, Any]:
        if self.states is None:
            return {f.name: torch.zeros(self.shape.state_shape, dtype=torch.int64) for f in COUNTED}
        return self.states

    def dead_counts(self, threshold: float | str | Fraction = 0) -> Any:
        return dead_counts_of(self._states()["fire_counts"], self.num_vectors, threshold)

    def activity(self) -> NeuronActivity:
        return activity_of(self.shape, self._states(), self.num_vectors, self.fire_above, self.name)

    def save_counts(self, path: Path | str) -> None:
        save_counts(
            Path(path), SavedCounts(self.activity(), kernel="torch", device=str(self._states()["fire_counts"].device))
        )


def _metric_class() -> type:
    try:
        from torchmetrics import Metric  # optional (pip install torchmetrics), and ~2 s: loaded on first use
    except ImportError:
        raise BadOption("metric", "NeuronActivityMetric", "needs torchmetrics: pip install torchmetrics") from None

    class NeuronActivityMetric(Metric):
        """A drop-in for ``sparse_autoencoder``'s ``NeuronActivityMetric``, exact: int64 fire
        counts (float32 counts stop at 2^24) and ``p * N`` computed exactly from the threshold
        as given. ``compute()`` returns the dead neurons per component (0-d without a component
        axis); ``dead_counts(t)`` gives them for other thresholds from the same counts. Every
        state is registered with its reduction (``state.FIELDS``), so DDP sync, ``merge_state``
        and ``reset`` are torchmetrics' own."""

        fire_counts: torch.Tensor  # the states, registered with add_state in __init__
        nan_counts: torch.Tensor
        num_vectors: torch.Tensor
        is_differentiable = False
        higher_is_better = False
        full_state_update = False
        plot_lower_bound = 0.0

        def __init__(
            self,
            num_learned_features: int,
            num_components: int | None = None,
            threshold_is_dead_portion_fires: float | str = 0.0,
            *,
            fire_above: str | Fraction | int = 0,
            name: str = "activations",
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.shape = _Shape(num_learned_features, num_components)
            self.threshold = exact_portion(threshold_is_dead_portion_fires)
            self.fire_above = as_fraction(fire_above, "fire_above")
            self.name = name
            for field in COUNTED:
                default = torch.full(self.shape.state_shape, field.empty, dtype=getattr(torch, field.dtype))
                self.add_state(
                    field.name, default=default, dist_reduce_fx="sum" if field.reduce == state.SUM else "max"
                )
            self.add_state("num_vectors", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

        def update(self, learned_activations: Any, **kwargs: Any) -> None:
            self.shape.check(learned_activations)
            fire_counts, nan_counts = count_tensor(learned_activations, self.fire_above)
            self.fire_counts += fire_counts
            self.nan_counts += nan_counts
            self.num_vectors += learned_activations.shape[0]

        def compute(self) -> Any:
            return self.dead_counts(self.threshold)

        def dead_counts(self, threshold: float | str | Fraction) -> Any:
            return dead_counts_of(self.fire_counts, int(self.num_vectors), threshold)

        def activity(self) -> NeuronActivity:
            states = {f.name: getattr(self, f.name) for f in COUNTED}
            return activity_of(self.shape, states, int(self.num_vectors), self.fire_above, self.name)

        def save_counts(self, path: Path | str) -> None:
            device = str(self.fire_counts.device)
            save_counts(Path(path), SavedCounts(self.activity(), kernel="torch", device=device))

    return NeuronActivityMetric


def __getattr__(name: str) -> Any:
    if name == "NeuronActivityMetric":  # built on first use: torchmetrics is optional
        cls = _metric_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
