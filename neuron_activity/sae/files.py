"""Reading the files of an SAE checkpoint without running anything in them: JSON configs, the
tensors of a safetensors file (each read in float32 when first looked up) or of a
``torch.save`` state dict (through the restricted reader of ``sources.torch_zip``, else
``torch.load(weights_only=True)``), and the checks every family's reader makes of them."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from ..dtypes import FLOAT_INPUTS, INTEGER_FORMATS, ITEMSIZE, UNSIGNED_VIEW, to_float32
from ..errors import BadInput, first_line
from ..memory import check_fits
from ..sources import torch_zip
from ..sources.base import TensorEntry
from ..sources.safetensors_files import read_header

Tensors = Mapping[str, np.ndarray]


def text(cfg_path: Path, cfg: dict[str, Any], key: str) -> str | None:
    """``cfg[key]``, a string or missing (None)."""
    value = cfg.get(key)
    if value is not None and not isinstance(value, str):
        raise BadInput(cfg_path, f"{key} is {_short(value)}, not a string")
    return value


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


class LazyWeights(Mapping[str, np.ndarray]):
    """The tensors of a weights file by name, each read in float32 when first looked up (an
    encoder does not read the decoder it does not use); ``loaded`` are tensors read already."""

    def __init__(
        self, path: Path, entries: dict[str, TensorEntry], loaded: dict[str, np.ndarray] | None = None
    ) -> None:
        self.path = path
        self.entries = entries
        self._read = dict(loaded or {})

    def __contains__(self, key: object) -> bool:
        return key in self.entries or key in self._read

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self.entries), **dict.fromkeys(self._read)})

    def __len__(self) -> int:
        return len(set(self.entries) | set(self._read))

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


class SafetensorsWeights(LazyWeights):
    """The tensors of a safetensors file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, {e.key: e for e in read_header(path)})


class TorchWeights(LazyWeights):
    """The tensors of a ``torch.save`` file by dotted path (``ae.encoder.weight`` for a dict under
    ``ae``), read without running its pickle; the numbers kept beside them (a step, a
    normalisation factor) in ``numbers``."""

    def __init__(self, path: Path) -> None:
        found = torch_zip.entries(path, "pt")
        if found is None:  # a legacy or compressed file: torch reads it, all at once
            loaded, self.numbers = _torch_load(path)
            super().__init__(path, {}, loaded)
        else:
            super().__init__(path, {e.member or e.key: e for e in found})
            self.numbers = torch_zip.numbers(path)


def as_float32(raw: bytes, dtype: str, shape: tuple[int, ...], path: Path, key: str) -> np.ndarray:
    """A tensor's bytes as float32 (integer buffers too, such as dictionary_learning's ``k``)."""
    if dtype in FLOAT_INPUTS:
        values = to_float32(np.frombuffer(raw, UNSIGNED_VIEW[ITEMSIZE[dtype]]), dtype)
    elif dtype in ("I32", "I64", "I16", "I8", "U8"):
        values = np.frombuffer(raw, INTEGER_FORMATS[dtype]).astype(np.float32)
    else:
        raise BadInput(path, f"tensor {key!r} has dtype {dtype}, not a weight nact reads")
    return values.reshape(shape)


def _torch_load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
    """Every tensor (float32) and number of a ``torch.save`` file, by ``torch.load(weights_only=True)``."""
    try:
        import torch  # a legacy or compressed file only: torch costs seconds to import
    except ImportError:
        raise BadInput(path, "needs torch to be read (a legacy or compressed torch.save file)") from None
    check_fits(path, "its tensors", 2 * path.stat().st_size)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(path, f"cannot load: {first_line(e)}") from None

    def is_tensor(value: object) -> TypeGuard[torch.Tensor]:
        return isinstance(value, torch.Tensor)

    def is_number(value: object) -> TypeGuard[int | float]:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    found = torch_zip.walk(loaded, is_tensor, path)
    tensors = {k or path.stem: v.detach().to(torch.float32).numpy() for k, v in found.items()}
    return tensors, torch_zip.walk(loaded, is_number, path)


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
        raise BadInput(cfg_path, f"{key} is {_short(value)}, not a whole number of at least 1")
    return value


def flag(cfg_path: Path, cfg: dict[str, Any], key: str, default: bool) -> bool:
    """``cfg[key]``, true or false (missing or null: ``default``)."""
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadInput(cfg_path, f"{key} is {_short(value)}, not true or false")
    return value


def top_k(cfg_path: Path, k: object, d_sae: int) -> int:
    """A TopK SAE's ``k``: a whole number from 1 to ``d_sae``."""
    value = int(k) if isinstance(k, float) and k.is_integer() else k  # SAELens >= 6.11 writes k as a float
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= d_sae:
        raise BadInput(cfg_path, f"k is {_short(k)}, not a whole number from 1 to d_sae ({d_sae})")
    return value
