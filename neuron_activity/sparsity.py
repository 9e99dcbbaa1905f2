"""SAELens feature-sparsity files (``sparsity.safetensors``): one float32 tensor ``sparsity``
of ``log10(density + 1e-10)`` per latent. nact writes them from exact counts, and reads them as
counts over a number of vectors (rounded from the densities, and said so)."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .activity import NeuronActivity
from .errors import BadInput, BadOption
from .files import write_atomic
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
    try:
        logs = load_file(str(path))[SPARSITY_KEY].astype(np.float64)
    except Exception as e:
        raise BadInput(path, f"cannot read sparsity: {e}") from None
    if not np.isfinite(logs).all() or (logs > 0).any():
        raise BadInput(path, "corrupt sparsity file: log10 densities must be finite and at most 0")
    density = np.clip(10.0**logs - SPARSITY_EPS, 0, 1)
    alive = density > SPARSITY_EPS  # log10(0 + 1e-10) = -10: never fired
    rarest = float(density[alive].min()) if alive.any() else 1.0
    chosen = num_vectors or 10 ** min(10, math.ceil(-math.log10(rarest)) + 3)
    counts = np.where(alive, np.maximum(np.rint(density * chosen), 1), 0).astype(np.int64)
    name = _sparsity_name(path)
    activity = NeuronActivity(Fraction(0))
    activity.add(name, counts, chosen)
    how = "given" if num_vectors else "give the number of vectors it was measured on to change it"
    note = (
        f"{path}: a SAELens sparsity file holds log10 densities, not counts: read as {chosen:,} vectors ({how}), "
        f"fire counts rounded from its densities"
    )
    return activity, note


def _sparsity_name(path: Path) -> str:
    folder = path.parent
    cfg = folder / "cfg.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text())
            meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
            hook = meta.get("hook_name") or data.get("hook_name") or data.get("hook_point")
            if isinstance(hook, str):
                return f"{hook}:{folder.name}"
        except (OSError, ValueError, AttributeError):
            pass
    return path.stem
