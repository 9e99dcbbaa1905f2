"""saprmarks/dictionary_learning checkpoints: ``config.json`` and ``ae.pt`` (a ``torch.save``
state dict, read without running its pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput
from .files import Tensors, flag, read_json, top_k, torch_weights, weights, whole
from .model import Sae

WEIGHTS = "ae.pt"


def read(folder: Path) -> Sae:
    """The SAE of a dictionary_learning checkpoint folder (``config.json``, ``ae.pt``)."""
    cfg_path = folder / "config.json"
    cfg = read_json(cfg_path)
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict):
        raise BadInput(cfg_path, "has no 'trainer' object (dictionary_learning writes one)")
    dict_class = trainer.get("dict_class")
    d_in, d_sae = whole(cfg_path, trainer, "activation_dim"), whole(cfg_path, trainer, "dict_size")
    weights_path = folder / WEIGHTS
    tensors = torch_weights(weights_path)
    hook = trainer.get("submodule_name") if isinstance(trainer.get("submodule_name"), str) else None
    common: dict[str, Any] = dict(
        path=folder,
        library="dictionary_learning",
        architecture=str(dict_class),
        hook=hook,
        d_in=d_in,
        d_sae=d_sae,
    )
    linear = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,)}
    if dict_class == "AutoEncoder":
        w, b, center = weights(weights_path, tensors, {**linear, "bias": (d_in,)})
        return Sae(**common, rule="relu", weight=w.T, bias=b, center=center)
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        w, b, center = weights(weights_path, tensors, {**linear, "b_dec": (d_in,)})
        if dict_class == "AutoEncoderTopK":  # encode(use_threshold=False), its default: the top k
            k = tensors["k"].reshape(-1)[0] if "k" in tensors and tensors["k"].size == 1 else trainer.get("k")
            return Sae(
                **common,
                rule="topk",
                weight=w.T,
                bias=b,
                center=center,
                k=top_k(cfg_path, int(k) if k is not None else k, d_sae),
            )
        return Sae(
            **common, rule="threshold", weight=w.T, bias=b, center=center, threshold=_scalar(weights_path, tensors)
        )
    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        w, b, b_dec = weights(weights_path, tensors, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_in,)})
        if dict_class == "MatryoshkaBatchTopKSAE":
            return Sae(
                **common, rule="threshold", weight=w, bias=b, center=b_dec, threshold=_scalar(weights_path, tensors)
            )
        (threshold,) = weights(weights_path, tensors, {"threshold": (d_sae,)})
        apply = flag(cfg_path, trainer, "apply_b_dec_to_input", False)  # the class's default
        return Sae(**common, rule="jumprelu", weight=w, bias=b, center=b_dec if apply else None, threshold=threshold)
    if dict_class == "GatedAutoEncoder":
        w, center, gate, mag, r_mag = weights(
            weights_path,
            tensors,
            {
                "encoder.weight": (d_sae, d_in),
                "decoder_bias": (d_in,),
                "gate_bias": (d_sae,),
                "mag_bias": (d_sae,),
                "r_mag": (d_sae,),
            },
        )
        return Sae(**common, rule="gated", weight=w.T, bias=gate, center=center, mag_scale=np.exp(r_mag), mag_bias=mag)
    raise BadInput(
        cfg_path,
        f"dict_class {dict_class!r}: nact encodes AutoEncoder, JumpReluAutoEncoder, AutoEncoderTopK, "
        "BatchTopKSAE, MatryoshkaBatchTopKSAE and GatedAutoEncoder",
    )


def _scalar(weights_path: Path, tensors: Tensors) -> np.ndarray:
    value = tensors.get("threshold")
    if value is None or value.size != 1:
        raise BadInput(weights_path, "has no one-number tensor 'threshold' (BatchTopK's inference threshold)")
    return value.reshape(1).astype(np.float32)
