"""The encode rules, on the CPU (numpy, BLAS for the matrix product) and with torch on a
device: the library's own ``encode`` of each architecture, as a formula (see the package's
docstring), in float32 unless a device is asked to multiply in bf16/fp16.

Asked for (``--stats``), an encode also says how close each latent came to firing: per latent,
its largest pre-activation ``p`` and the smallest margin ``boundary - p`` over the batch, where
``p`` and the boundary (where the latent stops being 0) are, by rule: ``h`` and 0 (relu,
tanh-relu); ``h`` and ``max(threshold, 0)`` (jumprelu, threshold); the gate's ``h + b_gate`` and
0 (gated); ``h`` and, on each vector, the larger of 0 and the k-th largest ``h`` of the vector
(topk); ``abs(h)`` and the k-th largest ``abs(h)`` (abstopk); ``h`` and the largest ``relu(h)``
of its group (groupmax). ``h`` is after ``pre_scale``. Vectors with a NaN input are left out.
"""

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
        self.boundary = fixed_boundary(sae)

    def encode(self, x: np.ndarray, reach: Reach | None = None) -> np.ndarray:
        """Latents ``[n, d_sae]`` (float32) of inputs ``[n, d_in]``; a vector with a NaN input
        has NaN latents (none of them fires). ``reach``: where each latent's largest
        pre-activation and smallest margin (see the module's docstring) are kept, updated."""
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
            gate_pre = h + self.bias
            if reach is not None:
                reach.add_fixed(_kept(gate_pre, bad), self.boundary)
            gate = gate_pre > 0
            h *= given(sae.mag_scale)
            h += given(sae.mag_bias)
            out = np.where(gate, np.maximum(h, 0), np.float32(0))
        else:
            h += self.bias
            if sae.pre_scale is not None:
                h *= sae.pre_scale
            if reach is not None and rule not in ("topk", "abstopk"):  # those: once ranked
                reach.add(_kept(h, bad), rule, sae.k or 0, self.boundary)
            if rule in ("relu", "tanh-relu"):
                out = np.maximum(h, 0, out=h)
                if rule == "tanh-relu":
                    np.tanh(out, out=out)
            elif rule == "jumprelu":
                out = np.where(h > given(sae.threshold), np.maximum(h, 0), np.float32(0))
            elif rule == "threshold":
                r = np.maximum(h, 0, out=h)
                out = np.where(r > given(sae.threshold)[0], r, np.float32(0))
            elif rule in ("topk", "abstopk"):
                p = h if rule == "topk" else np.abs(h, out=h)
                out, kth = top_k(p, given(sae.k))
                if reach is not None:  # abstopk: kth >= 0 already
                    reach.add_ranked(_kept(p, bad), np.maximum(_kept(kth, bad), 0))
            else:  # groupmax
                out = group_max(np.maximum(h, 0, out=h), given(sae.k))
        if sae.post_scale is not None:
            out *= sae.post_scale
        if bad.any():
            out[bad] = np.nan
        return np.asarray(out, np.float32)


Value = TypeVar("Value")


def fixed_boundary(sae: Sae) -> np.ndarray | None:
    """Per latent, the pre-activation above which it fires, for rules where it does not depend on
    the vector (None for topk, abstopk and groupmax)."""
    if sae.rule in ("relu", "tanh-relu", "gated"):
        return np.zeros(sae.d_sae, np.float32)
    if sae.rule == "jumprelu":
        return np.asarray(np.maximum(given(sae.threshold), 0), np.float32)
    if sae.rule == "threshold":
        return np.full(sae.d_sae, max(float(given(sae.threshold)[0]), 0.0), np.float32)
    return None


