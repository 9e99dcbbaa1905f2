"""OpenAI ``sparse_autoencoder`` checkpoints (its GPT-2 small SAEs, such as
``resid_post_mlp_v5_32k/autoencoders/6.pt``): one ``torch.save`` of ``Autoencoder.state_dict()``,
read without running its pickle. The state dict holds ``encoder.weight`` [n_latents, n_inputs],
``pre_bias`` [n_inputs], ``latent_bias`` [n_latents], ``decoder.weight`` and training statistics,
and says its activation by name: ``activation`` (``"TopK"``, ``"ReLU"``; absent in v1 and v4
files: ReLU) and ``activation_state_dict`` (TopK's ``k`` and ``postact_fn``).

The encode, as ``Autoencoder.from_state_dict`` restores it and ``Autoencoder.encode`` runs it:
``h = (x' - pre_bias) @ encoder.weight.T + latent_bias``, then

- TopK (``postact_fn`` ReLU): the top ``k`` of ``h``, relu; ``x'`` is ``x`` layer-normed
  (``x - mean``, divided by its unbiased std + 1e-5), which ``from_state_dict`` turns on exactly
  when the activation is TopK (the flag is not stored);
- ReLU: ``relu(h)``, ``x' = x``; an activation name the library does not know is read as ReLU,
  as ``from_state_dict`` does, and a scan says so.

The file names no hook (its folder names the site and the file the layer): the SAE is bound to a
component with ``--sae COMPONENT=PATH``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..sources.torch_zip import TensorRef
from . import files, unpickle
from .model import Sae

LIBRARY = "OpenAI sparse_autoencoder"
KEYS = ("encoder.weight", "pre_bias", "latent_bias")  # what tells its state dict from others'
ACTIVATIONS = ("ReLU", "TopK", "Identity")  # the names Autoencoder.from_state_dict knows
REFUSAL = "an OpenAI sparse_autoencoder state dict holds only tensors, strings and numbers"


def recognizes(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` file of an OpenAI autoencoder's state dict: its pickle
    names ``encoder.weight``, ``pre_bias`` and ``latent_bias`` (only its opcodes are read)."""
    names = unpickle.names(path)
    return names is not None and set(KEYS) <= names.strings


def read_file(path: Path) -> Sae:
    """The SAE of an OpenAI ``sparse_autoencoder`` checkpoint file."""
    pickled = unpickle.load(path, {}, REFUSAL)
    state = pickled.root
    if not isinstance(state, dict) or not all(isinstance(state.get(key), TensorRef) for key in KEYS):
        raise BadInput(
            path,
            "not an OpenAI sparse_autoencoder state dict (no tensors encoder.weight, pre_bias and latent_bias)",
        )
    encoder = state["encoder.weight"]
    if len(encoder.size) != 2:
        raise BadInput(path, f"tensor 'encoder.weight' has shape {list(encoder.size)}, expected [n_latents, n_inputs]")
    d_sae, d_in = encoder.size
    refs = pickled.refs(state, {"encoder.weight": (d_sae, d_in), "pre_bias": (d_in,), "latent_bias": (d_sae,)})
    weight, pre_bias, latent_bias = (pickled.array(ref, key) for ref, key in zip(refs, KEYS))
    activation = state.get("activation", "ReLU")
    if not isinstance(activation, str):
        raise BadInput(path, f"activation is {activation!r}, not the name of an activation")
    notes: list[str] = []
    if activation not in ACTIVATIONS:
        notes.append(f"SAE {path}: activation {activation!r} is not one the library knows: read as ReLU, as it does")
    common: dict[str, Any] = dict(
        path=path,
        library=LIBRARY,
        architecture=activation,
        hook=None,
        d_in=d_in,
        d_sae=d_sae,
        weight=weight.T,
        bias=latent_bias,
        center=pre_bias,
        notes=tuple(notes),
    )
    if activation == "Identity":
        raise BadInput(
            path, "activation Identity (signed latents, no sparsity): nact encodes ReLU and TopK autoencoders"
        )
    if activation != "TopK":
        return Sae(**common, rule="relu")
    k, postact = _top_k(pickled, state)
    if postact != "ReLU":
        raise BadInput(
            path, f"TopK with postact_fn {postact!r}: nact encodes TopK autoencoders whose postact_fn is ReLU"
        )
    return Sae(**common, rule="topk", k=files.top_k(path, k, d_sae), normalize="layer_norm")


def _top_k(pickled: unpickle.Pickled, state: dict[object, object]) -> tuple[object, object]:
    """TopK's ``k`` and ``postact_fn`` from ``activation_state_dict``, else from the
    ``activation.k`` and ``activation.postact_fn`` that ``Autoencoder.state_dict`` also writes;
    a one-number tensor ``k`` is read as its number."""
    options = state.get("activation_state_dict")
    if not isinstance(options, dict):
        options = {}
    k = options.get("k", state.get("activation.k"))
    postact = options.get("postact_fn", state.get("activation.postact_fn"))
    if isinstance(k, TensorRef) and len(k.size) == 0:
        value = float(pickled.array(k, "k"))
        k = int(value) if value.is_integer() else value
    return k, postact
