"""SAE checkpoints read without their libraries, and their encoders.

An SAE checkpoint folder of SAELens (``cfg.json`` + ``sae_weights.safetensors``), EleutherAI
sparsify (``cfg.json`` + ``sae.safetensors``) or saprmarks/dictionary_learning (``config.json``
+ ``ae.pt``) is read into one ``Sae``: the encoder's weights in float32 and the rule that turns a
pre-activation into a latent. Every architecture is one of a few rules (the library's own
``encode``, as a formula; ``h = x' @ W + b`` where ``x'`` is the input after the library's
normalisation and decoder-bias subtraction):

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
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInput, BadOption, SaeNotBound, first_line

RULES = ("relu", "tanh-relu", "jumprelu", "threshold", "topk", "groupmax", "gated")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
LAYER_NORM_EPS = 1e-5  # SAELens' run-time layer norm: (x - mean) / (std + eps)
ENCODE_BYTES = 64 * 1024 * 1024  # latents of one encoded batch


@dataclass(frozen=True)
class Sae:
    """One SAE's encoder in float32, as a rule of the module's docstring."""

    path: Path
    library: str
    architecture: str  # as the library names it
    rule: str  # one of RULES
    hook: str | None
    d_in: int
    d_sae: int
    weight: np.ndarray  # [d_in, d_sae] (may be a transposed view)
    bias: np.ndarray  # [d_sae] (gated: the gate bias)
    center: np.ndarray | None = None  # subtracted from the input (the decoder bias) before encoding
    scale: float | None = None  # the input is multiplied by it first (a stored scaling factor)
    normalize: str = "none"  # none, constant_norm_rescale, layer_norm (run-time, per vector)
    threshold: np.ndarray | None = None  # jumprelu: [d_sae]; threshold: [1]
    k: int | None = None
    topk_scale: np.ndarray | None = None  # topk: decoder row norms the pre-activations are scaled by
    mag_scale: np.ndarray | None = None  # gated: exp(r_mag)
    mag_bias: np.ndarray | None = None  # gated
    fingerprint: str = ""  # SHA-256 of the encoder as nact uses it: which SAE made a count

    def with_fingerprint(self) -> Sae:
        """This SAE with its fingerprint: the rule, its numbers and every array it encodes with."""
        parts = [repr((self.rule, self.d_in, self.d_sae, self.k, self.scale, self.normalize)).encode()]
        for a in (self.weight, self.bias, self.center, self.threshold, self.topk_scale, self.mag_scale, self.mag_bias):
            parts.append(b"-" if a is None else np.ascontiguousarray(a, np.float32).tobytes())
        return replace(self, fingerprint=hashlib.sha256(b"|".join(parts)).hexdigest())

    @property
    def name(self) -> str:
        """The SAE's name in component names: its folder, with the run's folder for sparsify
        (whose folders are named after their hooks)."""
        if self.library == "sparsify" and self.path.parent.name:
            return f"{self.path.parent.name}/{self.path.name}"
        return self.path.name

    def describe(self) -> str:
        """The encode as one line (for inspect and the JSON)."""
        steps = []
        if self.scale is not None:
            steps.append(f"x * {self.scale:g}")
        if self.normalize != "none":
            steps.append(self.normalize)
        if self.center is not None:
            steps.append("x - b_dec")
        rule = {
            "relu": "relu(h)", "tanh-relu": "tanh(relu(h))", "jumprelu": "relu(h) where h > threshold",
            "threshold": f"relu(h) where relu(h) > {float(self.threshold[0]) if self.threshold is not None else 0:g}",
            "topk": f"top {self.k} of h{' * |W_dec|' if self.topk_scale is not None else ''}, relu",
            "groupmax": f"max of each of {self.k} groups, relu",
            "gated": "relu(h * exp(r_mag) + b_mag) where h + b_gate > 0",
        }[self.rule]
        return f"{self.library} {self.architecture}: " + ", ".join(steps + [f"h = x @ W_enc + b, {rule}"])

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path), "library": self.library, "architecture": self.architecture, "hook": self.hook,
            "d_in": self.d_in, "d_sae": self.d_sae, "encode": self.describe(), "fingerprint": self.fingerprint,
        }


# ----------------------------------------------------------------------------- reading


def load_sae(path: Path | str) -> Sae:
    """The SAE in the checkpoint folder ``path`` (a file of the folder names the folder too)."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise BadInput(folder, "no such SAE checkpoint folder")
    if (folder / "sae_weights.safetensors").is_file():
        return _saelens(folder).with_fingerprint()
    if (folder / "sae.safetensors").is_file():
        return _sparsify(folder).with_fingerprint()
    if (folder / "ae.pt").is_file():
        return _dictionary_learning(folder).with_fingerprint()
    inside = sorted(p.parent.name for name in ("sae_weights.safetensors", "sae.safetensors", "ae.pt")
                    for p in folder.glob(f"*/{name}"))
    if inside:
        listed = ", ".join(inside[:4]) + (", ..." if len(inside) > 4 else "")
        raise BadInput(folder, f"holds {len(inside)} SAE checkpoint(s) in its folders ({listed}): give one of them")
    raise BadInput(
        folder,
        "not an SAE checkpoint: nact reads SAELens (cfg.json, sae_weights.safetensors), sparsify "
        "(cfg.json, sae.safetensors) and dictionary_learning (config.json, ae.pt) folders",
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(path.parent, f"SAE checkpoint without {path.name}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(path, f"cannot read: {first_line(e)}") from None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise BadInput(path, f"not JSON: {first_line(e)}") from None
    if not isinstance(value, dict):
        raise BadInput(path, "not a JSON object")
    return value


class _Tensors(dict):  # type: ignore[type-arg]
    """The tensors of a safetensors file by name, each read (in float32) when first looked up:
    an encoder does not read the decoder it does not use."""

    def __init__(self, path: Path) -> None:
        from .sources.safetensors_files import read_header

        super().__init__()
        self.path = path
        self.entries = {e.key: e for e in read_header(path)}

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        return self[key] if key in self.entries else default

    def __getitem__(self, key: str) -> np.ndarray:
        if not dict.__contains__(self, key):
            e = self.entries[key]
            with open(self.path, "rb") as f:
                f.seek(e.offset)  # type: ignore[arg-type]
                raw = f.read(e.nbytes)
            if len(raw) != e.nbytes:
                raise BadInput(self.path, f"truncated: tensor {key!r}")
            dict.__setitem__(self, key, _as_float32(raw, e.dtype, e.shape, self.path, key))
        return dict.__getitem__(self, key)


def _safetensors(path: Path) -> _Tensors:
    """The tensors of a safetensors file (read when looked up, in float32)."""
    return _Tensors(path)


def _as_float32(raw: bytes, dtype: str, shape: tuple[int, ...], path: Path, key: str) -> np.ndarray:
    from .dtypes import INTEGER_FORMATS, ITEMSIZE, UNSIGNED_VIEW

    if dtype in FLOAT_INPUTS:
        values = to_float32(np.frombuffer(raw, UNSIGNED_VIEW[ITEMSIZE[dtype]]), dtype)
    elif dtype in ("I32", "I64", "I16", "I8", "U8"):  # buffers such as dictionary_learning's k
        values = np.frombuffer(raw, INTEGER_FORMATS[dtype]).astype(np.float32)
    else:
        raise BadInput(path, f"tensor {key!r} has dtype {dtype}, not a weight nact reads")
    return values.reshape(shape)


def _torch_file(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save`` state dict in float32, read without running its pickle."""
    from .sources import torch_zip

    found = torch_zip.entries(path, "pt")
    if found is not None:
        out = {}
        with open(path, "rb") as f:
            for e in found:
                f.seek(e.offset)  # type: ignore[arg-type]
                out[e.member or e.key] = _as_float32(f.read(e.nbytes), e.dtype, e.shape, path, e.member or e.key)
        return out
    try:
        import torch
    except ImportError:
        raise BadInput(path, "needs torch to be read (a legacy or compressed torch.save file)") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal of torch's is a bad file
        raise BadInput(path, f"cannot load: {first_line(e)}") from None
    if not isinstance(loaded, dict):
        raise BadInput(path, "not a state dict of tensors")
    return {
        str(k): v.detach().to(torch.float32).numpy() for k, v in loaded.items() if isinstance(v, torch.Tensor)
    }


def _weights(path: Path, tensors: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> list[np.ndarray]:
    """The tensors named in ``shapes``, each checked to have its shape."""
    out = []
    for key, shape in shapes.items():
        if key not in tensors:
            raise BadInput(path, f"has no tensor {key!r} (it has {', '.join(sorted(tensors)) or 'none'})")
        value = tensors[key]
        if tuple(value.shape) != shape:
            raise BadInput(path, f"tensor {key!r} has shape {list(value.shape)}, expected {list(shape)}")
        out.append(value)
    return out


def _whole(cfg_path: Path, cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(cfg_path, f"{key} is {value!r}, not a whole number of at least 1")
    return value


def _flag(cfg_path: Path, cfg: dict[str, Any], key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadInput(cfg_path, f"{key} is {value!r}, not true or false")
    return value


def _k(cfg_path: Path, k: object, d_sae: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
        raise BadInput(cfg_path, f"k is {k!r}, not a whole number from 1 to d_sae ({d_sae})")
    return k


def _saelens(folder: Path) -> Sae:
    cfg_path = folder / "cfg.json"
    cfg = _json(cfg_path)
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    # SAELens < 6 kept the hook at the top level ("hook_name", older "hook_point") and named no
    # architecture (standard, or topk through activation_fn); 6.x keeps it under "metadata".
    hook = metadata.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu")) or "relu"
    kwargs = cfg.get("activation_fn_kwargs") if isinstance(cfg.get("activation_fn_kwargs"), dict) else {}
    if "architecture" not in cfg and activation == "topk" and kwargs.get("k") is not None:
        architecture = "topk"
    d_in, d_sae = _whole(cfg_path, cfg, "d_in"), _whole(cfg_path, cfg, "d_sae")
    head = cfg.get("hook_head_index", metadata.get("hook_head_index"))
    if head is not None:
        raise BadInput(cfg_path, f"an SAE of one attention head (hook_head_index {head}): nact encodes whole hooks")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise BadInput(cfg_path, f"reshape_activations {cfg['reshape_activations']!r}: nact encodes [..., d_in] activations only")
    normalize = cfg.get("normalize_activations", "none")
    if isinstance(normalize, bool) or normalize is None:  # SAELens < 6 wrote a flag
        normalize = "expected_average_only_in" if normalize else "none"
    if normalize not in NORMALIZATIONS:
        raise BadInput(cfg_path, f"normalize_activations {normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    scale = None
    if normalize == "expected_average_only_in":
        scale = _stored_scale(folder, cfg_path)
        normalize = "none"
    tensors = _safetensors(folder / "sae_weights.safetensors")
    weights_path = folder / "sae_weights.safetensors"
    apply_b_dec = _flag(cfg_path, cfg, "apply_b_dec_to_input", True)
    (b_dec,) = _weights(weights_path, tensors, {"b_dec": (d_in,)})
    common: dict[str, Any] = dict(
        path=folder, library="SAELens", architecture=architecture, hook=hook, d_in=d_in, d_sae=d_sae,
        center=b_dec if apply_b_dec else None, scale=scale, normalize=normalize,
    )
    (w_enc,) = _weights(weights_path, tensors, {"W_enc": (d_in, d_sae)})
    if architecture == "gated":
        b_gate, b_mag, r_mag = _weights(weights_path, tensors, {"b_gate": (d_sae,), "b_mag": (d_sae,), "r_mag": (d_sae,)})
        return Sae(**common, rule="gated", weight=w_enc, bias=b_gate, mag_scale=np.exp(r_mag), mag_bias=b_mag)
    (b_enc,) = _weights(weights_path, tensors, {"b_enc": (d_sae,)})
    if architecture == "standard":
        if activation not in ("relu", "tanh-relu"):
            raise BadInput(cfg_path, f"activation_fn {activation!r}: nact encodes relu and tanh-relu standard SAEs")
        return Sae(**common, rule=activation, weight=w_enc, bias=b_enc)
    if architecture in ("jumprelu", "batchtopk", "matryoshka_batchtopk"):
        threshold = _threshold(weights_path, tensors, d_sae)
        return Sae(**common, rule="jumprelu", weight=w_enc, bias=b_enc, threshold=threshold)
    if architecture == "topk":
        k = _k(cfg_path, cfg.get("k", kwargs.get("k")), d_sae)
        scale_by_norm = None
        if _flag(cfg_path, cfg, "rescale_acts_by_decoder_norm", False):
            (w_dec,) = _weights(weights_path, tensors, {"W_dec": (d_sae, d_in)})
            scale_by_norm = np.linalg.norm(w_dec.astype(np.float32), axis=-1).astype(np.float32)
        return Sae(**common, rule="topk", weight=w_enc, bias=b_enc, k=k, topk_scale=scale_by_norm)
    raise BadInput(cfg_path, f"architecture {architecture!r}: nact encodes standard, jumprelu, topk and gated SAELens SAEs")


def _threshold(weights_path: Path, tensors: dict[str, np.ndarray], d_sae: int) -> np.ndarray:
    """A JumpReLU threshold per latent: ``threshold``, a training checkpoint's ``log_threshold``,
    or a BatchTopK training checkpoint's single ``topk_threshold``."""
    if "threshold" in tensors:
        return _weights(weights_path, tensors, {"threshold": (d_sae,)})[0]
    if "log_threshold" in tensors:
        return np.exp(_weights(weights_path, tensors, {"log_threshold": (d_sae,)})[0]).astype(np.float32)
    if "topk_threshold" in tensors and tensors["topk_threshold"].size == 1:
        return np.full(d_sae, tensors["topk_threshold"].reshape(()), np.float32)
    raise BadInput(weights_path, "has no tensor 'threshold' (nor 'log_threshold')")


def _stored_scale(folder: Path, cfg_path: Path) -> float:
    """The scaling factor of ``expected_average_only_in``: SAELens folds it into the weights of a
    finished SAE (whose cfg.json then says none) and keeps it in activation_scaler.json beside a
    checkpoint taken during training."""
    scaler = folder / "activation_scaler.json"
    value = _json(scaler).get("scaling_factor") if scaler.is_file() else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadInput(
            cfg_path,
            "normalize_activations is expected_average_only_in, but the checkpoint stores no scaling factor "
            "(activation_scaler.json): nact cannot know the scale the SAE expects",
        )
    return float(value)


def _sparsify(folder: Path) -> Sae:
    cfg_path = folder / "cfg.json"
    cfg = _json(cfg_path)
    weights_path = folder / "sae.safetensors"
    tensors = _safetensors(weights_path)
    d_in = _whole(cfg_path, cfg, "d_in")
    if "encoder.weight" not in tensors or tensors["encoder.weight"].ndim != 2:
        raise BadInput(weights_path, "has no 2-d tensor 'encoder.weight'")
    d_sae = tensors["encoder.weight"].shape[0]
    w, b = _weights(weights_path, tensors, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,)})
    transcode = _flag(cfg_path, cfg, "transcode", False)
    center = None if transcode else _weights(weights_path, tensors, {"b_dec": (d_in,)})[0]
    activation = cfg.get("activation", "topk")
    k = _k(cfg_path, cfg.get("k"), d_sae)
    if activation == "groupmax" and d_sae % k:
        raise BadInput(cfg_path, f"groupmax needs d_sae ({d_sae}) to be a multiple of k ({k})")
    if activation not in ("topk", "groupmax"):
        raise BadInput(cfg_path, f"activation {activation!r}: sparsify coders are topk or groupmax")
    return Sae(
        path=folder, library="sparsify", architecture=activation, rule=activation, hook=folder.name, d_in=d_in,
        d_sae=d_sae, weight=w.T, bias=b, center=center, k=k,
    )


def _dictionary_learning(folder: Path) -> Sae:
    cfg_path = folder / "config.json"
    cfg = _json(cfg_path)
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict):
        raise BadInput(cfg_path, "has no 'trainer' object (dictionary_learning writes one)")
    dict_class = trainer.get("dict_class")
    d_in, d_sae = _whole(cfg_path, trainer, "activation_dim"), _whole(cfg_path, trainer, "dict_size")
    weights_path = folder / "ae.pt"
    tensors = _torch_file(weights_path)
    hook = trainer.get("submodule_name") if isinstance(trainer.get("submodule_name"), str) else None
    common: dict[str, Any] = dict(
        path=folder, library="dictionary_learning", architecture=str(dict_class), hook=hook, d_in=d_in, d_sae=d_sae,
    )
    linear = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,)}
    if dict_class == "AutoEncoder":
        w, b, center = _weights(weights_path, tensors, {**linear, "bias": (d_in,)})
        return Sae(**common, rule="relu", weight=w.T, bias=b, center=center)
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        w, b, center = _weights(weights_path, tensors, {**linear, "b_dec": (d_in,)})
        if dict_class == "AutoEncoderTopK":  # encode(use_threshold=False), its default: the top k
            k = tensors["k"].reshape(-1)[0] if "k" in tensors and tensors["k"].size == 1 else trainer.get("k")
            return Sae(**common, rule="topk", weight=w.T, bias=b, center=center, k=_k(cfg_path, int(k) if k is not None else k, d_sae))
        return Sae(**common, rule="threshold", weight=w.T, bias=b, center=center, threshold=_scalar(weights_path, tensors))
    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        w, b, b_dec = _weights(weights_path, tensors, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_in,)})
        if dict_class == "MatryoshkaBatchTopKSAE":
            return Sae(**common, rule="threshold", weight=w, bias=b, center=b_dec, threshold=_scalar(weights_path, tensors))
        (threshold,) = _weights(weights_path, tensors, {"threshold": (d_sae,)})
        apply = _flag(cfg_path, trainer, "apply_b_dec_to_input", False)  # the class's default
        return Sae(**common, rule="jumprelu", weight=w, bias=b, center=b_dec if apply else None, threshold=threshold)
    if dict_class == "GatedAutoEncoder":
        w, center, gate, mag, r_mag = _weights(weights_path, tensors, {
            "encoder.weight": (d_sae, d_in), "decoder_bias": (d_in,), "gate_bias": (d_sae,), "mag_bias": (d_sae,),
            "r_mag": (d_sae,),
        })
        return Sae(**common, rule="gated", weight=w.T, bias=gate, center=center, mag_scale=np.exp(r_mag), mag_bias=mag)
    raise BadInput(
        cfg_path,
        f"dict_class {dict_class!r}: nact encodes AutoEncoder, JumpReluAutoEncoder, AutoEncoderTopK, "
        "BatchTopKSAE, MatryoshkaBatchTopKSAE and GatedAutoEncoder",
    )


