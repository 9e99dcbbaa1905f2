"""The scan: plan the shards (headers only, SAEs bound), count every slab with the engine,
and gather the counts into a NeuronActivity, with what counted them and warnings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import state
from .activity import NeuronActivity
from .arrays import count_array as count_array
from .arrays import raw_bits as raw_bits  # the "x as x" imports: names moved elsewhere, still importable here
from .devices import resolve_device
from .engine import ProgressCallback, count_slabs
from .errors import BadInput, BadOption
from .options import CountOptions
from .remote.objects import session
from .sources.base import ShardPath, to_path
from .sources.discovery import discover
from .sources.planning import ScanPlan, plan_scan

if TYPE_CHECKING:
    from .digests import Blocks  # an audit's: it passes one in
    from .sae import Sae

__all__ = ["ProgressCallback", "ScanResult", "count", "device_for", "plan_for", "scan"]


@dataclass
class ScanResult:
    activity: NeuronActivity
    plan: ScanPlan
    device: str
    kernel: str  # what counted: native, numpy or torch (sparse caches: numpy)
    warnings: list[str] = field(default_factory=list)


def scan(
    paths: Sequence[ShardPath | str],
    *,
    on_plan: Callable[[ScanPlan], None] | None = None,
    on_progress: ProgressCallback | None = None,
    options: CountOptions | None = None,
    **settings_given: Any,
) -> ScanResult:
    """Count how often every neuron fires in the shards under ``paths``.

    ``options`` (or, one by one, the settings of ``CountOptions``: ``fire_above``, ``device``,
    ``track_last``, ...; ``device`` defaults to cpu here) say what to count and how. Reads the
    headers of every shard first (so shape and format errors come before any counting), then
    counts; ``on_plan`` sees the plan before counting. Parts and audits: ``pipeline.run_scan``.
    """
    if options is None:
        options = CountOptions(**{"device": "cpu", **settings_given})
    device = device_for(options)
    with session():
        plan = plan_for(discover([to_path(p) for p in paths], options.input_format), options)
        if on_plan is not None:
            on_plan(plan)
        return count(plan, options, device, on_progress)


def device_for(options: CountOptions, requested: str | None = None) -> str:
    """The device a scan counts on: ``requested`` (default ``options.device``) resolved to one
    that is present, once per scan; SAEs multiply in bf16/fp16 only on a GPU."""
    device = resolve_device(requested or options.device)
    if options.saes and device == "cpu" and options.sae_dtype != "float32":
        raise BadOption("sae_dtype", options.sae_dtype, "is for a GPU: on the cpu SAEs encode in float32")
    return device


def plan_for(shards: dict[ShardPath, str], options: CountOptions) -> ScanPlan:
    """The plan of ``shards`` under ``options`` (headers only; and the SAEs' checkpoints, whose
    latents are then what is counted)."""
    with session():
        plan = plan_scan(
            shards,
            options.keys,
            options.flatten,
            component_axis=options.component_axis,
            group_by=options.group_by,
            saes=_load_saes(options),
            num_latents=options.num_latents,
            num_vectors=options.num_vectors,
            partial=options.partial_latents,
        )
    if options.skip_positions:
        _check_positions(plan, options.skip_positions)
    return plan


def _load_saes(options: CountOptions) -> list[tuple[str | None, Sae, str]]:
    """The SAEs asked for, each with the component it is asked to encode and its name."""
    if not options.saes:
        return []
    from . import sae  # only scans with SAEs load their code and the zip reader it needs (~6 ms)

    return sae.load_saes(options.saes)


def _check_positions(plan: ScanPlan, skip: tuple[int, ...]) -> None:
    """Positions can be skipped only where every tensor counted says what its positions are."""
    for slab in plan.slabs:
        shape = list(slab.entry.shape)
        if slab.positions is None:
            raise BadInput(
                slab.path,
                f"tensor {slab.entry.key!r} of shape {shape} does not say which rows are which positions "
                "(a [batch, position, d] tensor, an Arrow cache of sequences or a delphi cache does): nothing can be skipped",
            )
        if skip[-1] >= slab.positions:
            raise BadOption(
                "skip_positions",
                skip[-1],
                f"is beyond the {slab.positions} positions of {slab.entry.key!r} ({slab.path})",
            )
        if len(skip) == slab.positions:
            raise BadOption(
                "skip_positions",
                ",".join(map(str, skip)),
                f"leaves none of the {slab.positions} positions of {slab.entry.key!r}",
            )


def count(
    plan: ScanPlan,
    options: CountOptions,
    device: str,
    on_progress: ProgressCallback | None = None,
    blocks: Blocks | None = None,
) -> ScanResult:
    """Count the slabs of ``plan`` on ``device`` (already resolved); ``on_progress(path, nbytes)``
    is called from the counting threads; ``blocks`` collects the digests of the files' blocks
    as they are counted. An object of a store that changed since it was planned is an error."""
    with session() as remote:
        totals, kernel = count_slabs(plan, options, device, on_progress, blocks)
        if plan.objects:
            remote.check_unchanged(plan.objects)
    activity = NeuronActivity(options.fire_above)
    for group in plan.groups.values():
        states, num_vectors = totals[group.key]
        for name, part in group.spans():
            activity.add_states(name, state.select(states, part), num_vectors)
            activity.components[name].first_neuron = group.first_neuron
        for bound in plan.saes.get(group.key, ()):
            activity.components[bound.name].sae = bound.sae.as_dict()
    for c in activity.components.values():
        if c.num_vectors and int(c.fire_counts.max(initial=0)) > c.num_vectors:
            i = int(np.argmax(c.fire_counts))
            where = plan.sources().get(c.name, [""])
            raise BadInput(
                where[0] if len(where) == 1 else c.name,
                f"neuron {i + c.first_neuron} fired {int(c.fire_counts[i])} times in {c.num_vectors} vectors: "
                "the cache stores some entries twice",
            )
    warnings = list(plan.warnings)
    for c in activity.components.values():
        if c.nan_count:
            having = np.flatnonzero(c.nan_counts > 0)
            shown = ", ".join(str(i + c.first_neuron) for i in having[:5]) + (", ..." if len(having) > 5 else "")
            warnings.append(
                f"component {c.name!r}: {c.nan_count} NaN value(s) in {len(having)} "
                f"neuron(s) ({shown}), counted as not firing"
            )
    return ScanResult(activity, plan, device, kernel, warnings)
