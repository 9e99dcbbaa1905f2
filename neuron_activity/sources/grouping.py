"""Which files make one component, and what it is called: the rules, in one place.

``auto`` (the default):

- Files in different folders are different components. A component is named by its key alone
  unless the same key is in several folders: only then is its folder (relative to the folder
  all inputs share) part of its name, so a component keeps its name whatever else is scanned
  with it. Folders that are themselves numbered shards (``0/``, ``shard_3/``, ``part-0001/``)
  are never part of a name.
- Within a folder, the same key in several files is one component (its shards).
- A generic key (``activations``, a bare array's ``arr_0``, a file named only by a number) takes
  its folder's name.
- A file that holds one array (``.npy``, a bare ``torch.save`` tensor) is named by its file name.
  A number at the end of the name is a **layer** (kept: ``layer_0``, ``mlp.3`` and ``resid-12``
  are components of their own) when a layer word comes before it (layer, layers, block, blocks,
  h, l, resid, mlp, attn, ...) or when it is not zero-padded; it is a **shard number** (dropped:
  ``acts_000`` … ``acts_009`` are one component ``acts``) when it is zero-padded or follows a
  shard word (shard, part, chunk, batch, split, file). Unpadded numbers after other words are
  taken as layers, and the scan says so.

``key``: the key alone names a component, across files and folders, every trailing number of a
file name dropped (nact 0.1's rule). ``file``: every file is its own component. ``folder``:
one component per folder and key, numbered folders included.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from .base import ShardPath

Grouping = Literal["auto", "key", "file", "folder"]
GROUPINGS: tuple[Grouping, ...] = get_args(Grouping)
GENERIC_KEYS = frozenset({"activations", "arr_0", ""})
FILE_KEY = "activations"  # the key of a single-array file named only by a number
LAYER_WORDS = frozenset(
    {
        "layer",
        "layers",
        "block",
        "blocks",
        "h",
        "l",
        "resid",
        "mlp",
        "attn",
        "head",
        "heads",
        "hook",
        "encoder",
        "decoder",
    }
)
SHARD_WORDS = frozenset(
    {"shard", "shards", "part", "parts", "chunk", "chunks", "batch", "batches", "split", "file", "step"}
)
_TRAILING_NUMBER = re.compile(r"^(.*?)([-_.]?)(\d+)$")
_WORDS = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True, slots=True)
class StemName:
    """A single-array file's name as a key: ``key``, and whether its trailing number was taken
    as a layer only because it was not zero-padded (``ambiguous``)."""

    key: str
    ambiguous: bool = False


def stem_key(stem: str, grouping: Grouping = "auto") -> StemName:
    """The component key of a single-array file named ``stem`` (see the module's rules)."""
    match = _TRAILING_NUMBER.match(stem)
    if match is None:
        return StemName(stem)
    head, _, digits = match.groups()
    words = _WORDS.findall(head)
    if not words:
        return StemName(FILE_KEY)  # only a number (and punctuation)
    if grouping == "key":
        return StemName(head.rstrip("-_.") or FILE_KEY)
    last = words[-1].lower()
    if last in LAYER_WORDS:
        return StemName(stem)
    if last in SHARD_WORDS or (len(digits) > 1 and digits.startswith("0")):
        return StemName(head.rstrip("-_.") or FILE_KEY)
    return StemName(stem, ambiguous=grouping == "auto")


def is_numbered_folder(name: str) -> bool:
    """A folder that is one numbered shard of a sequence: ``0``, ``007``, ``shard_3``, ``part-1``."""
    if name.isdigit():
        return True
    match = _TRAILING_NUMBER.match(name)
    return match is not None and match.group(1).rstrip("-_.").lower() in SHARD_WORDS


def common_folder(files: list[ShardPath]) -> ShardPath:
    """The deepest folder that holds every file."""
    parents = [str(p.parent.absolute()) for p in files]
    return type(files[0])(os.path.commonpath(parents)) if parents else Path(".")


def scope(file: ShardPath, root: ShardPath, grouping: Grouping) -> str:
    """The folder part of a component's name for ``file``: its folders below ``root``, less
    numbered shard folders (``auto``); all of them (``folder``, ``file``); none (``key``)."""
    if grouping == "key":
        return ""
    try:
        parts = file.parent.absolute().relative_to(root).parts
    except ValueError:
        parts = file.parent.parts
    if grouping == "auto":
        parts = tuple(p for p in parts if not is_numbered_folder(p))
    return "/".join(parts)


def component_names(found: list[tuple[str, ShardPath, bool]], grouping: Grouping) -> list[str]:
    """The names of the components of ``found``'s (key, file, whole_file) entries: under
    ``auto`` a key's folder only where the same key is in several folders."""
    root = common_folder([file for _, file, _ in found])
    folders: dict[str, set[str]] = {}
    for key, file, _ in found:
        folders.setdefault(key, set()).add(scope(file, root, grouping))
    return [
        key
        if grouping == "auto" and key not in GENERIC_KEYS and len(folders[key]) == 1
        else component_name(key, file, root, grouping, whole_file)
        for key, file, whole_file in found
    ]


def component_name(key: str, file: ShardPath, root: ShardPath, grouping: Grouping, whole_file: bool) -> str:
    """The name of the component that ``key`` in ``file`` belongs to, its folder part of it.
    ``whole_file``: the key was made from the file's name (a single-array file)."""
    if grouping == "file":
        try:
            rel = file.absolute().relative_to(root)
        except ValueError:
            rel = file
        stem = str(rel.with_suffix(""))
        return stem if whole_file else f"{stem}/{key}"
    folder = scope(file, root, grouping)
    if key in GENERIC_KEYS:
        return folder or (file.parent.absolute().name or key)
    return f"{folder}/{key}" if folder else key
