"""What the SAE tests share: the libraries' encode formulas in float64 (``reference``), which
decisions are too close to their boundary to call in float32, random weights and caches.

A float32 encode can decide differently from the float64 one only where a deciding quantity
(a pre-activation against its threshold, a top-k value against the k-th, ...) lies within float32
rounding of its boundary; those (vector, latent) pairs are counted as "near" and the tests check
both that they are few and that nact agrees exactly everywhere else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

D_IN, D_SAE, ROWS = 24, 96, 1500
NEAR = 1e-5  # ten times float32 rounding of these dot products (24 terms of |x w| < 2) and more
HOOK = "blocks.3.hook_resid_post"
DEAD = 3  # latents 0..2 have a bias that keeps them from ever firing


# ----------------------------------------------------------------------------- the reference


def reference(arch: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latents (float64) and, per (vector, latent), how far its firing decision is from flipping.

    ``arch``: the rule and its weights, and the steps around it: ``scale`` (the input times it),
    ``normalize``, ``whiten`` ((mean, matrix)), ``center`` (a weight subtracted from the input), ``decoder_norm`` (h times the
    decoder's row norms before the rule), ``post_scale`` (the latents times it after the rule)."""
    latents, margin = _rule(arch, x)
    if arch.get("post_scale") is not None:
        latents = latents * np.asarray(arch["post_scale"], np.float64)
    return latents, margin


def _prepared(arch: dict, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``x' @ W`` (float64: the input after the steps before the rule) and the weights."""
    x = x.astype(np.float64)
    w = {k: np.asarray(v, np.float64) for k, v in arch["weights"].items()}
    if arch.get("scale") is not None:
        x = x * arch["scale"]
    if arch.get("normalize") == "constant_norm_rescale":
        x = x * np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)
    elif arch.get("normalize") == "layer_norm":
        x = x - x.mean(axis=1, keepdims=True)
        x = x / (x.std(axis=1, ddof=1, keepdims=True) + 1e-5)
    if arch.get("whiten") is not None:  # SAELens' covariance whitening: (x - mean) @ matrix
        mean, matrix = arch["whiten"]
        x = (x - mean) @ matrix
    if arch.get("center") is not None:
        x = x - w[arch["center"]]
    return x @ w["W"], w


