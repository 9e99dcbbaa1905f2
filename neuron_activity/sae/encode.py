"""The encode rules, on the CPU (numpy, BLAS for the matrix product) and with torch on a
device: the library's own ``encode`` of each architecture, as a formula (see the package's
docstring), in float32 unless a device is asked to multiply in bf16/fp16."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .model import Sae

if TYPE_CHECKING:
    pass

LAYER_NORM_EPS = 1e-5  # SAELens' run-time layer norm: (x - mean) / (std + eps)
ENCODE_BYTES = 64 * 1024 * 1024  # latents of one encoded batch


class NumpyEncoder:
    """Encodes float32 rows on the CPU (BLAS does the matrix product, on every core)."""

    def __init__(self, sae: Sae) -> None:
        self.sae = sae
        self.weight = np.asarray(sae.weight, np.float32)
        self.bias = sae.bias.astype(np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Latents ``[n, d_sae]`` (float32) of inputs ``[n, d_in]``; a vector with a NaN input
        has NaN latents (none of them fires)."""
        sae = self.sae
        bad = np.isnan(x).any(axis=1)
        if sae.scale is not None:
            x = x * np.float32(sae.scale)
        if sae.normalize == "constant_norm_rescale":
            x = x * (np.float32(math.sqrt(sae.d_in)) / np.linalg.norm(x, axis=-1, keepdims=True))
        elif sae.normalize == "layer_norm":
            x = x - x.mean(axis=-1, keepdims=True)
            x = x / (x.std(axis=-1, ddof=1, keepdims=True) + np.float32(LAYER_NORM_EPS))
        if sae.center is not None:
            x = x - sae.center
        h = x @ self.weight
        rule = sae.rule
        if rule == "gated":
            gate = (h + self.bias) > 0
            h *= sae.mag_scale
            h += sae.mag_bias
            out = np.where(gate, np.maximum(h, 0), np.float32(0))
        else:
            h += self.bias
            if rule in ("relu", "tanh-relu"):
                out = np.maximum(h, 0, out=h)
                if rule == "tanh-relu":
                    np.tanh(out, out=out)
            elif rule == "jumprelu":
                out = np.where(h > sae.threshold, np.maximum(h, 0), np.float32(0))
            elif rule == "threshold":
                r = np.maximum(h, 0, out=h)
                out = np.where(r > sae.threshold[0], r, np.float32(0))
            elif rule == "topk":
                if sae.topk_scale is not None:
                    h *= sae.topk_scale
                out = top_k(h, sae.k)
            else:  # groupmax
                out = group_max(np.maximum(h, 0, out=h), sae.k)
        if bad.any():
            out[bad] = np.nan
        return out.astype(np.float32, copy=False)


def top_k(h: np.ndarray, k: int) -> np.ndarray:
    """relu of the k largest per row, zeros elsewhere (ties: any k of them, as torch.topk)."""
    n, width = h.shape
    if k == width:
        return np.maximum(h, 0)
    chosen = np.argpartition(h, width - k, axis=1)[:, width - k :]
    out = np.zeros_like(h)
    rows = np.arange(n)[:, None]
    out[rows, chosen] = np.maximum(h[rows, chosen], 0)
    return out


def group_max(r: np.ndarray, k: int) -> np.ndarray:
    n, width = r.shape
    groups = r.reshape(n, k, width // k)
    best = groups.argmax(axis=2)
    out = np.zeros_like(groups)
    rows, cols = np.arange(n)[:, None], np.arange(k)[None, :]
    out[rows, cols, best] = groups[rows, cols, best]
    return out.reshape(n, width)


def batch_rows(sae: Sae) -> int:
    """Vectors encoded at a time: the latents of a batch take about ``ENCODE_BYTES``."""
    return max(1, ENCODE_BYTES // (4 * sae.d_sae * (2 if sae.rule == "gated" else 1)))


class TorchEncoder:
    """The same rules with torch on a device; the matrix product in ``compute`` (float32, or
    bf16/fp16 where asked: latents are then rounded to that precision before they are counted)."""

    def __init__(self, sae: Sae, device: object, compute: str = "float32") -> None:
        import torch

        self.torch, self.sae = torch, sae
        self.dtype = getattr(torch, compute)

        def put(a: np.ndarray | None, dtype: object = torch.float32) -> object:
            return None if a is None else torch.tensor(np.asarray(a, np.float32), device=device, dtype=dtype)

        self.weight = put(sae.weight, self.dtype)
        self.bias, self.center, self.threshold = put(sae.bias), put(sae.center), put(sae.threshold)
        self.topk_scale, self.mag_scale, self.mag_bias = put(sae.topk_scale), put(sae.mag_scale), put(sae.mag_bias)

    def encode(self, x: Any) -> Any:
        """float32 latents ``[n, d_sae]`` of float32 inputs ``[n, d_in]`` on the device."""
        torch, sae = self.torch, self.sae
        bad = torch.isnan(x).any(dim=1)
        if sae.scale is not None:
            x = x * sae.scale
        if sae.normalize == "constant_norm_rescale":
            x = x * (math.sqrt(sae.d_in) / x.norm(dim=-1, keepdim=True))
        elif sae.normalize == "layer_norm":
            x = x - x.mean(dim=-1, keepdim=True)
            x = x / (x.std(dim=-1, keepdim=True) + LAYER_NORM_EPS)
        if self.center is not None:
            x = x - self.center
        h = (x.to(self.dtype) @ self.weight).float()
        rule = sae.rule
        if rule == "gated":
            gate = (h + self.bias) > 0
            out = torch.where(gate, torch.relu(h * self.mag_scale + self.mag_bias), 0.0)
        else:
            h = h + self.bias
            if rule in ("relu", "tanh-relu"):
                out = torch.relu(h)
                if rule == "tanh-relu":
                    out = torch.tanh(out)
            elif rule == "jumprelu":
                out = torch.where(h > self.threshold, torch.relu(h), 0.0)
            elif rule == "threshold":
                r = torch.relu(h)
                out = torch.where(r > self.threshold[0], r, 0.0)
            elif rule == "topk":
                if self.topk_scale is not None:
                    h = h * self.topk_scale
                top = torch.topk(h, sae.k, dim=-1, sorted=False)
                out = torch.zeros_like(h).scatter_(-1, top.indices, torch.relu(top.values))
            else:
                r = torch.relu(h)
                best = r.unflatten(-1, (sae.k, -1)).max(dim=-1)
                offsets = torch.arange(0, sae.d_sae, sae.d_sae // sae.k, device=h.device)
                out = torch.zeros_like(h).scatter_(-1, best.indices + offsets, best.values)
        if self.dtype != torch.float32:
            out = out.to(self.dtype).float()
        out[bad] = float("nan")
        return out
