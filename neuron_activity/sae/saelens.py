"""SAELens checkpoints: ``cfg.json`` and ``sae_weights.safetensors``, from SAELens 3 to 6
(standard, gated, JumpReLU, TopK, AbsTopK, BatchTopK and Matryoshka-BatchTopK SAEs and the four
transcoders; attention SAEs of ``hook_z``)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput
from ..json_files import read_json
from .files import SafetensorsWeights, Tensors, flag, text, top_k, weights, whole
from .model import Sae

WEIGHTS = "sae_weights.safetensors"
BATCH_TOPK = ("batchtopk", "matryoshka_batchtopk")  # trained with a batch top k, saved as JumpReLU
# a transcoder encodes its input hook as the SAE of its activation does (never centred by b_dec)
TRANSCODERS = {
    "transcoder": "standard",
    "skip_transcoder": "standard",
    "jumprelu_transcoder": "jumprelu",
    "jumprelu_skip_transcoder": "jumprelu",
}
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening")
WHITENING = "activation_whitening.safetensors"  # beside a training checkpoint: mean [d_in], matrix [d_in, d_in]


def read(folder: Path) -> Sae:
    """The SAE of a SAELens checkpoint folder (``cfg.json``, ``sae_weights.safetensors``)."""
    cfg_path = folder / "cfg.json"
    cfg = read_json(cfg_path)
    sae = _read(folder, cfg_path, cfg)
    return _whitened(folder, sae) if cfg.get("normalize_activations") == "covariance_whitening" else sae


def _read(folder: Path, cfg_path: Path, cfg: dict[str, Any]) -> Sae:
    metadata: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    # SAELens < 6 kept the hook at the top level ("hook_name", older "hook_point") and named no
    # architecture (standard, or topk through activation_fn); 6.x keeps it under "metadata".
    hook = (
        text(cfg_path, metadata, "hook_name") or text(cfg_path, cfg, "hook_name") or text(cfg_path, cfg, "hook_point")
    )
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu")) or "relu"
    kwargs: dict[str, Any] = cfg["activation_fn_kwargs"] if isinstance(cfg.get("activation_fn_kwargs"), dict) else {}
    if "architecture" not in cfg and activation == "topk" and kwargs.get("k") is not None:
        architecture = "topk"
    d_in, d_sae = whole(cfg_path, cfg, "d_in"), whole(cfg_path, cfg, "d_sae")
    head = cfg.get("hook_head_index", metadata.get("hook_head_index"))
    if head is not None:
        raise BadInput(cfg_path, f"an SAE of one attention head (hook_head_index {head}): nact encodes whole hooks")
    reshape = cfg.get("reshape_activations")
    if reshape is None:  # SAELens < 6 merged the heads of every hook_z SAE
        reshape = "hook_z" if isinstance(hook, str) and hook.endswith("hook_z") else "none"
    if reshape not in ("none", "hook_z") or (reshape == "hook_z" and architecture in TRANSCODERS):
        raise BadInput(
            cfg_path,
            f"reshape_activations {reshape!r} for a {architecture} SAE: nact reads [..., d_in] activations and, "
            "for SAEs other than transcoders, hook_z's [..., heads, d_head]",
        )
    normalize = cfg.get("normalize_activations", "none")
    if isinstance(normalize, bool) or normalize is None:  # SAELens < 6 wrote a flag
        normalize = "expected_average_only_in" if normalize else "none"
    if normalize not in NORMALIZATIONS:
        raise BadInput(cfg_path, f"normalize_activations {normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    scale = None
    notes: list[str] = []
    if normalize == "covariance_whitening":  # the stored whitening is folded into the weights (see _whitened)
        scale, normalize = _stored_scale(folder), "none"
    if normalize == "expected_average_only_in":
        scale = _stored_scale(folder)
        normalize = "none"
        if scale is None:
            notes.append(
                f"SAE {folder}: normalize_activations is expected_average_only_in but it stores no scaling factor "
                "(activation_scaler.json): its inputs are not scaled, as SAELens encodes it"
            )
    tensors = SafetensorsWeights(folder / WEIGHTS)
    weights_path = folder / WEIGHTS
    apply_b_dec = flag(cfg_path, cfg, "apply_b_dec_to_input", architecture not in TRANSCODERS)
    if apply_b_dec and architecture in TRANSCODERS:
        raise BadInput(cfg_path, "a transcoder with apply_b_dec_to_input: SAELens refuses it, and so does nact")
    b_dec = weights(weights_path, tensors, {"b_dec": (d_in,)})[0] if apply_b_dec else None
    common: dict[str, Any] = dict(
        path=folder,
        library="SAELens",
        architecture=architecture,
        hook=hook,
        d_in=d_in,
        d_sae=d_sae,
        center=b_dec,
        scale=scale,
        normalize=normalize,
        reshape=reshape,
        notes=tuple(notes),
    )
    architecture = TRANSCODERS.get(architecture, architecture)
    (w_enc,) = weights(weights_path, tensors, {"W_enc": (d_in, d_sae)})
    if architecture == "gated":
        b_gate, b_mag, r_mag = weights(
            weights_path, tensors, {"b_gate": (d_sae,), "b_mag": (d_sae,), "r_mag": (d_sae,)}
        )
        return Sae(**common, rule="gated", weight=w_enc, bias=b_gate, mag_scale=np.exp(r_mag), mag_bias=b_mag)
    (b_enc,) = weights(weights_path, tensors, {"b_enc": (d_sae,)})
    if architecture == "standard":
        if activation == "relu":
            return Sae(**common, rule="relu", weight=w_enc, bias=b_enc)
        if activation == "tanh-relu":
            return Sae(**common, rule="tanh-relu", weight=w_enc, bias=b_enc)
        raise BadInput(cfg_path, f"activation_fn {activation!r}: nact encodes relu and tanh-relu standard SAEs")
    if architecture == "jumprelu":
        threshold = _threshold(weights_path, tensors, d_sae)
        return Sae(**common, rule="jumprelu", weight=w_enc, bias=b_enc, threshold=threshold)
    if architecture in BATCH_TOPK:  # a training checkpoint: JumpReLU at its learned threshold
        threshold = _threshold(weights_path, tensors, d_sae)
        pre_scale = _decoder_norms(cfg_path, cfg, weights_path, tensors, d_in, d_sae, default=True)
        return Sae(**common, rule="jumprelu", weight=w_enc, bias=b_enc, threshold=threshold, pre_scale=pre_scale)
    if architecture in ("topk", "abstopk"):
        k = top_k(cfg_path, cfg.get("k", kwargs.get("k")), d_sae)
        pre_scale = _decoder_norms(cfg_path, cfg, weights_path, tensors, d_in, d_sae, default=False)
        return Sae(**common, rule=architecture, weight=w_enc, bias=b_enc, k=k, pre_scale=pre_scale)
    raise BadInput(
        cfg_path,
        f"architecture {architecture!r}: nact encodes SAELens' standard, gated, jumprelu, topk, abstopk, batchtopk "
        "and matryoshka_batchtopk SAEs and its transcoders",
    )


def _decoder_norms(
    cfg_path: Path, cfg: dict[str, Any], weights_path: Path, tensors: Tensors, d_in: int, d_sae: int, default: bool
) -> np.ndarray | None:
    """The decoder row norms the pre-activations are multiplied by before the rule, when
    ``rescale_acts_by_decoder_norm`` is set (a TopK SAE's default is off; a BatchTopK training
    SAE's is on: its threshold was learned on the rescaled pre-activations, and
    ``save_inference_model`` folds the norms into W_enc and b_enc)."""
    if not flag(cfg_path, cfg, "rescale_acts_by_decoder_norm", default):
        return None
    (w_dec,) = weights(weights_path, tensors, {"W_dec": (d_sae, d_in)})
    return np.asarray(np.linalg.norm(w_dec.astype(np.float32), axis=-1), np.float32)


def _threshold(weights_path: Path, tensors: Tensors, d_sae: int) -> np.ndarray:
    """A JumpReLU threshold per latent: ``threshold``, a training checkpoint's ``log_threshold``,
    or a BatchTopK training checkpoint's single ``topk_threshold``."""
    if "threshold" in tensors:
        return weights(weights_path, tensors, {"threshold": (d_sae,)})[0]
    if "log_threshold" in tensors:
        return np.asarray(np.exp(weights(weights_path, tensors, {"log_threshold": (d_sae,)})[0]), np.float32)
    if "topk_threshold" in tensors and tensors["topk_threshold"].size == 1:
        return np.full(d_sae, float(tensors["topk_threshold"].reshape(())), np.float32)
    raise BadInput(weights_path, "has no tensor 'threshold' (nor 'log_threshold')")


