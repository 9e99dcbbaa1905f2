"""The encode rules, on the CPU (numpy, BLAS for the matrix product) and with torch on a
device: the library's own ``encode`` of each architecture, as a formula (see the package's
docstring), in float32 unless a device is asked to multiply in bf16/fp16."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .model import Sae

if TYPE_CHECKING:
    import torch

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
        out: np.ndarray
        if rule == "gated":
            gate = (h + self.bias) > 0
            h *= given(sae.mag_scale)
            h += given(sae.mag_bias)
            out = np.where(gate, np.maximum(h, 0), np.float32(0))
        else:
            h += self.bias
            if sae.pre_scale is not None:
                h *= sae.pre_scale
            if rule in ("relu", "tanh-relu"):
                out = np.maximum(h, 0, out=h)
                if rule == "tanh-relu":
                    np.tanh(out, out=out)
            elif rule == "jumprelu":
                out = np.where(h > given(sae.threshold), np.maximum(h, 0), np.float32(0))
            elif rule == "threshold":
                r = np.maximum(h, 0, out=h)
                out = np.where(r > given(sae.threshold)[0], r, np.float32(0))
            elif rule == "topk":
                out = top_k(h, given(sae.k))
            elif rule == "abstopk":
                out = top_k(np.abs(h, out=h), given(sae.k))
            else:  # groupmax
                out = group_max(np.maximum(h, 0, out=h), given(sae.k))
        if sae.post_scale is not None:
            out *= sae.post_scale
        if bad.any():
            out[bad] = np.nan
        return np.asarray(out, np.float32)


Value = TypeVar("Value")


def given(value: Value | None) -> Value:
    """A parameter of the SAE's rule: every checkpoint reader sets those its rule uses."""
    assert value is not None, "an SAE without a parameter its rule uses"
    return value


def top_k(h: np.ndarray, k: int) -> np.ndarray:
    """relu of the k largest per row, zeros elsewhere (ties: any k of them, as torch.topk)."""
    n, width = h.shape
    if k == width:
        return np.asarray(np.maximum(h, 0))
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

    def __init__(self, sae: Sae, device: torch.device, compute: str = "float32") -> None:
        import torch

        self.sae = sae
        self.dtype: torch.dtype = getattr(torch, compute)

        def put(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(np.asarray(a, np.float32), device=device, dtype=dtype)

        def put_given(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else put(a)

        self.weight, self.bias = put(sae.weight, self.dtype), put(sae.bias)
        self.center, self.threshold = put_given(sae.center), put_given(sae.threshold)
        self.pre_scale, self.post_scale = put_given(sae.pre_scale), put_given(sae.post_scale)
        self.mag_scale, self.mag_bias = put_given(sae.mag_scale), put_given(sae.mag_bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """float32 latents ``[n, d_sae]`` of float32 inputs ``[n, d_in]`` on the device."""
        import torch

        sae = self.sae
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
            out = torch.where(gate, torch.relu(h * given(self.mag_scale) + given(self.mag_bias)), 0.0)
        else:
            h = h + self.bias
            if self.pre_scale is not None:
                h = h * self.pre_scale
            if rule in ("relu", "tanh-relu"):
                out = torch.relu(h)
                if rule == "tanh-relu":
                    out = torch.tanh(out)
            elif rule == "jumprelu":
                out = torch.where(h > given(self.threshold), torch.relu(h), 0.0)
            elif rule == "threshold":
                r = torch.relu(h)
                out = torch.where(r > given(self.threshold)[0], r, 0.0)
            elif rule in ("topk", "abstopk"):
                top = torch.topk(h if rule == "topk" else h.abs(), given(sae.k), dim=-1, sorted=False)
                out = torch.zeros_like(h).scatter_(-1, top.indices, torch.relu(top.values))
            else:
                r = torch.relu(h)
                k = given(sae.k)
                best = r.reshape(*r.shape[:-1], k, -1).max(dim=-1)
                offsets = torch.arange(0, sae.d_sae, sae.d_sae // k, device=h.device)
                out = torch.zeros_like(h).scatter_(-1, best.indices + offsets, best.values)
        if self.post_scale is not None:
            out = out * self.post_scale
        if self.dtype != torch.float32:
            out = out.to(self.dtype).float()
        out[bad] = float("nan")
        return out
