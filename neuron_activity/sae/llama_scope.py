"""Llama Scope checkpoints (OpenMOSS' SAEs of Llama 3.1 8B, trained with ``lm_saes``): a
folder such as ``Llama3_1-8B-Base-L15R-8x`` holding ``hyperparams.json`` and
``checkpoints/final.safetensors`` (``encoder.weight`` [d_sae, d_model], ``encoder.bias``,
``decoder.weight``, ``decoder.bias``).

They were trained on activations scaled to a norm of sqrt(d_model) on average
(``norm_activation: dataset-wise``, ``dataset_average_activation_norm``), with a JumpReLU of one
threshold for every latent. The encode, as SAELens' Llama Scope loader sets it up:
``x * s`` with ``s = sqrt(d_model) / dataset_average_activation_norm.in``, then
``relu(h)`` where ``h = x @ W_enc + b_enc > threshold * s``. The latents are in that training
space (``lm_saes`` itself divides them by ``s``: the same fires, other magnitudes). An SAE
normalised token-wise scales each vector to the norm sqrt(d_model) instead.

Where ``sparsity_include_decoder_norm`` is set and the decoder's columns are not of unit norm,
``lm_saes`` multiplies ``h`` by them before the threshold and SAELens does not; nact follows
``lm_saes``, the library that trained the SAE, and says so."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput
from ..json_files import read_json
from .files import SafetensorsWeights, flag, text, weights, whole
from .model import Sae

WEIGHTS = "checkpoints/final.safetensors"
UNIT = 1e-4  # decoder columns whose norms are all this close to 1 are taken as of unit norm


def read(folder: Path, path: Path | None = None) -> Sae:
    """The SAE of a Llama Scope folder (``hyperparams.json``, ``checkpoints/final.safetensors``),
    or of another of its ``checkpoints/`` files ``path``."""
    cfg_path = folder / "hyperparams.json"
    cfg = read_json(cfg_path)
    path = path or folder / WEIGHTS
    d_in = whole(cfg_path, cfg, "d_model")
    d_sae = whole(cfg_path, cfg, "d_sae", d_in * whole(cfg_path, cfg, "expansion_factor", 128))
    activation = cfg.get("act_fn", "relu")
    if activation not in ("jumprelu", "relu"):
        raise BadInput(
            cfg_path, f"act_fn {activation!r}: nact encodes the released Llama Scope SAEs (jumprelu) and relu ones"
        )
    if flag(cfg_path, cfg, "use_glu_encoder", False):
        raise BadInput(cfg_path, "use_glu_encoder: nact does not encode gated-linear-unit encoders")
    tensors = SafetensorsWeights(path)
    w_enc, b_enc = weights(path, tensors, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,)})
    norm = cfg.get("norm_activation", "token-wise")
    scale = _scale(cfg_path, cfg, d_in) if norm == "dataset-wise" else None
    if norm not in ("dataset-wise", "token-wise", "inference"):
        raise BadInput(cfg_path, f"norm_activation {norm!r} is not dataset-wise, token-wise or inference")
    theta = cfg.get("jump_relu_threshold", 0.0) if activation == "jumprelu" else 0.0
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta):
        raise BadInput(cfg_path, f"jump_relu_threshold is {theta!r}, not a number")
    center = None
    if flag(cfg_path, cfg, "apply_decoder_bias_to_pre_encoder", True):  # subtracted in the scaled space
        (center,) = weights(path, tensors, {"decoder.bias": (d_in,)})
    pre_scale = None
    notes: tuple[str, ...] = ()
    if flag(cfg_path, cfg, "sparsity_include_decoder_norm", True):
        (w_dec,) = weights(path, tensors, {"decoder.weight": (d_in, d_sae)})
        norms = np.asarray(np.linalg.norm(w_dec, axis=0), np.float32)
        if np.abs(norms - 1).max(initial=0) > UNIT:
            pre_scale = norms
            notes = (
                f"SAE {folder}: its decoder's columns are not of unit norm and it was trained with "
                "sparsity_include_decoder_norm: h is multiplied by them before the threshold, as lm_saes encodes "
                "it (SAELens' loader leaves them out)",
            )
    hook = text(cfg_path, cfg, "hook_point_in")
    return Sae(
        path=folder if path == folder / WEIGHTS else path,
        library="Llama Scope",
        architecture=activation,
        rule="jumprelu",
        hook=hook,
        d_in=d_in,
        d_sae=d_sae,
        weight=w_enc.T,
        bias=b_enc,
        center=center,
        scale=scale,
        normalize="constant_norm_rescale" if norm == "token-wise" else "none",  # each vector to norm sqrt(d_model)
        threshold=np.full(d_sae, np.float32(theta * (scale or 1.0)), np.float32),
        pre_scale=pre_scale,
        notes=notes,
    )


def _scale(cfg_path: Path, cfg: dict[str, Any], d_in: int) -> float:
    """``sqrt(d_model) / dataset_average_activation_norm.in`` of a dataset-wise normalised SAE."""
    average = cfg.get("dataset_average_activation_norm")
    value = average.get("in") if isinstance(average, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadInput(cfg_path, f"dataset_average_activation_norm.in is {value!r}, not a positive number")
    return math.sqrt(d_in) / value
