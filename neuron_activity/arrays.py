"""Counting arrays held in memory (numpy, or torch of any floating dtype): the same fire rule
and states as a scan, without files."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from . import state
from .activity import NeuronActivity
from .counting import make_counter
from .decimals import as_fraction
from .devices import resolve_device
from .dtypes import NUMPY_NAMES, TORCH_NAMES, fire_rule, is_tensor, signed_bits
from .errors import BadOption
from .options import CountOptions, Kernel
from .sources.layout import component_layout


def count_array(
    array: object,
    name: str = "activations",
    *,
    fire_above: str | Fraction | int = 0,
    flatten: bool = False,
    device: str = "cpu",
    kernel: Kernel | None = None,
    track_last: bool = False,
    stats: bool = False,
) -> NeuronActivity:
    """Count fires in an in-memory array (numpy, or torch of any floating dtype); ``stats``: keep
    the moments of the values too (``state.MOMENTS``), counted on the host.

    >>> import numpy as np
    >>> from neuron_activity import Threshold
    >>> count_array(np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])).rows([Threshold.parse("0")])[0].dead
    1
    """
    options = CountOptions(
        fire_above=as_fraction(fire_above, "fire_above"),
        flatten=flatten,
        device=device,
        kernel=kernel,
        track_last=track_last,
        stats=stats,
    )
    plain = not track_last and not flatten and not stats  # what the metric counts where the tensor lies
    if is_tensor(array) and array.device.type != "cpu" and array.dim() in (2, 3) and plain:
        from .metric import TensorActivity  # it imports torch (seconds), loaded already for a tensor on a device

        shape = tuple(array.shape)  # counted where it lies: no copy to the host
        components = shape[1] if len(shape) == 3 else None
        on_device = TensorActivity(shape[-1], components, fire_above=options.fire_above, name=name)
        on_device.update(array)
        return on_device.activity()
    dtype, bits = raw_bits(array)
    if bits.ndim < 2:
        raise BadOption("array", f"shape {list(bits.shape)}", "has no batch axis: need [N, F] or [..., C, F]")
    names, num_rows, num_features = component_layout(name, tuple(bits.shape), flatten)
    rows = np.ascontiguousarray(bits).reshape(num_rows, len(names) * num_features)
    rule = fire_rule(dtype, options.fire_above)
    counter = make_counter(rule, rows.shape[1], resolve_device(options.device), options.kernel, track_last, stats)
    counter.update(rows)
    states = counter.result()
    activity = NeuronActivity(options.fire_above)
    for i, component in enumerate(names):
        part = slice(i * num_features, (i + 1) * num_features)
        activity.add_states(component, state.select(states, part), num_rows)
    return activity


def raw_bits(array: object) -> tuple[str, np.ndarray]:
    """The dtype name and the raw bits (as unsigned integers) of a numpy array or torch tensor."""
    if isinstance(array, np.ndarray):
        dtype = NUMPY_NAMES.get(array.dtype.name)
        if dtype is None:
            raise BadOption("array", f"dtype {array.dtype}", "cannot be counted")
        return dtype, np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
    if is_tensor(array):
        dtype = TORCH_NAMES.get(str(array.dtype).removeprefix("torch."))
        if dtype is None:
            raise BadOption("array", f"dtype {array.dtype}", "cannot be counted")
        bits = signed_bits(array.detach().cpu().contiguous()).numpy()
        return dtype, bits.view(f"u{array.element_size()}")
    raise BadOption("array", f"of type {type(array).__name__}", "cannot be counted: pass a numpy array or torch tensor")
