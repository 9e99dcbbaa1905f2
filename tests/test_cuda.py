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
