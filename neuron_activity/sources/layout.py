"""How a tensor's axes are read: which axis holds components, which are batch axes, and when
nact must ask (a layout it cannot know is a one-line question, never a silent guess)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import AxisProblem

MAX_COMPONENTS = 64  # a longer axis before the features is positions, not components


@dataclass(frozen=True)
class Layout:
    """How a tensor is counted: component names, vectors and features per component; whether
    its first axis is the component axis (each component then a block of its own); a note."""

    names: tuple[str, ...]
    num_rows: int
    num_features: int
    first_axis: bool = False
    note: str | None = None  # how its axes were read, where nact read a layout it was not told (one per kind)
    positions: int | None = None  # vectors are sequences of this many positions, when known


HEAD_HOOKS = frozenset({"hook_q", "hook_k", "hook_v", "hook_z", "hook_result", "hook_rot_q", "hook_rot_k"})
PATTERN_HOOKS = frozenset({"hook_pattern", "hook_attn_scores"})  # [batch, head, query, key]: not neurons


def last_part(key: str) -> str:
    """A key's last dotted (or slashed) part: a TransformerLens hook's name."""
    return key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]


def _looks_like_positions(key: str, shape: tuple[int, ...]) -> str | None:
    """Why the axis before the features of ``key`` holds positions, or None."""
    last = last_part(key)
    if len(shape) == 3 and last.startswith("hook_"):
        return "a TransformerLens hook's [batch, position, d] layout"
    if len(shape) == 3 and last == "states":
        return "activault's [batch, position, d] states"
    return None


def layout_of(
    name: str, key: str, shape: tuple[int, ...], flatten: bool = False, component_axis: int | None = None
) -> Layout:
    """The layout of a tensor of ``shape`` under ``key`` whose component is called ``name``.

    ``[N, F]`` is one component. ``[..., C, F]``: ``C`` is a component axis (the reference
    metric's ``[batch, component, feature]``) when it is at most ``MAX_COMPONENTS`` long; a
    size-1 axis gives one component. A TransformerLens hook or activault ``states`` tensor
    ``[batch, position, d]`` is flattened (positions are vectors), with a note; any other
    longer axis is an error that names the choices. ``flatten`` makes every axis before ``F``
    a batch axis; ``component_axis`` picks the component axis (0 or the one before ``F``).
    """
    features, ndim = shape[-1], len(shape)
    if ndim == 2 or flatten:  # flattened [batch, position, d]: axis 1 is taken as the positions
        return Layout((name,), math.prod(shape[:-1]), features, positions=shape[1] if ndim == 3 else None)
    if component_axis is not None:
        axis = component_axis + ndim if component_axis < 0 else component_axis
        if not 0 <= axis <= ndim - 2:
            raise AxisProblem(name, shape, f"has no axis {component_axis} before its features")
        if axis == 0 and ndim > 2 and axis != ndim - 2:
            count = shape[0]
            return Layout(
                tuple(f"{name}[{i}]" for i in range(count)), math.prod(shape[1:-1]), features, first_axis=True
            )
        if axis != ndim - 2:
            raise AxisProblem(
                name, shape, f"component axis {component_axis}: nact takes axis 0 or the axis before the features"
            )
        return Layout(tuple(f"{name}[{i}]" for i in range(shape[-2])), math.prod(shape[:-2]), features)
    count = shape[-2]
    positions = _looks_like_positions(key, shape)
    if positions:
        return Layout((name,), math.prod(shape[:-1]), features, note=positions, positions=count)
    if ndim == 4 and last_part(key) in HEAD_HOOKS:  # a component per head, its positions flattened
        note = "a TransformerLens attention hook's [batch, position, head, d_head] layout (a component per head)"
        names = tuple(f"{name}[{i}]" for i in range(count))
        return Layout(names, math.prod(shape[:-2]), features, note=note, positions=shape[1])
    if ndim > 3 and math.prod(shape[1:-1]) > 1:  # [layer, batch, pos, d], [batch, pos, heads, d_head], ...
        raise AxisProblem(
            name,
            shape,
            f"has {ndim - 2} axes between its first and its features: nact cannot tell which holds components "
            "(a stack of layers, heads) and which vectors: pick the component axis, or flatten them all",
            options=("flatten", "component_axis"),
        )
    if count == 1:
        return Layout((name,), math.prod(shape[:-2]), features)
    if count > MAX_COMPONENTS:
        raise AxisProblem(
            name,
            shape,
            f"axis {ndim - 2} has {count} entries, too many for a component axis (at most {MAX_COMPONENTS}): "
            "flatten it (its entries are positions or tokens) or pick the component axis",
            options=("flatten", "component_axis"),
        )
    return Layout(tuple(f"{name}[{i}]" for i in range(count)), math.prod(shape[:-2]), features)


def heads_merged(name: str, shape: tuple[int, ...]) -> Layout:
    """The layout of an attention ``hook_z`` tensor ``[..., heads, d_head]`` an SAE encodes with
    its heads merged: ``heads * d_head`` features per vector (row-major, as einops merges them)."""
    positions = shape[1] if len(shape) == 4 else None  # [batch, position, heads, d_head]
    return Layout((name,), math.prod(shape[:-2]), shape[-2] * shape[-1], positions=positions)


def component_layout(key: str, shape: tuple[int, ...], flatten: bool) -> tuple[tuple[str, ...], int, int]:
    """Component names, number of rows and features of a tensor of ``shape`` under ``key``."""
    layout = layout_of(key, key, shape, flatten)
    return layout.names, layout.num_rows, layout.num_features
