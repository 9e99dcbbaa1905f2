"""Finding shards: files under folders (or objects under a prefix) that nact can read, in
natural path order, with their formats and notes on what was skipped."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import BadInput
from ..remote.objects import RemotePath, current, prefetch_heads, session
from . import arrow_files
from .base import ShardPath, natural_key
from .registry import REMOTE_FORMATS, SUFFIX_FORMATS, InputFormat, detect
from .safetensors_files import is_counts_file


class Shards(dict[ShardPath, str]):
    """Shard files and their formats, in natural path order, with notes on what was skipped."""

    def __init__(
        self, items: dict[ShardPath, str], notes: list[str] | None = None, named: set[ShardPath] | None = None
    ) -> None:
        super().__init__(items)
        self.notes = list(notes or [])
        self.named = frozenset(named or ())  # files named one by one, not found in a folder


SAE_CHECKPOINTS = {  # an SAE file's name -> (the config beside it that makes it one, or None: its name does; what it is)
    "sae_weights.safetensors": ("cfg.json", "a SAELens SAE checkpoint"),
    "sae.safetensors": ("cfg.json", "a sparsify SAE checkpoint"),
    "sparsity.safetensors": (None, "a SAELens feature-sparsity file"),
    "params.npz": (None, "a Gemma Scope SAE checkpoint"),
    "params.safetensors": ("config.json", "a Gemma Scope 2 SAE checkpoint"),
    "ae.pt": ("config.json", "a dictionary_learning SAE checkpoint"),
}
RUN_CHECKPOINTS = {  # a file of a training run's checkpoints/ folder: its suffix -> the run's config, what it is
    ".pt": ("config.json", "a dictionary_learning SAE checkpoint"),
    ".safetensors": ("hyperparams.json", "a Llama Scope SAE checkpoint"),
}


def sae_checkpoint(path: ShardPath, exists: Callable[[ShardPath], bool] | None = None) -> str | None:
    """What kind of SAE file ``path`` is (weights or sparsity, not activations), or None; told by
    its name and the config beside it (``exists``: whether a file is there; a local file's
    ``is_file`` when not given)."""
    there = exists or (lambda p: p.is_file())
    config, kind = SAE_CHECKPOINTS.get(path.name, ("", ""))
    if kind and (config is None or there(path.parent / config)):
        return kind
    if path.parent.name == "checkpoints" and path.suffix in RUN_CHECKPOINTS:
        config, kind = RUN_CHECKPOINTS[path.suffix]
        if there(path.parent.parent / config):
            return kind
    return None


def _refuse_sae(path: ShardPath, kind: str) -> BadInput:
    return BadInput(path, f"{kind}, not activations: scan the cache of activations the SAE reads")


def discover(paths: list[ShardPath], input_format: InputFormat | None = None) -> Shards:
    """Shard files under ``paths`` with their formats, in natural path order.

    Directories are searched recursively for files nact can read; hidden files and folders
    (dot names) are skipped, and so are saved counts (an audit's state), both with a note. A
    saved ``datasets`` folder gives only the files its ``state.json`` lists. An SAE checkpoint
    is refused. Files of several formats are each read by their own (a folder's with a note);
    ``input_format`` picks one (files named on the command line are then read as that format).
    A delphi run's folder gives its ``latents/``.
    """
    found: dict[ShardPath, str] = {}
    notes: list[str] = []
    named: set[ShardPath] = set()
    remote = [p for p in paths if isinstance(p, RemotePath)]
    if remote and len(remote) < len(paths):
        raise BadInput(remote[0], "remote objects and local files cannot be scanned together: give one kind")
    for path in paths:
        if isinstance(path, RemotePath):
            with session():  # the prefix's listing answers the checks of its objects (or the open scan's does)
                _discover_remote(path, input_format, found, notes, named)
        elif path.is_dir():
            try:
                files, hidden, counts = _files_under(path)
            except OSError as e:
                raise BadInput(e.filename or path, f"cannot list: {e.strerror or e}") from None
            formats = {p: detect(p) for p in files}
            if input_format is not None:
                other = sorted({f for f in formats.values() if f != input_format})
                formats = {p: f for p, f in formats.items() if f == input_format}
                if not formats and other:
                    raise BadInput(path, f"no {input_format} shards found (it holds {', '.join(other)} files)")
            if not formats:
                wanted = f"{input_format} " if input_format else ""
                raise BadInput(path, f"no {wanted}shards found ({', '.join(sorted(SUFFIX_FORMATS))} files)")
            formats, note = _one_run(path, formats)
            notes += [note] if note else []
            found.update(formats)
            notes += _skipped(path, hidden, "file(s) or folder(s)", counts, "file(s)")
        elif path.is_file():
            if path.suffix == ".safetensors" and is_counts_file(path):
                raise BadInput(path, "saved counts, not activations: read it with nact report or nact density")
            kind = sae_checkpoint(path)
            if kind is not None:
                raise _refuse_sae(path, kind)
            found[path] = input_format if input_format is not None else detect(path)
            named.add(path)
        elif path.exists():
            raise BadInput(path, "not a regular file or directory")
        else:
            raise BadInput(path, "no such file or directory")
    return Shards({p: found[p] for p in sorted(found, key=natural_key)}, notes, named)


def _one_run(folder: Path, formats: dict[ShardPath, str]) -> tuple[dict[ShardPath, str], str | None]:
    """A folder's files to read, and what to say of them: a delphi run's folder (its ``latents/``
    beside ``log/`` and the like) gives its latents; files of several formats are each read as
    their own, and said so."""
    latents = folder / "latents"
    kinds = set(formats.values())
    if "delphi" in kinds and len(kinds) > 1 and latents.is_dir():
        kept = {p: f for p, f in formats.items() if latents in Path(p).parents}
        if kept and set(kept.values()) == {"delphi"}:
            left = len(formats) - len(kept)
            return kept, f"{folder}: a delphi run: read its latents/ ({left} other file(s) left out)"
    if len(kinds) < 2:
        return formats, None
    listed = ", ".join(f"{sum(1 for f in formats.values() if f == k)} {k}" for k in sorted(kinds))
    return formats, f"{folder}: holds files of several formats ({listed}): each is read as its own"


def _discover_remote(
    path: RemotePath,
    input_format: InputFormat | None,
    found: dict[ShardPath, str],
    notes: list[str],
    named: set[ShardPath],
) -> None:
    """The remote twin of a folder search: ``path`` is an object, or a prefix listed as a folder
    (natural order, hidden objects skipped, saved counts skipped, SAE checkpoints refused)."""
    objects, hidden = current().listing(path)
    alone = objects == [path]
    prefetch_heads([o for o in objects if alone or o.suffix in SUFFIX_FORMATS])
    names = set(objects)
    formats: dict[ShardPath, str] = {}
    counts: list[ShardPath] = []
    datasets: dict[ShardPath, list[ShardPath] | None] = {}
    for obj in objects:
        kind = sae_checkpoint(obj, names.__contains__)
        if kind is not None:
            raise _refuse_sae(obj.parent, kind)
        if not alone and obj.suffix not in SUFFIX_FORMATS:
            continue
        fmt = input_format if input_format and alone else detect(obj)
        if input_format is not None and fmt != input_format:
            continue
        if fmt not in REMOTE_FORMATS:
            raise BadInput(
                obj,
                f"{fmt} files are read from local files only: download it first (remote: {', '.join(REMOTE_FORMATS)})",
            )
        if fmt == "arrow" and not alone:  # a saved datasets folder: only the files its state.json lists
            if obj.parent not in datasets:
                datasets[obj.parent] = arrow_files.dataset_files(obj.parent)
            data_files = datasets[obj.parent]
            if data_files is not None and obj not in data_files:
                continue
        if obj.suffix == ".safetensors" and is_counts_file(obj):
            if alone:
                raise BadInput(obj, "saved counts, not activations: read it with nact report or nact density")
            counts.append(obj)
            continue
        formats[obj] = fmt
    if not formats:
        kind = f"{input_format} " if input_format else ""
        raise BadInput(path, f"no {kind}shards found ({', '.join(REMOTE_FORMATS)} objects)")
    found.update(formats)
    if alone:
        named.add(path)
    notes += _skipped(path, hidden, "object(s)", counts, "object(s)")


def _skipped(path: ShardPath, hidden: int, hidden_things: str, counts: list[ShardPath], count_things: str) -> list[str]:
    """The notes of a folder (or prefix) search: hidden entries and saved counts left out."""
    notes = []
    if hidden:
        notes.append(f"{path}: skipped {hidden} hidden {hidden_things} (names starting with '.')")
    if counts:
        listed = ", ".join(str(p) for p in counts[:3]) + (", ..." if len(counts) > 3 else "")
        notes.append(f"{path}: skipped {len(counts)} {count_things} of saved counts, not activations ({listed})")
    return notes


def _files_under(folder: ShardPath) -> tuple[list[ShardPath], int, list[ShardPath]]:
    """Readable files under ``folder``, the number of hidden entries skipped, and the saved
    counts skipped. Unreadable sub-folders are errors, not skipped."""
    files: list[ShardPath] = []
    hidden = 0
    counts: list[ShardPath] = []
    listed: dict[ShardPath, set[ShardPath] | None] = {}

    def fail(error: OSError) -> None:
        raise error

    for top, dirs, names in os.walk(folder, onerror=fail, followlinks=True):
        here = Path(top)
        hidden += sum(1 for d in dirs if d.startswith(".")) + sum(1 for n in names if n.startswith("."))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name in SAE_CHECKPOINTS or here.name == "checkpoints":
                kind = sae_checkpoint(here / name)
                if kind is not None:
                    raise _refuse_sae(here, kind)
        for name in names:
            p = here / name
            if name.startswith(".") or p.suffix not in SUFFIX_FORMATS or not p.is_file():
                continue
            if p.suffix == ".safetensors" and is_counts_file(p):
                counts.append(p)  # saved counts (an audit's state, say) kept beside the shards
                continue
            if p.suffix == ".arrow":
                if p.parent not in listed:
                    data = arrow_files.dataset_files(p.parent)
                    listed[p.parent] = None if data is None else set(data)
                data_files = listed[p.parent]
                if data_files is not None and p not in data_files:
                    continue  # a datasets cache file, not a data file
            files.append(p)
    return files, hidden, counts