def _stored_scale(folder: Path) -> float | None:
    """The scaling factor of ``expected_average_only_in``: SAELens folds it into the weights of a
    finished SAE (whose cfg.json then says none) and keeps it in activation_scaler.json beside a
    checkpoint taken during training, whose inputs were scaled by it; None when there is none."""
    scaler = folder / "activation_scaler.json"
    if not scaler.is_file():
        return None
    value = read_json(scaler).get("scaling_factor")
    if value is None:  # a whitened SAE's scaler keeps no factor
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadInput(scaler, f"scaling_factor is {value!r}, not a positive number")
    return float(value)


def _whitened(folder: Path, sae: Sae) -> Sae:
    """A training checkpoint of ``covariance_whitening``, whose inputs were whitened:
    ``z = (x - mean) @ matrix`` (after the scaling factor, when there is one), then centred by
    b_dec. The map is folded into the encoder as SAELens' ``fold_activation_whitening`` folds
    it (``W_enc = matrix @ W_enc``, the mean and b_dec into the bias), in float64."""
    scaler = folder / "activation_scaler.json"
    stored = read_json(scaler).get("has_whitening", True) if scaler.is_file() else True
    path = folder / WHITENING
    if not stored or not path.is_file():
        note = (
            f"SAE {folder}: normalize_activations is covariance_whitening but it stores no whitening ({WHITENING}): "
            "its inputs are not whitened, as SAELens encodes it"
        )
        return replace(sae, notes=(*sae.notes, note))
    tensors = SafetensorsWeights(path)
    mean, matrix = weights(path, tensors, {"mean": (sae.d_in,), "matrix": (sae.d_in, sae.d_in)})
    m = matrix.astype(np.float64)
    w = np.asarray(sae.weight, np.float64)
    shift = mean.astype(np.float64) @ m + (0 if sae.center is None else sae.center.astype(np.float64))
    moved = shift @ w  # what the mean and b_dec take from every pre-activation
    folded = replace(sae, weight=np.asarray(m @ w, np.float32), center=None, bias=(sae.bias - moved).astype(np.float32))
    if sae.mag_bias is not None and sae.mag_scale is not None:  # gated: h * exp(r_mag) + b_mag
        folded = replace(folded, mag_bias=(sae.mag_bias - moved * sae.mag_scale).astype(np.float32))
    return folded
