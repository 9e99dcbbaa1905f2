"""saprmarks/dictionary_learning checkpoints: ``config.json`` and ``ae.pt`` (a ``torch.save``
state dict, read without running its pickle), a run's ``checkpoints/ae_<step>.pt`` (its
``config.json`` is one folder up) and its in-run backup (an ``ae.pt`` holding the weights under
``ae``, beside the ``norm_factor`` its inputs were divided by).

The latents are those of the library's loader (``utils.load_dictionary``): an ``AutoEncoder``'s
are multiplied by the norms of its decoder's columns, as ``AutoEncoder.from_pretrained``
(``normalize_decoder=True``, its default) makes them; every other class's are its ``encode``'s.
A backup's inputs are divided by its ``norm_factor`` and its latents multiplied by it, which is
what the run's final ``ae.pt`` (its biases scaled by the factor) encodes."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput
from ..json_files import read_json
from .files import Tensors, TorchWeights, flag, text, top_k, weights, whole
from .model import Sae

WEIGHTS = "ae.pt"
UNIT_RTOL, UNIT_ATOL = 1e-5, 1e-8  # normalize_decoder leaves a decoder alone whose norms are this close to 1


def read(folder: Path, weights_path: Path | None = None) -> Sae:
    """The SAE of a dictionary_learning checkpoint folder (``config.json``, ``ae.pt``), or of
    one of its run's files ``weights_path`` (``checkpoints/ae_<step>.pt``)."""
    cfg_path = folder / "config.json"
    cfg = read_json(cfg_path)
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict):
        raise BadInput(cfg_path, "has no 'trainer' object (dictionary_learning writes one)")
    dict_class = trainer.get("dict_class")
    d_in, d_sae = whole(cfg_path, trainer, "activation_dim"), whole(cfg_path, trainer, "dict_size")
    if weights_path is None:
        weights_path = folder / WEIGHTS
    stored = TorchWeights(weights_path)
    tensors: Tensors = stored
    norm_factor = None
    if any(key.startswith("ae.") for key in stored):  # an in-run backup: the weights under "ae"
        tensors, norm_factor = _backup(weights_path, stored)
    hook = text(cfg_path, trainer, "submodule_name")
    common: dict[str, Any] = dict(
        path=folder if weights_path == folder / WEIGHTS else weights_path,
        library="dictionary_learning",
        architecture=str(dict_class),
        hook=hook,
        d_in=d_in,
        d_sae=d_sae,
        scale=None if norm_factor is None else 1 / norm_factor,
        post_scale=None if norm_factor is None else np.full(d_sae, norm_factor, np.float32),
    )
    linear = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,)}
    if dict_class == "AutoEncoder":
        w, b, center, w_dec = weights(
            weights_path, tensors, {**linear, "bias": (d_in,), "decoder.weight": (d_in, d_sae)}
        )
        norms = np.asarray(np.linalg.norm(w_dec, axis=0), np.float32)  # from_pretrained's normalize_decoder
        if not np.allclose(norms, 1, rtol=UNIT_RTOL, atol=UNIT_ATOL):
            common["post_scale"] = norms * (norm_factor or 1.0)
        return Sae(**common, rule="relu", weight=w.T, bias=b, center=center)
    if dict_class == "AutoEncoderNew":
        w, b = weights(weights_path, tensors, linear)
        return Sae(**common, rule="relu", weight=w.T, bias=b)
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        w, b, center = weights(weights_path, tensors, {**linear, "b_dec": (d_in,)})
        if dict_class == "AutoEncoderTopK":  # encode(use_threshold=False), its default: the top k
            kept = "k" in tensors and tensors["k"].size == 1  # the k the class keeps in its state dict
            k = float(tensors["k"].reshape(-1)[0]) if kept else trainer.get("k")
            return Sae(
                **common,
                rule="topk",
                weight=w.T,
                bias=b,
                center=center,
                k=top_k(weights_path if kept else cfg_path, k, d_sae),
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
        f"dict_class {dict_class!r}: nact encodes AutoEncoder, AutoEncoderNew, JumpReluAutoEncoder, "
        "AutoEncoderTopK, BatchTopKSAE, MatryoshkaBatchTopKSAE and GatedAutoEncoder",
    )


class _Under(Mapping[str, np.ndarray]):
    """The tensors of ``tensors`` under ``prefix``, named without it."""

    def __init__(self, tensors: Tensors, prefix: str) -> None:
        self.tensors, self.prefix = tensors, prefix
        self.names = [key[len(prefix) :] for key in tensors if key.startswith(prefix)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.tensors[self.prefix + key]


def _backup(path: Path, tensors: TorchWeights) -> tuple[Tensors, float | None]:
    """The weights of an in-run backup and the factor its inputs were divided by (None: not
    normalised)."""
    factor = tensors.numbers.get("norm_factor")
    if factor is not None and not (math.isfinite(factor) and factor > 0):
        raise BadInput(path, f"norm_factor is {factor!r}, not a positive number")
    return _Under(tensors, "ae."), None if factor is None else float(factor)


def _scalar(weights_path: Path, tensors: Tensors) -> np.ndarray:
    value = tensors.get("threshold")
    if value is None or value.size != 1:
        raise BadInput(weights_path, "has no one-number tensor 'threshold' (BatchTopK's inference threshold)")
    return value.reshape(1).astype(np.float32)
