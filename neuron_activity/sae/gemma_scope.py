"""Gemma Scope checkpoints (Google's JumpReLU SAEs of Gemma 2): one ``params.npz`` per SAE, in
folders such as ``layer_20/width_16k/average_l0_71``, holding ``W_enc`` [d_in, d_sae], ``b_enc``,
``threshold`` [d_sae], ``W_dec`` and ``b_dec``. The encode, as SAELens' ``gemma_2`` loader sets it
up: ``relu(h)`` where ``h = x @ W_enc + b_enc > threshold``, the input not centred.

The checkpoint names no hook (its release's name and folder say which layer and site): the SAE is
bound to a component with ``--sae COMPONENT=PATH``. An embedding SAE (a folder named for
``embedding``) was trained on the embeddings times sqrt(d_in): its W_enc is divided by it, as
SAELens does."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import BadInput, first_line
from ..memory import check_fits
from .files import weights
from .model import Sae

WEIGHTS = "params.npz"


class NpzWeights(Mapping[str, np.ndarray]):
    """The arrays of an ``.npz`` by name (``w_enc`` read as ``W_enc``), each read in float32 when
    first looked up; pickled members are refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise BadInput(path, f"not a readable .npz file: {first_line(e)}") from None
        self._names = {("W_" + k[2:] if k.startswith("w_") else k): k for k in self._npz.files}
        self._read: dict[str, np.ndarray] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._read:
            member = self._npz.zip.getinfo(self._names[key] + ".npy")
            check_fits(self.path, f"array {key!r}", 2 * member.file_size)  # as read, then in float32
            try:
                value = self._npz[self._names[key]]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
                raise BadInput(self.path, f"array {key!r} cannot be read: {first_line(e)}") from None
            if value.dtype.kind != "f":
                raise BadInput(self.path, f"array {key!r} has dtype {value.dtype}, not a float weight")
            self._read[key] = np.asarray(value, np.float32)
        return self._read[key]


def read(folder: Path) -> Sae:
    """The SAE of a Gemma Scope folder (``params.npz``)."""
    path = folder / WEIGHTS
    tensors = NpzWeights(path)
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise BadInput(path, f"has no 2-d array 'W_enc' (it has {', '.join(sorted(tensors)) or 'none'})")
    d_in, d_sae = tensors["W_enc"].shape
    w_enc, b_enc, threshold = weights(path, tensors, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "threshold": (d_sae,)})
    if "scaling_factor" in tensors and not np.allclose(tensors["scaling_factor"], 1.0):
        raise BadInput(path, "has a fine-tuning scaling_factor other than 1: nact does not encode those")
    if "embedding" in str(folder):
        w_enc = w_enc / np.float32(math.sqrt(d_in))
    return Sae(
        path=folder,
        library="Gemma Scope",
        architecture="jumprelu",
        rule="jumprelu",
        hook=None,
        d_in=d_in,
        d_sae=d_sae,
        weight=w_enc,
        bias=b_enc,
        threshold=threshold,
    )