def _kept(h: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """The rows of ``h`` whose input had no NaN."""
    return h[~bad] if bad.any() else h


class Reach:
    """How close each latent came to firing, over the vectors encoded: its largest pre-activation
    (``pre_max``) and its smallest margin, the boundary minus the pre-activation (``margins``),
    in float64 (see the module's docstring for each rule's)."""

    def __init__(self, d_sae: int) -> None:
        self.pre_max = np.full(d_sae, -np.inf)
        self.margins = np.full(d_sae, np.inf)

    def add_fixed(self, p: np.ndarray, boundary: np.ndarray | None) -> None:
        """Pre-activations ``[n, d_sae]`` against a boundary that does not change with the vector."""
        if not len(p):
            return
        largest = p.max(axis=0).astype(np.float64)
        np.fmax(self.pre_max, largest, out=self.pre_max)
        np.fmin(self.margins, given(boundary) - largest, out=self.margins)

    def add(self, h: np.ndarray, rule: str, k: int, boundary: np.ndarray | None) -> None:
        """The pre-activations ``h`` (after ``pre_scale``, before the rule) of vectors without
        NaN, for every rule but topk and abstopk (``add_ranked``)."""
        if rule != "groupmax":
            self.add_fixed(h, boundary)
        elif len(h):  # the boundary of a latent: the largest relu(h) of its group
            n, width = h.shape
            groups = h.reshape(n, k, width // k)
            bound = np.maximum(groups.max(axis=2, keepdims=True), 0)
            self._add(h, (bound - groups).reshape(n, width))

    def add_ranked(self, p: np.ndarray, bound: np.ndarray) -> None:
        """Pre-activations ``[n, d_sae]`` against a boundary per vector ``[n]`` (topk, abstopk)."""
        if len(p):
            self._add(p, bound[:, None] - p)

    def _add(self, p: np.ndarray, gaps: np.ndarray) -> None:
        np.fmax(self.pre_max, p.max(axis=0), out=self.pre_max)
        np.fmin(self.margins, gaps.min(axis=0), out=self.margins)


def given(value: Value | None) -> Value:
    """A parameter of the SAE's rule: every checkpoint reader sets those its rule uses."""
    assert value is not None, "an SAE without a parameter its rule uses"
    return value


def top_k(h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """relu of the k largest per row, zeros elsewhere (ties: any k of them, as torch.topk); and
    each row's k-th largest value."""
    n, width = h.shape
    if k == width:
        return np.asarray(np.maximum(h, 0)), h.min(axis=1, initial=np.inf)
    chosen = np.argpartition(h, width - k, axis=1)[:, width - k :]
    out = np.zeros_like(h)
    rows = np.arange(n)[:, None]
    values = h[rows, chosen]
    out[rows, chosen] = np.maximum(values, 0)
    return out, values.min(axis=1, initial=np.inf)


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
        self.boundary = put_given(fixed_boundary(sae))

    def encode(self, x: torch.Tensor, reach: TorchReach | None = None) -> torch.Tensor:
        """float32 latents ``[n, d_sae]`` of float32 inputs ``[n, d_in]`` on the device;
        ``reach`` as ``NumpyEncoder.encode`` takes it (tensors on the device, nothing read back)."""
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
            gate_pre = h + self.bias
            if reach is not None:
                reach.add_fixed(gate_pre, given(self.boundary), bad)
            out = torch.where(gate_pre > 0, torch.relu(h * given(self.mag_scale) + given(self.mag_bias)), 0.0)
        else:
            h = h + self.bias
            if self.pre_scale is not None:
                h = h * self.pre_scale
            if reach is not None and self.boundary is not None:
                reach.add_fixed(h, self.boundary, bad)
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
                p = h if rule == "topk" else h.abs()
                top = torch.topk(p, given(sae.k), dim=-1, sorted=False)
                out = torch.zeros_like(h).scatter_(-1, top.indices, torch.relu(top.values))
                if reach is not None:  # the boundary of a vector: its k-th largest, at least 0
                    reach.add(p, torch.relu(top.values.amin(dim=-1, keepdim=True)) - p, bad)
            else:
                r = torch.relu(h)
                k = given(sae.k)
                if reach is not None:  # the boundary of a latent: the largest relu(h) of its group
                    groups = h.reshape(h.shape[0], k, -1)
                    gaps = torch.relu(groups.amax(dim=-1, keepdim=True)) - groups
                    reach.add(h, gaps.reshape(h.shape), bad)
                best = r.reshape(*r.shape[:-1], k, -1).max(dim=-1)
                offsets = torch.arange(0, sae.d_sae, sae.d_sae // k, device=h.device)
                out = torch.zeros_like(h).scatter_(-1, best.indices + offsets, best.values)
        if self.post_scale is not None:
            out = out * self.post_scale
        if self.dtype != torch.float32:
            out = out.to(self.dtype).float()
        out[bad] = float("nan")
        return out


class TorchReach:
    """``Reach`` with torch on a device: float64 tensors, updated without a host sync."""

    def __init__(self, d_sae: int, device: torch.device) -> None:
        import torch

        self.pre_max = torch.full((d_sae,), -math.inf, dtype=torch.float64, device=device)
        self.margins = torch.full((d_sae,), math.inf, dtype=torch.float64, device=device)

    def add_fixed(self, p: torch.Tensor, boundary: torch.Tensor, bad: torch.Tensor) -> None:
        """Pre-activations ``[n, d_sae]`` against a boundary per latent; rows ``bad`` left out."""
        import torch

        largest = torch.where(bad[:, None], -math.inf, p).amax(dim=0).double()
        torch.fmax(self.pre_max, largest, out=self.pre_max)
        torch.fmin(self.margins, boundary.double() - largest, out=self.margins)

    def add(self, p: torch.Tensor, gaps: torch.Tensor, bad: torch.Tensor) -> None:
        """Pre-activations and their gaps to a boundary that depends on the vector."""
        import torch

        torch.fmax(self.pre_max, torch.where(bad[:, None], -math.inf, p).amax(dim=0).double(), out=self.pre_max)
        torch.fmin(self.margins, torch.where(bad[:, None], math.inf, gaps).amin(dim=0).double(), out=self.margins)
