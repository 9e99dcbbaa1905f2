"""The pickle of a zip-format ``torch.save`` file read by a restricted unpickler, for checkpoints
whose pickle holds more than tensors (strings, numbers, nested dicts, a pydantic model).

Nothing of the file runs. The unpickler of ``sources.torch_zip`` knows the globals that rebuild
tensors and containers, and here also the few a caller allows; a tensor becomes a ``TensorRef``
(where its numbers lie in the archive), an object of an allowed class an inert ``Record`` of the state the pickle gave it, and
any other global is refused with its name (``Refused``). Tensors are read afterwards, each when it
is asked for (``Pickled.array``), in float32, from the part of its storage it spans. ``names``
tells a family's files apart by what their pickle names, from its opcodes alone.
"""

from __future__ import annotations

import math
import pickletools
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..dtypes import ITEMSIZE
from ..errors import BadInput, first_line
from ..memory import check_fits
from ..sources.torch_zip import MAX_PICKLE_BYTES, PickleTooLarge, TensorRef, Unpickler
from .files import as_float32

PICKLE_MAGIC = b"\x80"  # a legacy torch.save file starts with a pickle (of its magic number)


class Refused(BadInput):
    """A pickle that names a global nact does not allow; ``name`` is the global (``module.name``)."""

    def __init__(self, path: object, name: str, allowed: str) -> None:
        self.name = name
        super().__init__(path, f"its pickle names {name}, which nact does not run: {allowed}")


class Record:
    """An object of a class the caller allows, inert: the state the pickle gave it (``BUILD``);
    none of the class's code exists here. ``name`` is the global it stands for."""

    name: ClassVar[str] = ""
    state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


def records(*names: str) -> dict[str, type[Record]]:
    """A ``Record`` class for each global ``module.Name``, to allow them in ``load``."""
    return {name: type(name.rpartition(".")[2], (Record,), {"name": name}) for name in names}


