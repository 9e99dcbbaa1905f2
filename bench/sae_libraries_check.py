"""By hand, not in the tests: nact's --sae counts against the libraries' own encode.

SAEs of SAELens (standard, jumprelu, topk with and without rescaling, gated, layer_norm and
constant_norm_rescale inputs) and sparsify (topk, groupmax) are made and saved by the libraries
themselves, with random weights; nact scans a random cache with each, and the exact int64 counts of
``encode(x) > 0`` from the library are compared per latent. Where they differ, the float64 margin
of the latent's closest decision is printed (within float32 rounding means nact and the library
rounded differently, not that either is wrong).

    python -m venv /tmp/libvenv && /tmp/libvenv/bin/pip install torch==2.13.0 && \
        /tmp/libvenv/bin/pip install sae-lens eai-sparsify
    /tmp/libvenv/bin/python bench/sae_libraries_check.py     # nact: the .venv of this checkout
"""

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

root = Path(tempfile.mkdtemp(prefix="nact-sae-check-"))
NACT = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nact")
torch.manual_seed(0)
d_in, d_sae, n = 64, 512, 20000
x = torch.randn(n, d_in) * (1 + torch.rand(n, 1))
hook = "blocks.4.hook_resid_post"
(root / "cache").mkdir()
save_file({hook: x.contiguous()}, str(root / "cache" / "a.safetensors"))

from sae_lens import SAE
from sae_lens.saes import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata


def randomize(sae):
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(
                torch.randn_like(p) * (0.3 if p.ndim == 2 else 0.5)
                - (0.6 if name.startswith("b_") and p.shape[0] == d_sae else 0)
            )
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(d_sae) * 0.5)
    return sae


saes = {}
differing = []
for name, cls, cfg_cls, extra in [
    ("standard", StandardSAE, StandardSAEConfig, {}),
    ("jumprelu", JumpReLUSAE, JumpReLUSAEConfig, {}),
    ("topk", TopKSAE, TopKSAEConfig, {"k": 16}),
    ("topk_rescaled", TopKSAE, TopKSAEConfig, {"k": 16, "rescale_acts_by_decoder_norm": True}),
    ("gated", GatedSAE, GatedSAEConfig, {}),
    ("layer_norm", StandardSAE, StandardSAEConfig, {"normalize_activations": "layer_norm"}),
    ("constant_norm", JumpReLUSAE, JumpReLUSAEConfig, {"normalize_activations": "constant_norm_rescale"}),
]:
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook), **extra)
    sae = randomize(cls(cfg))
    sae.save_model(root / name)
    loaded = SAE.load_from_disk(root / name)
    saes[name] = ("saelens", loaded)


from sparsify import SparseCoder, SparseCoderConfig

for name, extra in [("sparsify_topk", {"k": 16}), ("sparsify_groupmax", {"k": 16, "activation": "groupmax"})]:
    coder = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, **extra))
    with torch.no_grad():
        coder.encoder.weight.copy_(torch.randn_like(coder.encoder.weight) * 0.3)
        coder.encoder.bias.copy_(torch.randn(d_sae) * 0.5 - 0.6)
        coder.b_dec.copy_(torch.randn(d_in) * 0.2)
    folder = root / name / hook
    coder.save_to_disk(folder)
    saes[name] = ("sparsify", SparseCoder.load_from_disk(folder))

for name, (lib, sae) in saes.items():
    with torch.no_grad():
        if lib == "saelens":
            acts = torch.cat([sae.encode(x[i : i + 4096]) for i in range(0, n, 4096)])
        else:
            outs = [sae.encode(x[i : i + 4096]) for i in range(0, n, 4096)]
            acts = torch.zeros(n, d_sae)
            row = 0
            for o in outs:
                m = o.top_acts.shape[0]
                acts[row : row + m].scatter_(1, o.top_indices, o.top_acts)
                row += m
    lib_counts = (acts > 0).sum(0).numpy()
    path = root / name if lib == "saelens" else root / name / hook
    out = subprocess.run(
        [
            NACT,
            "scan",
            str(root / "cache"),
            "--sae",
            f"{hook}={path}",
            "-f",
            "json",
            "--save-counts",
            str(root / f"{name}.counts.safetensors"),
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    from safetensors.numpy import load_file

    t = load_file(str(root / f"{name}.counts.safetensors"))
    key = [k for k in t if k.endswith("/fire_counts")][0]
    nact_counts = t[key]
    diff = nact_counts - lib_counts
    maxs = t[key.replace("fire_counts", "act_max")]
    lib_max = acts.max(0).values.numpy()
    if (diff != 0).any():
        differing.append(name)
    print(
        f"{name:18s} latents differing: {(diff != 0).sum():4d}/{d_sae}, decisions differing: {np.abs(diff).sum():4d} "
        f"of {n * d_sae:,}; max |act_max diff| {np.abs(maxs - lib_max).max():.2e}"
    )

# where they differ: how far from the boundary in float64 (worked out here for these two)
for name in [d for d in differing if d in ("gated", "constant_norm")]:
    sae = saes[name][1]
    x64 = x.double()
    with torch.no_grad():
        acts = torch.cat([sae.encode(x[i : i + 4096]) for i in range(0, n, 4096)])
        if name == "gated":
            gate = (x64 - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_gate.double()
            mag = (x64 - sae.b_dec.double()) @ (sae.W_enc.double() * sae.r_mag.double().exp()) + sae.b_mag.double()
            margin = torch.minimum(gate.abs(), mag.abs())
        else:
            xn = x64 * (d_in**0.5) / x64.norm(dim=-1, keepdim=True)
            h = (xn - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()
            margin = torch.minimum((h - sae.threshold.double()).abs(), h.abs())

    t = load_file(str(root / f"{name}.counts.safetensors"))
    nact_counts = t[[k for k in t if k.endswith("/fire_counts")][0]]
    j = int(np.flatnonzero(nact_counts - (acts > 0).sum(0).numpy())[0])
    print(name, "latent", j, "smallest float64 margin of its decisions:", float(margin[:, j].min()))
