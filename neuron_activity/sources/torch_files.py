"""Files written by ``torch.save``: a tensor, or (nested) dicts and lists of tensors.

They are loaded with ``weights_only=True`` (no pickled code ever runs) and ``mmap=True`` (tensor
data stays on disk until read). Importing torch costs seconds, so only these files pay for it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
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


READS = "nact reads tensors, dicts and lists of tensors, and TransformerLens ActivationCache objects"


def load(path: Path) -> object:
    """The object in a torch.save file, loaded safely, or BadInput saying why it cannot be."""
    from .torch_zip import ACTIVATION_CACHE, unknown_global  # as in tensors()

    stranger = unknown_global(path)
    if stranger is not None and stranger != ACTIVATION_CACHE and not stranger.startswith("torch."):
        raise BadInput(path, f"its pickle names {stranger}, which nact does not run: {READS}")  # as torch.load would
    try:
        import torch  # seconds to import, and optional: only files torch_zip cannot map need it
    except ImportError:
        raise NactError(f"{path}: reading .pt files needs PyTorch: pip install 'nact[torch]'") from None
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
            if stranger == ACTIVATION_CACHE:
                return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_inert(), mmap=True)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:  # torch's message is pages long, with terminal escapes
            named = f"its pickle names {stranger}, which" if stranger else "it needs unsafe unpickling, which"
            raise BadInput(path, f"{named} nact does not run: {READS}") from None
        except RecursionError:
            raise BadInput(path, "not a readable torch.save file: nested too deeply") from None
        except NactError:
            raise
        except Exception as e:  # torch's reader raises many kinds on a corrupt file
            raise BadInput(path, f"not a readable torch.save file: {first_line(e)}") from None


def _inert() -> ModuleType:
    """A pickle module for ``torch.load`` whose unpickler builds tensors with torch's own
    functions (those ``weights_only`` allows) and every other global as an inert stand-in that
    is never called: an ActivationCache saved whole (with its model) loads without any of it
    running, and the model's weights stay mapped, unread."""
    import pickle  # loaded by torch already

    from .torch_zip import TENSOR_GLOBALS, stranger  # as in tensors()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            full = f"{module}.{name}"
            return super().find_class(module, name) if full in TENSOR_GLOBALS else stranger(full)

    module = ModuleType("pickle")  # torch.load takes the module's Unpickler (and load, for legacy files)
    setattr(module, "Unpickler", Unpickler)  # noqa: B010 (a module built here: its attributes are not declared)
    setattr(module, "load", pickle.load)  # noqa: B010
    return module


def tensors(obj: object, path: ShardPath | None = None) -> dict[str, torch.Tensor]:
    """Every tensor in ``obj`` by dotted path (of an ActivationCache, its ``cache_dict``'s);
    sparse and other layouts are refused."""
    import torch  # loaded already: the object came from torch.load (this module never imports it up front: ~3 s)

    from .torch_zip import activation_cache, walk  # pickle and zipfile (~4 ms): loaded for .pt files only

    found = walk(activation_cache(obj) or obj, is_tensor, path)
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
