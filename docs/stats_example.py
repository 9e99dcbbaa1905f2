"""The worked example of docs/stats.md: a cache of activations with two outlier dimensions, and
two SAELens SAEs with the same random encoder, one that reads the activations as they are and one
that subtracts their mean first (its ``b_dec``).

    python docs/stats_example.py example/
    nact scan example/cache --stats
    nact scan example/cache --sae example/sae_raw --sae example/sae_centred --stats -t 0

Needs numpy and safetensors (nact's own dependencies); the same folder every run (seeded).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

D_IN, D_SAE, VECTORS, SHARDS = 64, 512, 20_000, 4
HOOK = "blocks.5.hook_resid_post"


def main(folder: Path) -> None:
    rng = np.random.default_rng(26)
    mean = rng.standard_normal(D_IN) * 0.1
    mean[7], mean[41] = 30.0, -20.0  # two outlier dimensions, as residual streams have
    spread = 0.5 + rng.random(D_IN)
    x = (mean + rng.standard_normal((VECTORS, D_IN)) * spread).astype(np.float32)
    (folder / "cache").mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(x, SHARDS)):
        save_file({HOOK: part}, str(folder / "cache" / f"shard_{i:03d}.safetensors"))
    w_enc = (rng.standard_normal((D_IN, D_SAE)) / np.sqrt(D_IN)).astype(np.float32)
    for name, b_dec in (("sae_raw", np.zeros(D_IN)), ("sae_centred", x.mean(axis=0))):
        sae = folder / name
        sae.mkdir(exist_ok=True)
        weights = {
            "W_enc": w_enc,
            "b_enc": np.zeros(D_SAE, np.float32),
            "W_dec": np.ascontiguousarray(w_enc.T),
            "b_dec": b_dec.astype(np.float32),
        }
        save_file(weights, str(sae / "sae_weights.safetensors"))
        cfg = {
            "architecture": "standard",
            "d_in": D_IN,
            "d_sae": D_SAE,
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "metadata": {"hook_name": HOOK, "sae_lens_version": "6.5.1"},
        }
        (sae / "cfg.json").write_text(json.dumps(cfg))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "example"))
