"""Files written by ``torch.save``: a tensor, or (nested) dicts and lists of tensors.

They are loaded with ``weights_only=True`` (no pickled code ever runs) and ``mmap=True`` (tensor
data stays on disk until read). Importing torch costs seconds, so only these files pay for it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..dtypes import TORCH_NAMES, UNSIGNED_VIEW, is_tensor, signed_bits
from ..errors import BadInput, NactError, first_line
from ..remote.objects import RemotePath
from .base import LOADED, ShardPath, TensorEntry, TensorSlab, local_file

if TYPE_CHECKING:
    import torch

FORMAT = "torch"
FORMATS = (FORMAT,)
SUFFIXES = {".pt": FORMAT, ".pth": FORMAT}


LEGACY_MAX_BYTES = 1 << 30  # legacy (non-zip) files load whole: larger ones are refused


def load(path: Path) -> object:
    """The object in a torch.save file, loaded safely, or BadInput saying why it cannot be."""
    try:
        import torch  # seconds to import, and optional: only files torch_zip cannot map need it
    except ImportError:
        raise NactError(f"{path}: reading .pt files needs PyTorch: pip install torch") from None
    import pickle  # loaded by torch already (zipfile ~4 ms otherwise): kept off other formats' scans
    import zipfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own warnings would add lines to a one-line error
        try:
            if not zipfile.is_zipfile(path):
                size = path.stat().st_size
                if size > LEGACY_MAX_BYTES:
                    raise BadInput(
                        path,
                        f"a legacy (non-zip) torch.save file of {size} bytes loads whole: nact reads such files up "
                        f"to {LEGACY_MAX_BYTES} bytes; save it again with a current torch.save",
                    )
                return torch.load(path, map_location="cpu", weights_only=True)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            raise BadInput(
                path, f"refused: it needs unsafe unpickling, and nact loads only tensors ({first_line(e)})"
            ) from None
        except RecursionError:
            raise BadInput(path, "not a readable torch.save file: nested too deeply") from None
        except NactError:
            raise
        except Exception as e:  # torch's reader raises many kinds on a corrupt file
            raise BadInput(path, f"not a readable torch.save file: {first_line(e)}") from None


def tensors(obj: object, path: ShardPath | None = None) -> dict[str, torch.Tensor]:
    """Every tensor in ``obj`` by dotted path; sparse and other layouts are refused."""
    import torch  # loaded already: the object came from torch.load (this module never imports it up front: ~3 s)

    from .torch_zip import walk  # pickle and zipfile (~4 ms): loaded for .pt files only

    found = walk(obj, is_tensor, path)
    for prefix, value in found.items():
        if value.layout != torch.strided:
            raise BadInput(
                path or "", f"tensor {prefix or '(the file)'!r} is {value.layout}: nact counts dense tensors"
            )
    return found


def entries(paths: list[ShardPath]) -> list[TensorEntry]:
    """Entries of each file: read without torch where the file allows (see ``torch_zip``: its
    tensors are then mapped in place), else loaded with torch."""
    out = []
    from . import torch_zip  # as in tensors()

    for path in paths:
        mapped = torch_zip.entries(path, FORMAT)
        if mapped is not None:
            out += mapped
            continue
        if isinstance(path, RemotePath):
            raise BadInput(
                path,
                "this .pt file needs torch to load it whole (legacy, compressed or not plain tensors): download it first",
            )
        found = tensors(load(path), path)
        if not found:
            raise BadInput(path, "holds no tensors")
        for member, t in found.items():
            dtype = TORCH_NAMES.get(str(t.dtype).removeprefix("torch."), str(t.dtype))
            shape = tuple(t.shape)
            key, from_file = (member, False) if member else (path.stem, True)
            out.append(TensorEntry(path, key, dtype, shape, FORMAT, member=member, storage=LOADED, from_file=from_file))
    return out


def chunks(slab: TensorSlab, chunk_rows: int) -> Iterator[np.ndarray]:
    tensor = tensors(load(local_file(slab.path)), slab.path)[slab.entry.member or ""]
    if slab.index is not None:  # the first axis is the component axis: this slab is one block
        tensor = tensor[slab.index]
    rows = tensor.reshape(slab.num_rows, slab.width)
    unsigned = UNSIGNED_VIEW[rows.element_size()]
    for start in range(0, slab.num_rows, chunk_rows):
        yield signed_bits(rows[start : start + chunk_rows].contiguous()).numpy().view(unsigned)