def _scalar(weights_path: Path, tensors: dict[str, np.ndarray]) -> np.ndarray:
    value = tensors.get("threshold")
    if value is None or value.size != 1:
        raise BadInput(weights_path, "has no one-number tensor 'threshold' (BatchTopK's inference threshold)")
    return value.reshape(1).astype(np.float32)


# ----------------------------------------------------------------------------- binding


@dataclass(frozen=True)
class SaeRequest:
    """An ``--sae [KEY=]PATH`` as given: the component it binds to (None: the SAE's own hook)."""

    path: Path
    key: str | None = None

    @classmethod
    def parse(cls, text: str) -> SaeRequest:
        key, equals, path = text.rpartition("=")
        if equals and not key:
            raise BadOption("sae", text, "names no component before '=': use KEY=PATH or PATH")
        if not path:
            raise BadOption("sae", text, "names no SAE folder")
        return cls(Path(path), key or None)


@dataclass(frozen=True)
class BoundSae:
    """An SAE bound to the component whose activations it encodes; its latents' component name."""

    sae: Sae
    component: str

    @property
    def name(self) -> str:
        return f"{self.component}:{self.sae.name}"


# ----------------------------------------------------------------------------- encoding


def to_float32(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Rows of raw bits (the dtype's unsigned view) as float32, as the libraries cast their input."""
    if dtype == "F32":
        return bits.view(np.float32)
    if dtype == "BF16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return bits.view(np.float16).astype(np.float32)
    if dtype == "F64":
        return bits.view(np.float64).astype(np.float32)
    raise KeyError(dtype)


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
                out = _top_k(h, sae.k)  # type: ignore[arg-type]
            else:  # groupmax
                out = _group_max(np.maximum(h, 0, out=h), sae.k)  # type: ignore[arg-type]
        if bad.any():
            out[bad] = np.nan
        return out.astype(np.float32, copy=False)


def _top_k(h: np.ndarray, k: int) -> np.ndarray:
    """relu of the k largest per row, zeros elsewhere (ties: any k of them, as torch.topk)."""
    n, width = h.shape
    if k == width:
        return np.maximum(h, 0)
    chosen = np.argpartition(h, width - k, axis=1)[:, width - k:]
    out = np.zeros_like(h)
    rows = np.arange(n)[:, None]
    out[rows, chosen] = np.maximum(h[rows, chosen], 0)
    return out


def _group_max(r: np.ndarray, k: int) -> np.ndarray:
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


class SaeCounter:
    """Encodes chunks of one component's activations with its SAEs and counts the latents: fires,
    NaNs (and last fired), and, per latent, the sum of its activation where it fires and its
    largest activation. Follows the ``counting.Counter`` protocol; ``result`` holds the SAEs'
    latents one after another."""

    name = "sae"

    def __init__(
        self, dtype: str, saes: list[Sae], device: str, kernel: str | None, track_last: bool,
        fire_above: object, compute: str = "float32",
    ) -> None:
        from .counting import make_counter
        from .torch_counting import TorchCounter
        from .dtypes import fire_rule

        self.dtype, self.device = dtype, device
        self.on_torch = device != "cpu" or kernel == "torch"  # kernel torch: the device path, on the cpu
        self.rule = fire_rule("F32", fire_above)  # type: ignore[arg-type]
        self.saes = saes
        self.step = min(batch_rows(s) for s in saes)
        # Every rule's latents are >= 0 (or NaN): at fire_above <= 0 a latent that does not fire is
        # 0 and adds nothing, so the sum over the vectors it fired on is the sum of its values;
        # above 0, values up to the largest float32 <= fire_above (``below``) are left out.
        ranges = self.rule.fire_ranges
        self.below = None
        if self.rule.fire_above > 0:
            self.below = np.array([ranges[0][0] - 1 if ranges else 0x7F800000], np.uint32).view(np.float32)[0]
        if not self.on_torch:
            self.encoders: list[Any] = [NumpyEncoder(s) for s in saes]
            self.counters: list[Any] = [make_counter(self.rule, s.d_sae, "cpu", kernel, track_last) for s in saes]
            self.sums = [np.zeros(s.d_sae, np.float64) for s in saes]
            self.maxima = [np.full(s.d_sae, -np.inf, np.float64) for s in saes]
        else:
            import torch

            self.torch = torch
            self.counters = [TorchCounter(self.rule, s.d_sae, device, track_last) for s in saes]
            where = self.counters[0].device
            self.encoders = [TorchEncoder(s, where, compute) for s in saes]
            self.sums = [torch.zeros(s.d_sae, dtype=torch.float64, device=where) for s in saes]
            self.maxima = [torch.full((s.d_sae,), -math.inf, dtype=torch.float64, device=where) for s in saes]

        self.name = f"sae+{self.counters[0].name}"  # the kernel that counts the latents

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None:
        if not self.on_torch:
            x = to_float32(bits, self.dtype)
            for start in range(0, x.shape[0], self.step):
                self._update_cpu(x[start:start + self.step], first_vector + start)
        else:
            for start in range(0, bits.shape[0], self.step):
                self._update_device(bits[start:start + self.step], first_vector + start)

    def _update_cpu(self, x: np.ndarray, first_vector: int) -> None:
        for encoder, counter, sums, maxima in zip(self.encoders, self.counters, self.sums, self.maxima):
            latents = encoder.encode(x)
            counter.update(latents.view(np.uint32), first_vector)
            if np.isnan(latents[:, 0]).any():  # a vector with a NaN input has NaN latents only
                latents = latents[~np.isnan(latents[:, 0])]
            fired = latents if self.below is None else np.where(latents > self.below, latents, np.float32(0))
            sums += np.ones(len(latents), np.float32) @ fired  # float32 within a batch, float64 across
            if len(latents):
                np.fmax(maxima, latents.max(axis=0), out=maxima)

    def _update_device(self, bits: np.ndarray, first_vector: int) -> None:
        from .torch_counting import fire_mask

        torch = self.torch
        view = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}[self.dtype]
        ranges = self.rule.signed_fire_ranges()
        with self.counters[0].on_device(bits) as raw:
            x = raw.view(view).float()
            for encoder, counter, sums, maxima in zip(self.encoders, self.counters, self.sums, self.maxima):
                latents = encoder.encode(x)
                latent_bits = latents.view(torch.int32)
                counter.count_bits(latent_bits, first_vector)
                fires = fire_mask(latent_bits, ranges)
                sums += torch.where(fires, latents, 0.0).sum(dim=0, dtype=torch.float64)
                torch.fmax(maxima, torch.nan_to_num(latents, nan=-math.inf).amax(dim=0).double(), out=maxima)

    def result(self) -> dict[str, np.ndarray]:
        parts = [c.result() for c in self.counters]
        out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        to_host = (lambda a: a.cpu().numpy()) if self.on_torch else (lambda a: a)
        out["act_sums"] = np.concatenate([to_host(s) for s in self.sums])
        out["act_max"] = np.concatenate([to_host(m) for m in self.maxima])
        return out


def bind(plan: Any, requests: tuple[SaeRequest, ...], saes: list[Sae]) -> None:
    """Bind each SAE to the component it encodes and make the plan count its latents instead.

    The component is the one named in the request, else the one named as the SAE's hook; it
    must be one component (not one index of a component axis) of ``d_in`` float features.
    Components no SAE is bound to are not counted. Raises ``SaeNotBound`` or ``BadInput``.
    """
    from .sources import ComponentGroup
    from .sources.base import SPARSE

    streams = {name: g for g in plan.groups.values() for name in g.names}
    components = list(streams)
    bound: dict[str, list[BoundSae]] = {}
    for request, sae in zip(requests, saes):
        key = request.key or sae.hook
        group = streams.get(key) if key is not None else None
        if group is None:
            if request.key is not None:
                raise SaeNotBound(sae.path, request.key, components)
            raise SaeNotBound(sae.path, sae.hook, components)
        where = group.first_path
        if len(group.names) > 1:
            raise BadInput(where, f"component {key!r} is one index of a component axis: an SAE encodes a whole component")
        if group.num_features != sae.d_in:
            raise BadInput(
                sae.path, f"d_in is {sae.d_in}, but component {key!r} has {group.num_features} features ({where})"
            )
        for slab in plan.slabs:
            if slab.key == group.key and (slab.entry.storage == SPARSE or slab.dtype not in FLOAT_INPUTS):
                what = "a sparse cache of latents" if slab.entry.storage == SPARSE else f"{slab.dtype} values"
                raise BadInput(slab.path, f"component {key!r} holds {what}: an SAE encodes float activations")
        bound.setdefault(group.key, []).append(BoundSae(sae, key))
    names = [b.name for found in bound.values() for b in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadOption("sae", twice[0], "is given twice")
    groups = {}
    for key, found in bound.items():
        old = plan.groups[key]
        groups[key] = ComponentGroup(
            old.name, tuple(b.name for b in found), found[0].sae.d_sae, old.first_path, old.first_shape,
            files=list(old.files), widths=tuple(b.sae.d_sae for b in found),
        )
    plan.groups = groups
    kept = [s for s in plan.slabs if s.key in bound]
    plan.restrict({s.path for s in kept})
    plan.slabs = kept
    plan.saes = bound


FLOAT_INPUTS = ("F32", "BF16", "F16", "F64")
