"""SAE checkpoints read without their libraries, and their encoders.

A checkpoint folder of SAELens (``cfg.json`` + ``sae_weights.safetensors``), EleutherAI
sparsify (``cfg.json`` + ``sae.safetensors``) or saprmarks/dictionary_learning (``config.json``
+ ``ae.pt``) is read by its family's module into one ``Sae``: the encoder's weights in float32
and the rule that turns a pre-activation into a latent. Every architecture is one of a few
rules (the library's own ``encode``, as a formula; ``h = x' @ W + b`` where ``x'`` is the input
after the library's normalisation and decoder-bias subtraction):

- ``relu``: ``relu(h)`` (SAELens standard, dictionary_learning AutoEncoder); ``tanh-relu``:
  ``tanh(relu(h))`` (SAELens < 6 with ``activation_fn: tanh-relu``).
- ``jumprelu``: ``relu(h)`` where ``h > threshold`` (per latent), else 0.
- ``threshold``: ``relu(h)`` where ``relu(h) > threshold`` (one number), else 0: the inference
  rule of BatchTopK SAEs (dictionary_learning's ``encode(use_threshold=True)`` default; SAELens
  saves them as JumpReLU with that threshold).
- ``topk``: the ``k`` largest of ``h`` per vector (times the decoder row norms when SAELens'
  ``rescale_acts_by_decoder_norm`` is set) keep ``relu`` of their value, the rest are 0. A latent
  fires when it is among the top k and above ``fire_above``.
- ``groupmax``: sparsify's variant: the largest of each of ``k`` equal groups of latents.
- ``gated``: ``relu(h * exp(r_mag) + b_mag)`` where ``h + b_gate > 0``, else 0.


Nothing of a checkpoint runs: JSON and safetensors are parsed, and ``ae.pt`` is read by the
restricted reader of ``sources.torch_zip`` (or ``torch.load(weights_only=True)``).

Modules: ``model`` (the ``Sae``), ``files`` (reading a checkpoint's files), one per family
(``saelens``, ``sparsify``, ``dictionary_learning``), ``load`` (which family a folder is),
``encode`` (the rules, numpy and torch) and ``counter`` (counting the latents). Binding an SAE
to the component it encodes is part of planning (``sources.planning``).
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
