"""``torch.save`` files read without torch: a restricted unpickler and storages mapped in place.

A zip-format ``torch.save`` file holds a pickle (``data.pkl``) that rebuilds tensors from
storages kept as uncompressed members (``data/<key>``). The unpickler here knows only the few
globals that rebuild plain tensors and containers (``_rebuild_tensor_v2``/``v3``,
``_rebuild_parameter``, ``OrderedDict``, storage types, dtypes), and they build descriptions,
never objects of the file's choosing: nothing in the file runs, as with
``torch.load(weights_only=True)``. A tensor whose storage is stored uncompressed, little-endian
and whose elements lie contiguously in row-major order becomes a mapped entry, counted like a
safetensors tensor. Anything else (another global, a compressed member, a strided view, a legacy
file) makes ``entries`` return None, and the caller loads the file with torch instead.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeGuard, TypeVar

from ..dtypes import ITEMSIZE, TORCH_NAMES
from ..errors import BadInput, NactError
from ..remote.objects import RemotePath
from .base import MAPPED, ShardPath, TensorEntry, open_shard

MAX_NESTING = 64  # containers within containers
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # a pickle describes the tensors (100,000 take ~20 MB): larger is a zip bomb
MAX_TENSORS = 100_000
STORAGE_TYPES = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "IntStorage": "I32",
    "LongStorage": "I64",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")


class Unsupported(Exception):
    """The file needs torch to be read (not an error: the caller falls back)."""


class PickleTooLarge(BadInput):
    """A pickle that inflates past ``MAX_PICKLE_BYTES``: refused before it is read (torch would
    read it whole)."""

    def __init__(self, path: object, size: int) -> None:
        super().__init__(
            path,
            f"its pickle (data.pkl) inflates to {size} bytes, more than {MAX_PICKLE_BYTES >> 20} MiB: not a "
            "torch.save file of tensors",
        )


@dataclass(frozen=True)
class _Named:
    """A storage type or dtype the pickle names: only its name is kept."""

    name: str


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str | None  # None: an untyped storage (the tensor names its dtype)


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor of the file, not read: its storage (the member ``data/<storage>``), its dtype
    (nact's name) and its view of the storage, in elements."""

    storage: str
    dtype: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def select(self, index: int) -> TensorRef:
        """The tensor's ``index``-th entry along its first axis (as ``tensor[index]``)."""
        return TensorRef(self.storage, self.dtype, self.offset + index * self.stride[0], self.size[1:], self.stride[1:])


def _ints(values: object) -> tuple[int, ...]:
    if not isinstance(values, tuple) or not all(type(v) is int and v >= 0 for v in values):
        raise ValueError(f"a tensor's size or stride is {values!r:.60}")
    return values


def _tensor(storage: object, offset: object, size: object, stride: object, dtype: str | None) -> TensorRef:
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0 or dtype is None:
        raise ValueError("a tensor without a typed storage")
    size, stride = _ints(size), _ints(stride)
    if len(size) != len(stride):
        raise ValueError(f"a tensor of size {list(size)} and stride {list(stride)}")
    return TensorRef(storage.key, dtype, offset, size, stride)


def _rebuild_v2(storage: object, offset: object, size: object, stride: object, *rest: object) -> TensorRef:
    return _tensor(storage, offset, size, stride, storage.dtype if isinstance(storage, _Storage) else None)


def _rebuild_v3(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    hooks: object,
    dtype: object,
    *rest: object,
) -> TensorRef:
    name = TORCH_NAMES.get(dtype.name) if isinstance(dtype, _Named) else None
    return _tensor(storage, offset, size, stride, name)


def _rebuild_parameter(data: object, *rest: object) -> object:
    return data


# the globals that rebuild tensors and containers, by module.name: what stands for each
TENSOR_GLOBALS: dict[str, object] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "torch.storage.UntypedStorage": _Named("UntypedStorage"),
    **{f"torch.{name}": _Named(name) for name in (*STORAGE_TYPES, *TORCH_NAMES)},
}


