"""For random arrays, dtypes, chunk sizes and thresholds, nact's rows (and the last vector each
neuron fired on, and the moments of the values) equal a plain numpy count, on every kernel."""

from __future__ import annotations

import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    TORCH_DTYPES,
    as_float64,
    assert_moments,
    dead_count,
    fire_counts,
    greater_than,
    random_activations,
    write_shard,
)

from neuron_activity import Threshold, scan

thresholds = st.sampled_from(["0", "1e-5", "1e-6", "0.001", "0.01", "0.1", "0.25", "0.5", "1"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(list(TORCH_DTYPES)),
    shard_rows=st.lists(st.integers(0, 300), min_size=1, max_size=4).filter(lambda r: sum(r) > 0),
    num_features=st.integers(1, 40),
    components=st.sampled_from([None, 1, 3]),
    chunk_rows=st.one_of(st.none(), st.integers(1, 400)),
    fire_above=st.sampled_from(["0", "1e-5", "0.5", "-0.25"]),
    chosen=st.lists(thresholds, min_size=1, max_size=4, unique=True),
    seed=st.integers(0, 2**32 - 1),
    kernel=st.sampled_from(["native", "numpy", "torch"]),
    threads=st.integers(1, 3),
)
def test_rows_equal_numpy_reference(
    dtype, shard_rows, num_features, components, chunk_rows, fire_above, chosen, seed, kernel, threads
) -> None:
    rng = np.random.default_rng(seed)
    shape_tail = (num_features,) if components is None else (components, num_features)
    shards = [random_activations(rng, (rows, *shape_tail), dtype) for rows in shard_rows]
    with tempfile.TemporaryDirectory() as folder:
        for i, x in enumerate(shards):
            write_shard(Path(folder) / f"{i:02d}.safetensors", {"acts": x})
        result = scan(
            [folder],
            fire_above=fire_above,
            chunk_rows=chunk_rows,
            kernel=kernel,
            threads=threads,
            track_last=True,
            stats=True,  # the moments are kept in the same pass: the counts must not change
        )
    rows = result.activity.rows([Threshold.parse(t) for t in chosen])

    values = np.concatenate([as_float64(x) for x in shards])
    n = values.shape[0]
    per_component = (
        [("acts", values.reshape(n, -1))]
        if components in (None, 1)  # a component axis of size 1 is one component
        else [(f"acts[{c}]", values[:, c, :]) for c in range(components)]
    )
    expected = []
    for name, v in per_component:
        counts = fire_counts(v, Fraction(fire_above))
        fires = greater_than(v, Fraction(fire_above))
        last = np.where(fires, np.arange(n)[:, None], -1).max(axis=0, initial=-1)
        assert result.activity.components[name].last_fired.tolist() == last.tolist(), name
        assert_moments(result.activity.components[name].states, v)
        for t in chosen:
            dead = dead_count(counts, n, t)
            expected.append((name, t, dead, num_features - dead, num_features, n, dead / num_features))
    got = [
        (r.component, r.threshold.text, r.dead, r.alive, r.num_features, r.num_vectors, r.dead_fraction) for r in rows
    ]
    assert got == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.integers(1, 6),
    positions=st.integers(1, 9),
    latents=st.integers(1, 70),
    splits=st.integers(1, 4),
    location_dtype=st.sampled_from(["uint16", "uint32", "int32", "int64"]),
    value_dtype=st.sampled_from(["float16", "float32", "bfloat16"]),
    fire_above=st.sampled_from(["0", "1e-5", "0.5", "-0.25"]),
    density=st.floats(0.0, 1.0),
    nan=st.booleans(),
    bad=st.sampled_from([None, "latent", "batch", "position"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_delphi_kernels_equal_numpy_reference(
    batches, positions, latents, splits, location_dtype, value_dtype, fire_above, density, nan, bad, seed
) -> None:
    """A sparse cache counted by the C kernel and by numpy: the same counts as the dense array,
    and the same error naming the same entry when one is out of range."""
    import torch
    from safetensors.torch import save_file

    from neuron_activity import BadInput

    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((batches, positions, latents)) * (rng.random((batches, positions, latents)) < density)
    if nan:
        dense[rng.integers(batches), rng.integers(positions), rng.integers(latents)] = np.nan
    bounds = np.linspace(0, latents, min(splits, latents) + 1).astype(int)
    values = torch.from_numpy(dense.astype(np.float32)).to(getattr(torch, value_dtype))
    with tempfile.TemporaryDirectory() as folder:
        module = Path(folder) / "layers.1.mlp"
        module.mkdir()
        for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            b, p, latent = np.nonzero(np.asarray(values[:, :, start:end].float().numpy() != 0))
            where = np.stack([b, p, latent], axis=1)
            if bad is not None and i == 0 and len(where):
                column, value = {"latent": (2, end - start), "batch": (0, batches), "position": (1, positions)}[bad]
                where[len(where) // 2, column] = value
            save_file(
                {
                    "locations": torch.from_numpy(where.astype(location_dtype)),
                    "activations": values[:, :, start:end][b, p, latent].contiguous(),
                    "tokens": torch.zeros(batches, positions, dtype=torch.int64),
                },
                str(module / f"{start}_{end - 1}.safetensors"),
            )
        outcomes = []
        for kernel in ("native", "numpy"):
            try:
                c = scan([folder], fire_above=fire_above, kernel=kernel).activity.components["layers.1.mlp"]
                outcomes.append((c.fire_counts.tolist(), c.nan_counts.tolist(), c.num_vectors))
            except BadInput as e:
                outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]
    if isinstance(outcomes[0], str):
        assert bad is not None and "a location names" in outcomes[0]
        return
    stored = values.float().numpy().astype(np.float64).reshape(-1, latents)  # the stored (rounded) values
    kept = stored != 0  # what the cache stores; what it does not store never fires, whatever fire_above
    assert outcomes[0][0] == (greater_than(stored, Fraction(fire_above)) & kept).sum(axis=0).tolist()
    assert outcomes[0][1] == np.isnan(stored).sum(axis=0).tolist()
    assert outcomes[0][2] == batches * positions