def _h(arch: dict, pre: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """The pre-activation the rule reads: ``x' @ W + b``, times the decoder norms where asked."""
    h = pre + w["b"]
    if arch.get("decoder_norm"):  # SAELens' rescale_acts_by_decoder_norm: before the rule
        h = h * np.linalg.norm(w["W_dec"], axis=1)
    return h


def reach(arch: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per latent (float64), its largest pre-activation and its smallest margin to firing (the
    boundary minus the pre-activation), as ``sae.encode`` defines them for each rule."""
    pre, w = _prepared(arch, x)
    rule = arch["rule"]
    if rule == "gated":
        p = pre + w["b_gate"]
        return p.max(axis=0), (0 - p).min(axis=0)
    h = _h(arch, pre, w)
    if rule in ("relu", "tanh-relu"):
        bound = np.zeros((1, h.shape[1]))
    elif rule in ("jumprelu", "threshold"):
        bound = np.maximum(np.broadcast_to(w["threshold"], (1, h.shape[1])), 0)
    elif rule in ("topk", "abstopk"):  # the k-th largest of each vector (of |h| for abstopk), at least 0
        p = np.abs(h) if rule == "abstopk" else h
        bound = np.maximum(np.sort(p, axis=1)[:, -arch["k"]], 0)[:, None]
        return p.max(axis=0), (bound - p).min(axis=0)
    else:  # groupmax: the largest relu(h) of the latent's group
        groups = h.reshape(len(h), arch["k"], -1)
        bound = np.repeat(np.maximum(groups.max(axis=2), 0), groups.shape[2], axis=1)
    return h.max(axis=0), (bound - h).min(axis=0)


def _rule(arch: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pre, w = _prepared(arch, x)
    rule = arch["rule"]
    if rule == "gated":
        gate = pre + w["b_gate"]
        mag = pre * np.exp(w["r_mag"]) + w["b_mag"]
        latents = np.where(gate > 0, np.maximum(mag, 0), 0)
        return latents, np.minimum(np.abs(gate), np.abs(mag))
    h = _h(arch, pre, w)
    if rule in ("relu", "tanh-relu"):
        latents = np.maximum(h, 0)
        return (np.tanh(latents) if rule == "tanh-relu" else latents), np.abs(h)
    if rule == "jumprelu":
        return np.where(h > w["threshold"], np.maximum(h, 0), 0), np.minimum(np.abs(h - w["threshold"]), np.abs(h))
    if rule == "threshold":
        r = np.maximum(h, 0)
        return np.where(r > w["threshold"], r, 0), np.minimum(np.abs(r - w["threshold"]), np.abs(h))
    if rule == "abstopk":  # SAELens' AbsTopK: the k largest |h| keep h; nact counts |h| (its sign dropped)
        k = arch["k"]
        a = np.abs(h)
        ordered = np.sort(a, axis=1)
        kth, next_ = ordered[:, -k], ordered[:, -k - 1]
        chosen = a >= kth[:, None]
        margin = np.minimum(np.abs(a - (kth + next_)[:, None] / 2), np.where(chosen, a, np.inf))
        return np.where(chosen, a, 0), margin
    if rule == "topk":
        k = arch["k"]
        ordered = np.sort(h, axis=1)
        kth, next_ = ordered[:, -k], ordered[:, -k - 1]
        chosen = h >= kth[:, None]
        between = (kth + next_)[:, None] / 2  # in or out of the top k: against the middle of the gap
        margin = np.minimum(np.abs(h - between), np.where(chosen, np.abs(h), np.inf))
        return np.where(chosen, np.maximum(h, 0), 0), margin
    if rule == "groupmax":
        k = arch["k"]
        r = np.maximum(h, 0).reshape(len(h), k, -1)
        ordered = np.sort(r, axis=2)
        top = ordered[:, :, -1:]
        best = r == top
        gap = (ordered[:, :, -1] - ordered[:, :, -2])[:, :, None]
        margin = np.where(best, np.minimum(gap, np.abs(h.reshape(r.shape))), top - r)
        margin = np.where(top == 0, np.inf, margin)  # nothing in the group is above 0: none fires
        return np.where(best, r, 0).reshape(len(h), -1), margin.reshape(len(h), -1)
    raise AssertionError(rule)


def near_boundary(latents: np.ndarray, margin: np.ndarray, fire_above: float = 0.0) -> np.ndarray:
    """Decisions too close to call in float32: a deciding quantity near its boundary, or a
    non-zero latent near ``fire_above`` (a latent set to exactly 0 is decided)."""
    return (margin < NEAR) | ((np.abs(latents - fire_above) < NEAR) & (latents != 0))


def expected_counts(arch: dict, x: np.ndarray, fire_above: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per latent: the vectors it surely fires on, those too near a boundary to say, and its
    latents (float64)."""
    latents, margin = reference(arch, x)
    near = near_boundary(latents, margin, fire_above)
    fires = latents > fire_above
    return (fires & ~near).sum(axis=0), near.sum(axis=0), latents


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def base_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    w_dec = rng.standard_normal((D_SAE, D_IN)) * (0.5 + rng.random((D_SAE, 1)))
    return {
        "W": f32(rng.standard_normal((D_IN, D_SAE)) * 0.4),
        "b": f32(np.r_[np.full(DEAD, -30.0), rng.standard_normal(D_SAE - DEAD) * 0.5 - 0.8]),
        "b_dec": f32(rng.standard_normal(D_IN) * 0.2),
        "W_dec": f32(w_dec),
    }


def activations(seed: int = 7, rows: int = ROWS) -> np.ndarray:
    rng = rng_for(seed)
    return f32(rng.standard_normal((rows, D_IN)) * (1 + rng.random((rows, 1))))


def cache(folder: Path, x: np.ndarray, key: str = HOOK, shards: int = 3, **more: np.ndarray) -> Path:
    """Shards of ``x`` under ``key`` (and of ``more`` under their keys, split alike)."""
    folder.mkdir(parents=True, exist_ok=True)
    others = {k: np.array_split(v, shards) for k, v in more.items()}
    for i, part in enumerate(np.array_split(x, shards)):
        tensors = {key: f32(part), **{k: f32(v[i]) for k, v in others.items()}}
        save_file(tensors, str(folder / f"shard_{i:02d}.safetensors"))
    return folder
