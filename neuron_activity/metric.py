"""Exact neuron activity inside training: counts made where the tensor lies, the same fire rule
as a scan (exact in bf16 and fp16), int64 counts, and dead thresholds applied exactly as given.

``TensorActivity`` needs only torch; ``NeuronActivityMetric`` is a drop-in for the
``NeuronActivityMetric`` of ``sparse_autoencoder`` (a ``torchmetrics.Metric``: ``pip install
torchmetrics``) with the same constructor and ``compute``, made exact. Both save counts that
``nact report``, ``merge`` and ``diff`` read, and give what resampling code needs on the device:
``dead_mask``, ``fire_counts``, ``num_vectors`` and ``density()``.

A CPU tensor is counted in place by the C kernel that counts scans (its memory viewed, not
copied; the GIL released); a tensor on a GPU by a fixed few torch kernels, queued without the
host ever waiting for them.

>>> import torch
>>> metric = TensorActivity(num_learned_features=3)
>>> metric.update(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
>>> metric.dead_counts("0")
tensor(1)
>>> metric.dead_mask(0.0)
tensor([False,  True, False])
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from . import cpu_counting, state
from .activity import NeuronActivity, Threshold, ThresholdLike
from .counting import kernel_for
from .counts_file import SavedCounts, ShardRecord, save_counts
from .decimals import as_fraction
from .dtypes import TORCH_NAMES, FireRule, fire_rule, signed_bits
from .errors import BadOption, ShapeMismatch
from .options import CountOptions, Kernel
from .torch_counting import add_counts as add_device_counts

COUNTED = tuple(f for f in state.FIELDS if not f.optional)  # the per-neuron states kept in training


def exact_portion(threshold: ThresholdLike) -> Fraction:
    """A dead threshold exactly as given (see ``Threshold.of``): a float as the decimal it
    prints as (``1e-5`` is exactly 1/100000), text as typed (``"1e-5"``, ``"0.001%"``)."""
    return Threshold.of(threshold).value


@functools.lru_cache(maxsize=256)
def rule_for(dtype: torch.dtype, fire_above: Fraction) -> FireRule:
    """The fire rule of a torch dtype (made once per dtype and bound: it is a search)."""
    name = TORCH_NAMES.get(str(dtype).removeprefix("torch."))
    if name is None:
        raise BadOption("activations", f"dtype {dtype}", "cannot be counted")
    return fire_rule(name, fire_above)


def cpu_kernel(kernel: Kernel | None) -> Kernel:
    """The kernel that counts CPU tensors, chosen as a scan chooses it (``kernel``, else
    ``$NACT_KERNEL``, else the C kernel when it was built); torch counts as it does on a GPU."""
    return cast(Kernel, kernel_for("cpu", CountOptions(kernel=kernel).kernel))  # one of KERNELS


def add_counts(
    activations: torch.Tensor,
    fire_above: Fraction,
    fire_counts: torch.Tensor,
    nan_counts: torch.Tensor,
    kernel: Kernel = "native",
) -> None:
    """Add the per-neuron fire and NaN counts of ``activations`` (``[batch, ...]``), summed over
    the batch, into the int64 tensors ``fire_counts`` and ``nan_counts`` (``activations.shape[1:]``,
    on the same device). On the CPU the tensor's memory is counted where it is (copied only when
    it is not contiguous) by ``kernel`` into the counts' memory, which must be contiguous; on
    any other device (or with ``kernel="torch"``) a fixed few torch kernels count it, and
    nothing is read back to the host."""
    x = activations.detach()
    rule = rule_for(x.dtype, fire_above)
    if fire_counts.dtype != torch.int64 or nan_counts.dtype != torch.int64:
        raise BadOption("counts", f"of dtype {fire_counts.dtype}", "cannot hold exact counts: they are int64")
    if fire_counts.device != x.device or nan_counts.device != x.device:
        raise BadOption(
            "activations",
            f"on {x.device}",
            f"cannot be added to counts on {fire_counts.device}: move the metric there (.to({str(x.device)!r}))",
        )
    if x.device.type != "cpu" or kernel == "torch":
        add_device_counts(signed_bits(x), rule, fire_counts, nan_counts)
        return
    width = fire_counts.numel()
    bits: np.ndarray = signed_bits(x.contiguous()).numpy().view(rule.unsigned).reshape(x.shape[0], width)
    cpu_counting.add_counts(rule, bits, fire_counts.view(-1).numpy(), nan_counts.view(-1).numpy(), kernel)


def count_tensor(
    activations: torch.Tensor, fire_above: str | Fraction | int = 0, kernel: Kernel | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron fire and NaN counts (int64, on the tensor's device) of ``activations`` of
    shape ``[batch, ..., features]``, summed over the batch axis: ``[..., features]``. Nothing is
    copied to the host."""
    counts = [torch.zeros(activations.shape[1:], dtype=torch.int64, device=activations.device) for _ in range(2)]
    add_counts(activations, as_fraction(fire_above, "fire_above"), counts[0], counts[1], cpu_kernel(kernel))
    return counts[0], counts[1]


