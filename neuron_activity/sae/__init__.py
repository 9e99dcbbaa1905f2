"""SAE checkpoints read without their libraries, and their encoders.

A checkpoint of SAELens (``cfg.json`` + ``sae_weights.safetensors``), EleutherAI sparsify
(``cfg.json`` + ``sae.safetensors``), saprmarks/dictionary_learning (``config.json`` + ``ae.pt``),
Gemma Scope (``params.npz``; ``params.safetensors`` + ``config.json``), Llama Scope
(``hyperparams.json`` + ``checkpoints/final.safetensors``), OpenAI's and the ai-safety-foundation
``sparse_autoencoder`` (one ``.pt`` file) is read by its family's module into one ``Sae``: the
encoder's weights in float32 and the rule that turns a pre-activation into a latent. Every
architecture is one of a few rules (the library's own ``encode``, as a formula;
``h = x' @ W + b`` where ``x'`` is the input after the library's scaling, normalisation and
decoder-bias subtraction):

- ``relu``: ``relu(h)``; ``tanh-relu``: ``tanh(relu(h))`` (SAELens < 6).
- ``jumprelu``: ``relu(h)`` where ``h > threshold`` (per latent), else 0.
- ``threshold``: ``relu(h)`` where ``relu(h) > threshold`` (one number), else 0: the inference
  rule of dictionary_learning's BatchTopK SAEs.
- ``topk``: the ``k`` largest of ``h`` per vector keep ``relu`` of their value, the rest are 0.
- ``abstopk``: the ``k`` of largest ``abs(h)`` keep ``abs(h)`` (SAELens' AbsTopK, whose latents
  are signed: nact counts their magnitude).
- ``groupmax``: sparsify's variant: the largest of each of ``k`` equal groups of latents.
- ``gated``: ``relu(h * exp(r_mag) + b_mag)`` where ``h + b_gate > 0``, else 0.

Around the rule: ``h`` times the decoder norms before it (``pre_scale``: SAELens'
``rescale_acts_by_decoder_norm``), the latents times a scale after it (``post_scale``:
dictionary_learning's ``normalize_decoder``), and an attention SAE's ``[..., heads, d_head]``
input merged (``reshape``).

Nothing of a checkpoint runs: JSON, safetensors and ``.npz`` files are parsed, and ``.pt`` files
are read by the restricted unpickler of ``sources.torch_zip`` (or
``torch.load(weights_only=True)``).

Modules: ``model`` (the ``Sae``), ``files`` and ``unpickle`` (reading a checkpoint's files), one
per family (``saelens``, ``sparsify``, ``dictionary_learning``, ``gemma_scope``, ``llama_scope``,
``openai``, ``ai_safety_foundation``), ``load`` (which family a path is), ``encode`` (the rules,
numpy and torch) and ``counter`` (counting the latents). Binding an SAE to the component it
encodes is part of planning (``sources.planning``).
"""

from .counter import SaeCounter, TorchSaeCounter, sae_counter
from .encode import NumpyEncoder, TorchEncoder, batch_rows
from .load import load_sae, load_saes
from .model import RULES, Sae

__all__ = [
    "RULES",
    "NumpyEncoder",
    "Sae",
    "SaeCounter",
    "TorchEncoder",
    "TorchSaeCounter",
    "batch_rows",
    "load_sae",
    "load_saes",
    "sae_counter",
]
