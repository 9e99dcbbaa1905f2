"""SAELens feature-sparsity files (``sparsity.safetensors``): one float32 tensor ``sparsity``
of ``log10(density + 1e-10)`` per latent. nact writes them from exact counts, and reads them as
counts over a number of vectors (rounded from the densities, and said so)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from .activity import NeuronActivity
from .dtypes import FLOAT_INPUTS, ITEMSIZE, UNSIGNED_VIEW, to_float32
from .errors import BadInput, BadOption
from .files import write_atomic
from .json_files import read_json
from .memory import STATE_BYTES_PER_NEURON, check_fits
from .sources.safetensors_files import read_header

SPARSITY_KEY = "sparsity"  # SAELens' sparsity.safetensors: log10(density + SPARSITY_EPS) per latent
SPARSITY_EPS = 1e-10


def check_one_component(path: Path, names: list[str]) -> None:
    """A sparsity file holds one component's densities."""
    if len(names) != 1:
        listed = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise BadOption(
            "save_sparsity",
            str(path),
            f"holds one component's densities, and there are {len(names)} ({listed}): pick one",
        )


def save_sparsity(path: Path, activity: NeuronActivity) -> None:
    """Write the one component's log10 feature densities as SAELens' ``sparsity.safetensors``
    (``log10(fire_count / num_vectors + 1e-10)``, float32), atomically."""
    check_one_component(path, list(activity.components))
    c = next(iter(activity.components.values()))
    values = np.log10(c.fire_counts / max(c.num_vectors, 1) + SPARSITY_EPS).astype(np.float32)
    write_atomic(Path(path), lambda tmp: save_file({SPARSITY_KEY: values}, str(tmp)))


def is_sparsity_file(path: Path) -> bool:
    """Whether ``path`` is a SAELens sparsity file: one float tensor ``sparsity`` of one axis."""
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        entries = read_header(path)
    except BadInput:
        return False
    return len(entries) == 1 and entries[0].key == SPARSITY_KEY and len(entries[0].shape) == 1


def load_sparsity(path: Path, num_vectors: int | None = None) -> tuple[NeuronActivity, str]:
    """A SAELens sparsity file as counts over ``num_vectors`` vectors (default: a power of ten
    that gives its rarest latent a thousand fires, so densities round by at most 0.05%, at most
    1e10), and a note saying so. Its
    component is named as nact names the SAE's latents when the SAE's cfg.json is beside it."""
    name = _sparsity_name(path)
    logs = _read_densities(path)
    if not np.isfinite(logs).all() or (logs > 0).any():
        raise BadInput(path, "corrupt sparsity file: log10 densities must be finite and at most 0")
    density = np.clip(10.0**logs - SPARSITY_EPS, 0, 1)
    alive = density > SPARSITY_EPS  # log10(0 + 1e-10) = -10: never fired
    rarest = float(density[alive].min()) if alive.any() else 1.0
    chosen = num_vectors or 10 ** min(10, math.ceil(-math.log10(rarest)) + 3)
    counts = np.where(alive, np.maximum(np.rint(density * chosen), 1), 0).astype(np.int64)
    activity = NeuronActivity(Fraction(0))
    activity.add(name, counts, chosen)
    how = "given" if num_vectors else "--num-vectors gives the number it was measured on"
    note = (
        f"{path}: a SAELens sparsity file holds log10 densities, not counts: read as {chosen:,} vectors ({how}), "
        f"fire counts rounded from its densities"
    )
    return activity, note


# Per latent while a sparsity file is read: its float32 value, its log10 density and density
# (float64), whether it is alive, and its count (int64), beside the states it becomes.
READ_BYTES_PER_LATENT = 4 + 8 + 8 + 1 + 8


def _read_densities(path: Path) -> np.ndarray:
    """The log10 densities of a sparsity file (float64), its size checked against the memory
    they need before any of it is read."""
    entries = read_header(path)
    if len(entries) != 1 or entries[0].key != SPARSITY_KEY or len(entries[0].shape) != 1:
        raise BadInput(path, f"not a sparsity file: it holds more than one tensor {SPARSITY_KEY!r} of one axis")
    entry = entries[0]
    if entry.dtype not in FLOAT_INPUTS:
        raise BadInput(path, f"corrupt sparsity file: {SPARSITY_KEY!r} is {entry.dtype}, not floats")
    width = entry.shape[0]
    check_fits(
        path,
        f"reading {width:,} latent densities",
        width * (READ_BYTES_PER_LATENT + STATE_BYTES_PER_NEURON),
    )
    try:
        with open(path, "rb") as f:
            f.seek(entry.offset or 0)
            raw = f.read(entry.nbytes)
    except OSError as e:
        raise BadInput(path, f"cannot read sparsity: {e.strerror or e}") from None
    if len(raw) != entry.nbytes:
        raise BadInput(path, "changed while it was read: truncated")
    bits: np.ndarray = np.frombuffer(raw, UNSIGNED_VIEW[ITEMSIZE[entry.dtype]])
    return bits.view(np.float64).copy() if entry.dtype == "F64" else to_float32(bits, entry.dtype).astype(np.float64)


def _sparsity_name(path: Path) -> str:
    """``HOOK:FOLDER`` when the SAE's ``cfg.json`` beside the file names its hook, else the
    file's stem."""
    folder = path.parent
    cfg = folder / "cfg.json"
    if not cfg.exists() and not cfg.is_symlink():
        return path.stem
    data = read_json(cfg)
    meta = data.get("metadata")
    hook = (
        (meta.get("hook_name") if isinstance(meta, dict) else None) or data.get("hook_name") or data.get("hook_point")
    )
    return f"{hook}:{folder.name}" if isinstance(hook, str) else path.stem
