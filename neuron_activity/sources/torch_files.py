"""Files written by ``torch.save``: a tensor, or (nested) dicts and lists of tensors.

They are loaded with ``weights_only=True`` (no pickled code ever runs) and ``mmap=True`` (tensor
data stays on disk until read). Importing torch costs seconds, so only these files pay for it.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..dtypes import TORCH_NAMES, UNSIGNED_VIEW
from ..errors import BadInput, NactError
from .base import LOADED, TensorEntry, TensorSlab

FORMAT = "torch"
FORMATS = (FORMAT,)
SUFFIXES = {".pt": FORMAT, ".pth": FORMAT}


def load(path: Path) -> object:
    """The object in a torch.save file, loaded safely, or BadInput saying why it cannot be."""
    try:
        import torch
    except ImportError:
        raise NactError(f"{path}: reading .pt files needs PyTorch: pip install torch") from None
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # the legacy format
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(path, f"refused: it needs unsafe unpickling, and nact loads only tensors ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise BadInput(path, f"not a readable torch.save file: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def tensors(obj: object, prefix: str = "") -> dict[str, object]:
    """Every tensor in ``obj`` by dotted path (``""`` for a bare tensor)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items: list[tuple[str, object]] = []
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    found: dict[str, object] = {}
    for name, value in items:
        found.update(tensors(value, f"{prefix}.{name}" if prefix else name))
    return found


def entries(paths: list[Path]) -> list[TensorEntry]:
    out = []
    for path in paths:
        found = tensors(load(path))
        if not found:
            raise BadInput(path, "holds no tensors")
        for member, t in found.items():
            dtype = TORCH_NAMES.get(str(t.dtype).removeprefix("torch."), str(t.dtype))  # type: ignore[attr-defined]
            shape = tuple(t.shape)  # type: ignore[attr-defined]
            key, from_file = (member, False) if member else (path.stem, True)
            out.append(TensorEntry(path, key, dtype, shape, FORMAT, member=member, storage=LOADED, from_file=from_file))
    return out


def chunks(slab: TensorSlab, chunk_rows: int) -> Iterator[np.ndarray]:
    import torch

    tensor = tensors(load(slab.path))[slab.entry.member or ""]
    if slab.index is not None:  # the first axis is the component axis: this slab is one block
        tensor = tensor[slab.index]  # type: ignore[index]
    rows = tensor.reshape(slab.num_rows, slab.width)  # type: ignore[attr-defined]
    itemsize = rows.element_size()
    signed = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[itemsize]
    for start in range(0, slab.num_rows, chunk_rows):
        block = rows[start : start + chunk_rows].contiguous().view(signed).numpy()
        yield block.view(UNSIGNED_VIEW[itemsize])
