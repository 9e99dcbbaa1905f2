"""Reading the files of an SAE checkpoint without running anything in them: JSON configs, the
tensors of a safetensors file (each read in float32 when first looked up) or of a
``torch.save`` state dict (through the restricted reader of ``sources.torch_zip``, else
``torch.load(weights_only=True)``), and the checks every family's reader makes of them."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import FLOAT_INPUTS, INTEGER_FORMATS, ITEMSIZE, UNSIGNED_VIEW, to_float32
from ..errors import BadInput, first_line
from ..memory import check_fits
from ..sources import torch_zip
from ..sources.base import TensorEntry
from ..sources.safetensors_files import read_header

Tensors = Mapping[str, np.ndarray]


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON object; a missing file is a checkpoint without it."""
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


class SafetensorsWeights(Mapping[str, np.ndarray]):
    """The tensors of a safetensors file by name, each read (in float32) when first looked up:
    an encoder does not read the decoder it does not use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, TensorEntry] = {e.key: e for e in read_header(path)}
        self._read: dict[str, np.ndarray] = {}

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._read:
            e = self.entries[key]
            check_fits(self.path, f"tensor {key!r} of shape {list(e.shape)}", e.nbytes + 4 * math.prod(e.shape))
            with open(self.path, "rb") as f:
                f.seek(e.offset or 0)
                raw = f.read(e.nbytes)
            if len(raw) != e.nbytes:
                raise BadInput(self.path, f"truncated: tensor {key!r}")
            self._read[key] = as_float32(raw, e.dtype, e.shape, self.path, key)
        return self._read[key]


def as_float32(raw: bytes, dtype: str, shape: tuple[int, ...], path: Path, key: str) -> np.ndarray:
    """A tensor's bytes as float32 (integer buffers too, such as dictionary_learning's ``k``)."""
    if dtype in FLOAT_INPUTS:
        values = to_float32(np.frombuffer(raw, UNSIGNED_VIEW[ITEMSIZE[dtype]]), dtype)
    elif dtype in ("I32", "I64", "I16", "I8", "U8"):
        values = np.frombuffer(raw, INTEGER_FORMATS[dtype]).astype(np.float32)
    else:
        raise BadInput(path, f"tensor {key!r} has dtype {dtype}, not a weight nact reads")
    return values.reshape(shape)


def torch_weights(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save`` state dict in float32, read without running its pickle."""
    found = torch_zip.entries(path, "pt")
    if found is not None:
        out = {}
        check_fits(path, "its tensors", sum(e.nbytes + 4 * math.prod(e.shape) for e in found))
        with open(path, "rb") as f:
            for e in found:
                f.seek(e.offset or 0)
                out[e.member or e.key] = as_float32(f.read(e.nbytes), e.dtype, e.shape, path, e.member or e.key)
        return out
    try:
        import torch  # a legacy or compressed file only: torch costs seconds to import
    except ImportError:
        raise BadInput(path, "needs torch to be read (a legacy or compressed torch.save file)") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(path, f"cannot load: {first_line(e)}") from None
    if not isinstance(loaded, dict):
        raise BadInput(path, "not a state dict of tensors")
    return {str(k): v.detach().to(torch.float32).numpy() for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def weights(path: Path, tensors: Tensors, shapes: dict[str, tuple[int, ...]]) -> list[np.ndarray]:
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


def whole(cfg_path: Path, cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    """``cfg[key]``, a whole number of at least 1."""
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(cfg_path, f"{key} is {value!r}, not a whole number of at least 1")
    return value


def flag(cfg_path: Path, cfg: dict[str, Any], key: str, default: bool) -> bool:
    """``cfg[key]``, true or false (missing or null: ``default``)."""
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadInput(cfg_path, f"{key} is {value!r}, not true or false")
    return value


def top_k(cfg_path: Path, k: object, d_sae: int) -> int:
    """A TopK SAE's ``k``: a whole number from 1 to ``d_sae``."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
        raise BadInput(cfg_path, f"k is {k!r}, not a whole number from 1 to d_sae ({d_sae})")
    return k