def _unsupported(name: str) -> Exception:
    return Unsupported(name)


class Stranger:
    """An object of a class nact does not know, inert: the global it stands for, the arguments
    the pickle gave it and the state it set (nothing of the class runs, nor exists here)."""

    name = ""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs = args, kwargs
        self.state: object = None
        self.items: list[object] = []

    def __setstate__(self, state: object) -> None:
        self.state = state

    def append(self, item: object) -> None:  # a list subclass's APPENDS
        self.items.append(item)

    def extend(self, items: list[object]) -> None:
        self.items.extend(items)

    def __setitem__(self, key: object, value: object) -> None:  # a dict subclass's SETITEMS
        self.items.append((key, value))


def stranger(name: str) -> type[Stranger]:
    """An inert stand-in class for the global ``name`` (``module.name``)."""
    return type(name.rpartition(".")[2] or "Stranger", (Stranger,), {"name": name})


ACTIVATION_CACHE = "transformer_lens.ActivationCache.ActivationCache"


class Unpickler(pickle.Unpickler):
    """Rebuilds a ``torch.save`` pickle as descriptions: tensors as ``TensorRef``, the globals of
    ``allowed`` (``module.name``) as what stands for them; any other global raises ``refuse(name)``."""

    def __init__(
        self,
        data: bytes,
        allowed: Mapping[str, object] | None = None,
        refuse: Callable[[str], Exception] = _unsupported,
        inert: bool = False,
    ) -> None:
        super().__init__(io.BytesIO(data))
        self.allowed, self.refuse, self.inert = allowed or {}, refuse, inert
        self.strangers: dict[str, type[Stranger]] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in TENSOR_GLOBALS:
            return TENSOR_GLOBALS[full]
        if full in self.allowed:
            return self.allowed[full]
        if self.inert:  # every other global an inert stand-in: nothing it names is called
            return self.strangers.setdefault(full, stranger(full))
        raise self.refuse(full)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"a persistent id {pid!r:.60}")
        _, kind, key, _location, _numel = pid
        if not isinstance(kind, _Named) or not isinstance(key, str):
            raise ValueError("a storage without a type or key")
        return _Storage(key, STORAGE_TYPES.get(kind.name))