@dataclass(frozen=True)
class Pickled:
    """What a ``torch.save`` file's pickle holds (``root``: dicts, lists, numbers, strings,
    ``TensorRef`` and ``Record`` objects), and the archive its tensors are read from."""

    path: Path
    root: object
    folder: str  # the archive's folder: its members are <folder>data.pkl, <folder>data/<key>

    def refs(self, tensors: Mapping[Any, object], shapes: Mapping[str, tuple[int, ...]]) -> list[TensorRef]:
        """The tensors of ``tensors`` named in ``shapes``, each checked to have its shape (not read)."""
        out = []
        for key, shape in shapes.items():
            value = tensors.get(key)
            if not isinstance(value, TensorRef):
                have = sorted(k for k, v in tensors.items() if isinstance(v, TensorRef))
                raise BadInput(self.path, f"has no tensor {key!r} (it has {', '.join(have) or 'none'})")
            if value.size != shape:
                raise BadInput(self.path, f"tensor {key!r} has shape {list(value.size)}, expected {list(shape)}")
            out.append(value)
        return out

    def array(self, tensor: TensorRef, key: str) -> np.ndarray:
        """The tensor (named ``key`` in messages) in float32, read from the part of its storage it
        spans."""
        count = math.prod(tensor.size)
        if not count:
            return np.zeros(tensor.size, np.float32)
        itemsize = ITEMSIZE[tensor.dtype]
        first = tensor.offset
        span = 1 + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))  # elements, from the first
        try:
            with zipfile.ZipFile(self.path) as z:
                try:
                    info = z.getinfo(f"{self.folder}data/{tensor.storage}")
                except KeyError:
                    raise BadInput(self.path, f"tensor {key!r} has no storage in the archive") from None
                if (first + span) * itemsize > info.file_size:
                    raise BadInput(self.path, f"tensor {key!r} lies beyond its storage ({info.file_size} bytes)")
                check_fits(self.path, f"tensor {key!r} of shape {list(tensor.size)}", (itemsize + 4) * span + 4 * count)
                with z.open(info) as member:
                    member.seek(first * itemsize)
                    raw = member.read(span * itemsize)
        except (OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:  # zipfile's errors
            raise BadInput(self.path, f"tensor {key!r} cannot be read: {first_line(e)}") from None
        if len(raw) != span * itemsize:
            raise BadInput(self.path, f"truncated: tensor {key!r}")
        values = as_float32(raw, tensor.dtype, (span,), self.path, key)
        strides = tuple(4 * s for s in tensor.stride)
        view = np.lib.stride_tricks.as_strided(values, tensor.size, strides, writeable=False)
        return view if view.flags.c_contiguous else view.copy()


def load(path: Path, allowed: Mapping[str, object], refusal: str) -> Pickled:
    """The pickle of the zip-format ``torch.save`` file ``path``, read with the globals of tensors
    and ``allowed`` (``module.name``: what stands for it); any other global is ``Refused``, with
    ``refusal`` saying what the file should name."""
    try:
        with zipfile.ZipFile(path) as z:
            member = _pickle_member(z)
            if member is None:
                raise BadInput(path, "a zip archive that is not a torch.save file (it has no one data.pkl)")
            folder = member[: -len("data.pkl")]
            if z.getinfo(member).file_size > MAX_PICKLE_BYTES:
                raise PickleTooLarge(path, z.getinfo(member).file_size)
            if f"{folder}byteorder" in z.namelist() and z.read(f"{folder}byteorder").strip() != b"little":
                raise BadInput(path, "a big-endian torch.save file: load it with torch and save it again")
            data = z.read(member)
    except zipfile.BadZipFile:
        raise BadInput(path, _not_a_zip(path)) from None
    except IsADirectoryError:
        raise BadInput(path, "a folder, not a torch.save file") from None
    except FileNotFoundError:
        raise BadInput(path, "no such file") from None
    except (OSError, EOFError, RuntimeError, NotImplementedError) as e:  # an encrypted or unknown compression
        raise BadInput(path, f"cannot read: {first_line(e)}") from None
    try:
        root = Unpickler(data, allowed, lambda name: Refused(path, name, refusal)).load()
    except Refused:
        raise
    except Exception as e:  # the pickle is the file's: whatever fails in it is a corrupt file
        raise BadInput(path, f"a corrupt torch.save pickle: {first_line(e)}") from None
    return Pickled(path, root, folder)


@dataclass(frozen=True)
class Names:
    """What a pickle names, found by reading its opcodes (nothing runs, no tensor is read): its
    globals (``module.name``) and its strings (dict keys and values alike)."""

    globals: frozenset[str]
    strings: frozenset[str]


def names(path: Path) -> Names | None:
    """The names in the pickle of the zip-format ``torch.save`` file ``path`` (up to where a
    corrupt pickle stops making sense); None when it is not one, or cannot be read."""
    try:
        with zipfile.ZipFile(path) as z:
            member = _pickle_member(z)
            if member is None or z.getinfo(member).file_size > MAX_PICKLE_BYTES:
                return None
            data = z.read(member)
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError):
        return None
    found: set[str] = set()
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL" and isinstance(arg, str):
                found.add(arg.replace(" ", ".", 1))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                strings.append(str(arg))
    except Exception:  # the pickle is the file's: what it names up to where it breaks is what it names
        pass
    return Names(frozenset(found), frozenset(strings))


def _pickle_member(z: zipfile.ZipFile) -> str | None:
    """The archive's ``data.pkl`` (``<folder>/data.pkl``), if it has exactly one."""
    pickles = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    return pickles[0] if len(pickles) == 1 else None


def _not_a_zip(path: Path) -> str:
    """What a file that is not a zip archive is, said for a ``torch.save`` reader."""
    with open(path, "rb") as f:
        start = f.read(4)
    if start.startswith(b"PK"):
        return "truncated or corrupt: a zip archive without its directory (download or save it again)"
    if start.startswith(PICKLE_MAGIC):
        return (
            "a torch.save file in the legacy format (torch < 1.6): nact reads the zip format; "
            "load it with torch and save it again"
        )
    return "not a torch.save file (not a zip archive)"