def dead_bound(num_vectors: int | torch.Tensor, portion: Fraction) -> int | torch.Tensor:
    """``floor(portion * num_vectors)``, exactly: the largest fire count that is dead. For a
    tensor, computed on its device without reading it back while the portion's terms are small
    (``a / b`` in lowest terms with ``a * b < 2^62``, as 1e-6, 0.1% and 0.123456789 are); past
    that, ``num_vectors`` is read once."""
    if not isinstance(num_vectors, torch.Tensor):
        return math.floor(portion * int(num_vectors))
    a, b = portion.numerator, portion.denominator
    if a * b < 1 << 62:  # floor(a N / b) = a (N // b) + a (N % b) // b, where a (N % b) < a b: no overflow
        return a * (num_vectors // b) + a * (num_vectors % b) // b
    return math.floor(portion * int(num_vectors))


def dead_mask_of(fire_counts: torch.Tensor, num_vectors: int | torch.Tensor, threshold: ThresholdLike) -> torch.Tensor:
    """Where ``fire_count <= p * N``, with ``p * N`` exact (a bool tensor on the counts' device)."""
    return fire_counts <= dead_bound(num_vectors, exact_portion(threshold))


def density_of(fire_counts: torch.Tensor, num_vectors: int | torch.Tensor) -> torch.Tensor:
    """Each neuron's fire count over the vectors seen, float64 on the counts' device (NaN
    while no vectors were seen)."""
    return fire_counts.to(torch.float64) / num_vectors


def saved(activity: NeuronActivity, kernel: Kernel, device: torch.device, record: ShardRecord) -> SavedCounts:
    """Counts to save, with the kernel that counted them on ``device`` (torch off the CPU) and the
    record of what they count (``record``: the counting's own, from its start or last reset, so
    that two saves of the same running counts cannot be merged into each other)."""
    kernel_name = kernel if device.type == "cpu" else "torch"
    return SavedCounts(activity, shards=[record], kernel=kernel_name, device=str(device))


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
    """Exact neuron activity of tensors fed batch by batch, counted where they lie.

    ``update`` takes ``[batch, features]`` or ``[batch, components, features]`` tensors;
    ``dead_mask(threshold)`` says which neurons are dead (``[features]`` or ``[components,
    features]``, on the counts' device) and ``dead_counts(threshold)`` how many per component
    (a 0-d tensor without a component axis), exactly; ``density()`` each neuron's fire rate;
    ``activity()`` the counts as a NeuronActivity; ``save_counts`` writes them for ``nact
    report``, ``merge`` and ``diff``. The counts stay on the device of the first batch.
    """

    def __init__(
        self,
        num_learned_features: int,
        num_components: int | None = None,
        *,
        fire_above: str | Fraction | int = 0,
        name: str = "activations",
        kernel: Kernel | None = None,
    ) -> None:
        self.shape = _Shape(num_learned_features, num_components)
        self.fire_above = as_fraction(fire_above, "fire_above")
        self.name = name
        self.kernel = cpu_kernel(kernel)
        self.states: dict[str, torch.Tensor] | None = None
        self.num_vectors = 0
        self.record = ShardRecord.in_memory()  # what its saved counts say they count

    def update(self, activations: torch.Tensor) -> None:
        self.shape.check(activations)
        if self.states is None:
            self.states = self._empty(activations.device)
        states, device = self.states, self.states["fire_counts"].device
        if activations.device == device:
            add_counts(activations, self.fire_above, states["fire_counts"], states["nan_counts"], self.kernel)
        else:
            fire_counts, nan_counts = count_tensor(activations, self.fire_above, self.kernel)
            states["fire_counts"] += fire_counts.to(device)
            states["nan_counts"] += nan_counts.to(device)
        self.num_vectors += int(activations.shape[0])

    def _empty(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return {f.name: torch.full(self.shape.state_shape, f.empty, dtype=torch.int64, device=device) for f in COUNTED}

    def _states(self) -> dict[str, torch.Tensor]:
        return self._empty() if self.states is None else self.states

    @property
    def fire_counts(self) -> torch.Tensor:
        return self._states()["fire_counts"]

    @property
    def nan_counts(self) -> torch.Tensor:
        return self._states()["nan_counts"]

    def dead_mask(self, threshold: ThresholdLike = 0) -> torch.Tensor:
        return dead_mask_of(self.fire_counts, self.num_vectors, threshold)

    def dead_counts(self, threshold: ThresholdLike = 0) -> torch.Tensor:
        return self.dead_mask(threshold).sum(dim=-1)

    def density(self) -> torch.Tensor:
        return density_of(self.fire_counts, self.num_vectors)

    def activity(self) -> NeuronActivity:
        return activity_of(self.shape, self._states(), self.num_vectors, self.fire_above, self.name)

    def save_counts(self, path: Path | str) -> None:
        save_counts(Path(path), saved(self.activity(), self.kernel, self.fire_counts.device, self.record))


def _metric_class() -> type:
    try:
        from torchmetrics import Metric  # optional (pip install torchmetrics), and ~2 s: loaded on first use
    except ImportError:
        raise BadOption(
            "metric", "NeuronActivityMetric", "needs torchmetrics: pip install 'nact[torchmetrics]'"
        ) from None

    class NeuronActivityMetric(Metric):
        """A drop-in for ``sparse_autoencoder``'s ``NeuronActivityMetric``, exact: int64 fire
        counts (float32 counts stop at 2^24) and ``p * N`` computed exactly from the threshold
        as given (a float, ``"1e-6"`` or ``"0.1%"``). ``compute()`` returns the dead neurons per
        component (0-d without a component axis); ``dead_counts(t)`` gives them for other
        thresholds from the same counts, ``dead_mask(t)`` which neurons they are (for
        resampling), ``density()`` each neuron's fire rate; ``fire_counts``, ``nan_counts`` and
        ``num_vectors`` are the states, tensors on the metric's device.

        Every state is registered with its reduction (``state.FIELDS``), so DDP sync,
        ``merge_state``, ``reset`` and a ``MetricCollection``'s shared states are torchmetrics'
        own; the states are saved with ``state_dict`` (``persistent(False)`` leaves them out).
        ``update`` never waits on a GPU, and ``compute`` reads nothing back for thresholds of a
        few digits (see ``dead_bound``)."""

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
            threshold_is_dead_portion_fires: ThresholdLike = 0.0,
            *,
            fire_above: str | Fraction | int = 0,
            name: str = "activations",
            kernel: Kernel | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.shape = _Shape(num_learned_features, num_components)
            self.threshold = exact_portion(threshold_is_dead_portion_fires)
            self.fire_above = as_fraction(fire_above, "fire_above")
            self.name = name
            self.kernel = cpu_kernel(kernel)
            for field in COUNTED:
                default = torch.full(self.shape.state_shape, field.empty, dtype=getattr(torch, field.dtype))
                reduce = "sum" if field.reduce == state.SUM else "max"
                self.add_state(field.name, default=default, dist_reduce_fx=reduce, persistent=True)
            self.add_state(
                "num_vectors", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum", persistent=True
            )
            self.record = ShardRecord.in_memory()  # what its saved counts say they count, until a reset

        def reset(self) -> None:
            """Start counting anew: counts saved from now on can be merged with those saved before."""
            super().reset()
            self.record = ShardRecord.in_memory()

        def update(self, learned_activations: torch.Tensor, **kwargs: Any) -> None:
            """Count a batch ``[batch, features]`` or ``[batch, components, features]``; other
            keyword arguments are ignored (as the reference's, for use in a collection)."""
            self.shape.check(learned_activations)
            for name in self._defaults:  # every state: int64 and contiguous, to be counted in place
                value = getattr(self, name)
                if value.dtype != torch.int64 or not value.is_contiguous():  # as set_dtype or a state dict left it
                    setattr(self, name, value.to(torch.int64).contiguous())
            add_counts(learned_activations, self.fire_above, self.fire_counts, self.nan_counts, self.kernel)
            self.num_vectors += learned_activations.shape[0]

        def compute(self) -> torch.Tensor:
            return self.dead_counts(self.threshold)

        def dead_mask(self, threshold: ThresholdLike | None = None) -> torch.Tensor:
            """Which neurons are dead at ``threshold`` (None: the metric's own): a bool tensor
            ``[features]`` or ``[components, features]`` on the metric's device, exactly
            ``fire_count <= p * N``."""
            return dead_mask_of(self.fire_counts, self.num_vectors, self.threshold if threshold is None else threshold)

        def dead_counts(self, threshold: ThresholdLike | None = None) -> torch.Tensor:
            return self.dead_mask(threshold).sum(dim=-1)

        def density(self) -> torch.Tensor:
            return density_of(self.fire_counts, self.num_vectors)

        def activity(self) -> NeuronActivity:
            states = {f.name: getattr(self, f.name) for f in COUNTED}
            return activity_of(self.shape, states, int(self.num_vectors), self.fire_above, self.name)

        def save_counts(self, path: Path | str) -> None:
            save_counts(Path(path), saved(self.activity(), self.kernel, self.fire_counts.device, self.record))

    NeuronActivityMetric.__qualname__ = "NeuronActivityMetric"  # pickled by name: this module's __getattr__ makes it
    return NeuronActivityMetric


def __getattr__(name: str) -> Any:
    if name == "NeuronActivityMetric":  # built on first use: torchmetrics is optional
        cls = _metric_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
