"""The cuda path, end to end against the reference. Skipped where no CUDA GPU is present."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import TORCH_DTYPES, as_float64, fire_counts, random_activations, write_shard

from neuron_activity import scan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
def test_cuda_scan_equals_reference(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(7)
    shards = [random_activations(rng, (rows, 3, 40), dtype) for rows in (1, 500, 0, 2000)]
    for i, x in enumerate(shards):
        write_shard(tmp_path / f"{i}.safetensors", {"acts": x})
    values = np.concatenate([as_float64(x) for x in shards])
    for fire_above in ("0", "1e-5", "-0.5"):
        for chunk_rows in (1, 7, 300, None):  # chunk sizes that grow and shrink the staging buffers
            for threads in (1, 2):
                activity = scan(
                    [tmp_path], device="cuda", fire_above=fire_above, chunk_rows=chunk_rows, threads=threads
                ).activity
                for c in range(3):
                    expected = fire_counts(values[:, c, :], Fraction(fire_above)).tolist()
                    assert activity.components[f"acts[{c}]"].fire_counts.tolist() == expected


def test_cuda_counts_nans(tmp_path: Path) -> None:
    x = torch.tensor([[float("nan"), 1.0], [2.0, float("nan")], [float("nan"), 0.0]], dtype=torch.bfloat16)
    write_shard(tmp_path / "a.safetensors", {"acts": x})
    c = scan([tmp_path], device="cuda").activity.components["acts"]
    assert c.fire_counts.tolist() == [1, 1]
    assert c.nan_counts.tolist() == [2, 1]


def test_auto_picks_cuda(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"acts": torch.ones(2, 2)})
    assert scan([tmp_path], device="auto").device == "cuda"


@pytest.mark.parametrize(
    "case",
    [
        "saelens-standard",
        "saelens-topk-rescaled",
        "saelens-gated",
        "sparsify-groupmax",
        "dl-batchtopk",
        "saelens-layer-norm",
    ],
)
def test_cuda_sae_latents_equal_the_formulas(tmp_path: Path, case: str) -> None:
    """SAE latents encoded on the GPU (float32): the same decisions as the float64 formulas away
    from boundaries, through the pinned double buffer, with the statistics."""
    from test_sae import CASES, activations, cache, expected_counts, sae_folder

    folder = sae_folder(tmp_path, case)
    arch = CASES[case](folder)
    x = activations(seed=4)
    data = cache(tmp_path / "cache", x)
    result = scan([data], saes=(str(folder),), device="cuda", chunk_rows=333, track_last=True)
    c = next(iter(result.activity.components.values()))
    sure, near, latents = expected_counts(arch, x)
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all() and (near == 0).mean() > 0.8
    exact = near == 0
    np.testing.assert_allclose(c.states["act_max"][exact], latents.max(0)[exact], rtol=1e-4, atol=1e-5)
    cpu = next(iter(scan([data], saes=(str(folder),), device="cpu").activity.components.values()))
    assert (np.abs(cpu.fire_counts - c.fire_counts) <= near).all()


def test_cuda_sae_in_bf16_is_close(tmp_path: Path) -> None:
    from test_sae import CASES, activations, cache, sae_folder

    folder = sae_folder(tmp_path, "saelens-standard")
    CASES["saelens-standard"](folder)
    data = cache(tmp_path / "cache", activations(seed=4))
    f32 = next(iter(scan([data], saes=(str(folder),), device="cuda").activity.components.values()))
    bf16 = next(
        iter(scan([data], saes=(str(folder),), device="cuda", sae_dtype="bfloat16").activity.components.values())
    )
    assert np.abs(bf16.fire_counts - f32.fire_counts).max() <= 0.02 * len(activations(seed=4))
