"""Writes the sample shards: 4 shards x 25,000 vectors, two components, known dead neurons.

Run from the repository root: python sample_data/make_sample_data.py (needs torch and safetensors).

blocks.0.hook_sae_acts, [100000, 8] bfloat16:
  neuron 0 never fires (all zeros), neuron 1 is only ever negative or zero,
  neuron 2 fires exactly once, neuron 3 exactly twice, neurons 4-7 fire on about 5% of vectors.
blocks.1.hook_sae_acts, [100000, 6] float16:
  neuron 5 never fires, neuron 4 fires exactly once (on 6e-8, the smallest float16 above 0),
  neurons 0-3 fire on about 10% of vectors.

With 100,000 vectors, threshold 1e-5 allows floor(1e-5 x 100000) = 1 fire and 1e-6 allows 0, so:
  blocks.0.hook_sae_acts: dead 2 at 0, 3 at 1e-5, 2 at 1e-6
  blocks.1.hook_sae_acts: dead 1 at 0, 2 at 1e-5, 1 at 1e-6
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

SHARDS, ROWS = 4, 25_000
HERE = Path(__file__).parent


def main() -> None:
    rng = np.random.default_rng(20261127)
    n = SHARDS * ROWS
    layer0 = np.maximum(rng.standard_normal((n, 8)), 0) * (rng.random((n, 8)) < 0.05)
    layer0[:, 0] = 0
    layer0[:, 1] = -np.abs(rng.standard_normal(n)) * (rng.random(n) < 0.3)
    layer0[:, 2:4] = 0
    layer0[61_234, 2] = 0.5
    layer0[[7, 99_999], 3] = 1.25
    layer1 = np.maximum(rng.standard_normal((n, 6)), 0) * (rng.random((n, 6)) < 0.1)
    layer1[:, 4:6] = 0
    layer1[40_000, 4] = 6e-8
    for i in range(SHARDS):
        rows = slice(i * ROWS, (i + 1) * ROWS)
        save_file(
            {
                "blocks.0.hook_sae_acts": torch.from_numpy(layer0[rows]).to(torch.bfloat16),
                "blocks.1.hook_sae_acts": torch.from_numpy(layer1[rows]).to(torch.float16),
            },
            str(HERE / f"shard_{i:03d}.safetensors"),
        )


if __name__ == "__main__":
    main()
