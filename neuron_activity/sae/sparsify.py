"""EleutherAI sparsify checkpoints: ``cfg.json`` and ``sae.safetensors`` (TopK and GroupMax
coders, transcoders included); the folder is named after the hook it reads."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput
from ..json_files import read_json
from .files import SafetensorsWeights, flag, top_k, weights, whole
from .model import Sae

WEIGHTS = "sae.safetensors"


def read(folder: Path) -> Sae:
    """The SAE of a sparsify checkpoint folder (``cfg.json``, ``sae.safetensors``)."""
    cfg_path = folder / "cfg.json"
    cfg = read_json(cfg_path)
    weights_path = folder / WEIGHTS
    tensors = SafetensorsWeights(weights_path)
    d_in = whole(cfg_path, cfg, "d_in")
    if "encoder.weight" not in tensors or tensors["encoder.weight"].ndim != 2:
        raise BadInput(weights_path, "has no 2-d tensor 'encoder.weight'")
    d_sae = tensors["encoder.weight"].shape[0]
    w, b = weights(weights_path, tensors, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,)})
    transcode = flag(cfg_path, cfg, "transcode", False)
    center = None if transcode else weights(weights_path, tensors, {"b_dec": (d_in,)})[0]
    activation = cfg.get("activation", "topk")
    k = top_k(cfg_path, cfg.get("k"), d_sae)
    if activation == "groupmax" and d_sae % k:
        raise BadInput(cfg_path, f"groupmax needs d_sae ({d_sae}) to be a multiple of k ({k})")
    if activation not in ("topk", "groupmax"):
        raise BadInput(cfg_path, f"activation {activation!r}: sparsify coders are topk or groupmax")
    return Sae(
        path=folder,
        library="sparsify",
        architecture=activation,
        rule=activation,
        hook=folder.name,
        d_in=d_in,
        d_sae=d_sae,
        weight=w.T,
        bias=b,
        center=center,
        k=k,
    )