def _row_major(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(size), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _member_data(raw: BinaryIO, info: zipfile.ZipInfo) -> int:
    raw.seek(info.header_offset)
    signature, name_len, extra_len = ZIP_LOCAL_HEADER.unpack(raw.read(ZIP_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise Unsupported("local header")
    return int(info.header_offset + ZIP_LOCAL_HEADER.size + name_len + extra_len)


def _is_tensor(value: object) -> TypeGuard[TensorRef]:
    return isinstance(value, TensorRef)


Leaf = TypeVar("Leaf")


def walk(obj: object, is_leaf: Callable[[object], TypeGuard[Leaf]], path: ShardPath | None = None) -> dict[str, Leaf]:
    """Every leaf in ``obj`` by dotted path (``""`` for a bare leaf): dict keys and list indices,
    in order, found without recursion; containers nested deeper than ``MAX_NESTING`` are refused."""
    found: dict[str, Leaf] = {}
    stack: list[tuple[str, object, int]] = [("", obj, 0)]
    while stack:
        prefix, value, depth = stack.pop()
        if is_leaf(value):
            found[prefix] = value
            if len(found) > MAX_TENSORS:
                raise BadInput(path or "", f"holds more than {MAX_TENSORS} tensors")
            continue
        if isinstance(value, dict):
            items = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(str(i), v) for i, v in enumerate(value)]
        else:
            continue
        if depth >= MAX_NESTING:
            raise BadInput(path or "", f"containers nested deeper than {MAX_NESTING} levels")
        for name, item in reversed(items):
            stack.append((f"{prefix}.{name}" if prefix else name, item, depth + 1))
    return found


def entries(path: ShardPath, fmt: str) -> list[TensorEntry] | None:
    """The tensors of a zip-format ``torch.save`` file as mapped entries, or None when the file
    needs torch (see the module's docstring). A remote object's zip directory and pickle are
    read by range requests."""
    try:
        with open_shard(path) as raw:
            if not zipfile.is_zipfile(raw):
                return None
            return _entries(path, fmt, raw)
    except PickleTooLarge:
        raise  # torch would inflate it whole
    except NactError:
        if isinstance(path, RemotePath):
            raise  # an object that cannot be read says so; torch cannot read it either
        return None
    except Exception:  # anything unusual: torch reads it (and refuses what is unsafe)
        return None


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numbers(path: ShardPath) -> dict[str, int | float]:
    """The numbers kept beside the tensors of a zip-format ``torch.save`` file (a training
    run's step, a normalisation factor, ...) by dotted path; empty when the file needs torch."""
    try:
        with open_shard(path) as raw, zipfile.ZipFile(raw) as z:
            loaded = _load(z, path)
    except Exception:  # not a file this reader knows: it holds no numbers it can tell
        return {}
    return walk(loaded[0], _is_number, path) if loaded is not None else {}


def _load(z: zipfile.ZipFile, path: ShardPath) -> tuple[object, str] | None:
    """The pickle of a ``torch.save`` zip, unpickled into descriptions, and its members' prefix."""
    names = z.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        return None
    size = z.getinfo(pickles[0]).file_size  # zipfile reads no more than this
    if size > MAX_PICKLE_BYTES:
        raise PickleTooLarge(path, size)
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and z.read(f"{prefix}byteorder").strip() != b"little":
        return None
    data = z.read(pickles[0])
    try:
        return Unpickler(data).load(), prefix
    except Unsupported:
        cache = activation_cache(Unpickler(data, inert=True).load())
        if cache is None:
            raise
        return cache, prefix


def activation_cache(root: object) -> dict[object, object] | None:
    """The tensors of a TransformerLens ``ActivationCache`` saved whole (``torch.save(cache)``):
    its ``cache_dict``, read from the inert stand-in of the object; the model it drags along is
    left unread. None when ``root`` is not one."""
    if not (isinstance(root, Stranger) and root.name == ACTIVATION_CACHE and isinstance(root.state, dict)):
        return None
    tensors = root.state.get("cache_dict")
    return tensors if isinstance(tensors, dict) else None


def unknown_global(path: ShardPath) -> str | None:
    """The first global a zip-format ``torch.save`` file's pickle names that is not a tensor's or
    a container's (``module.name``; an ActivationCache's is one); None when there is none."""
    try:
        with open_shard(path) as raw, zipfile.ZipFile(raw) as z:
            pickles = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1 or z.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
                return None
            Unpickler(z.read(pickles[0])).load()
    except Unsupported as e:
        return str(e)
    except Exception:  # not a file this reader can tell about
        return None
    return None


def _entries(path: ShardPath, fmt: str, raw: BinaryIO) -> list[TensorEntry] | None:
    with zipfile.ZipFile(raw) as z:
        loaded = _load(z, path)
        if loaded is None:
            return None
        tree, prefix = loaded
        found = walk(tree, _is_tensor, path)
        out = []
        for member, t in found.items():
            info = z.getinfo(f"{prefix}data/{t.storage}")
            itemsize = ITEMSIZE[t.dtype]
            count = math.prod(t.size)
            if info.compress_type != zipfile.ZIP_STORED or not _row_major(t.size, t.stride):
                return None
            if (t.offset + count) * itemsize > info.file_size:
                return None
            start = _member_data(raw, info) + t.offset * itemsize
            key, from_file = (member, False) if member else (path.stem, True)
            out.append(
                TensorEntry(
                    path, key, t.dtype, t.size, fmt, offset=start, member=member, storage=MAPPED, from_file=from_file
                )
            )
    return out or None
