"""Gemma Scope checkpoints, Google's JumpReLU SAEs and transcoders.

Gemma Scope (Gemma 2): one ``params.npz`` per SAE, in folders such as
``layer_20/width_16k/average_l0_71``, holding ``W_enc`` [d_in, d_sae], ``b_enc``, ``threshold``
[d_sae], ``W_dec`` and ``b_dec``. Gemma Scope 2 (Gemma 3): ``params.safetensors`` (the same
tensors, named in lower case) and a ``config.json`` naming the Hugging Face module it reads
(``hf_hook_point_in``), in folders such as ``resid_post/layer_17_width_16k_l0_medium``.

The encode of both, as SAELens' ``gemma_2`` and ``gemma_3`` loaders set it up: ``relu(h)`` where
``h = x @ W_enc + b_enc > threshold``, the input not centred (a transcoder's latents are its
input's, the same way; an affine transcoder's skip connection only adds to its output).

A Gemma Scope file names no hook. Its folder's path does when it keeps the release's name (as a
download from the Hub does: ``.../gemma-scope-2b-pt-res/.../layer_20/...``); otherwise the SAE is
bound with ``--sae COMPONENT=PATH``. An embedding SAE (a folder named for ``embedding``) was
trained on the embeddings times sqrt(d_in): its W_enc is divided by it, as SAELens does.
Gemma Scope 2's hook is its config's module path, and the TransformerLens hook SAELens names
for it."""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import BadInput, first_line
from ..json_files import read_json
from ..memory import check_fits
from .files import SafetensorsWeights, Tensors, weights
from .model import Reshape, Sae

WEIGHTS = "params.npz"
WEIGHTS_2 = "params.safetensors"
# a Gemma Scope release's name in a path ("gemma-scope-2b-pt-res", a Hub cache's "models--google--gemma-scope-...")
RELEASE = re.compile(r"gemma-scope-[0-9a-z.]+-(?:pt|it)-(res|mlp|att|transcoders)$")
# Gemma Scope's sites as TransformerLens (and SAELens) hook them; hook_z's heads are merged
SITES = {
    "res": "blocks.{layer}.hook_resid_post",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "att": "blocks.{layer}.attn.hook_z",
    "transcoders": "blocks.{layer}.ln2.hook_normalized",
}
# Gemma Scope 2's Hugging Face module paths, and the TransformerLens hooks SAELens gives them
MODULES = {
    "output": "blocks.{layer}.hook_resid_post",
    "self_attn.o_proj.input": "blocks.{layer}.attn.hook_z",
    "post_feedforward_layernorm.output": "blocks.{layer}.hook_mlp_out",
    "pre_feedforward_layernorm.output": "blocks.{layer}.hook_mlp_in",
}
FOLDERS = {  # Gemma Scope 2's folders, when its config.json is not there
    "resid_post": "output",
    "attn_out": "self_attn.o_proj.input",
    "mlp_out": "post_feedforward_layernorm.output",
    "transcoder": "pre_feedforward_layernorm.output",
}


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
    if "scaling_factor" in tensors and not np.allclose(tensors["scaling_factor"], 1.0):
        raise BadInput(path, "has a fine-tuning scaling_factor other than 1: nact does not encode those")
    hook, aliases, reshape = _release_hook(folder)
    sae = _jumprelu(folder, path, tensors, "Gemma Scope", hook, aliases, reshape)
    if "embedding" in str(folder):
        return replace(sae, weight=sae.weight / np.float32(math.sqrt(sae.d_in)))
    return sae


def read_2(folder: Path) -> Sae:
    """The SAE or transcoder of a Gemma Scope 2 folder (``config.json``, ``params.safetensors``)."""
    path = folder / WEIGHTS_2
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        cfg = read_json(cfg_path)
        if cfg.get("architecture", "jump_relu") != "jump_relu":
            raise BadInput(
                cfg_path, f"architecture {cfg['architecture']!r}: Gemma Scope 2 SAEs nact encodes are jump_relu"
            )
        module = cfg.get("hf_hook_point_in")
        if not isinstance(module, str):
            raise BadInput(cfg_path, f"hf_hook_point_in is {module!r}, not the module path the SAE reads")
    else:  # SAELens reads the folder's name then: resid_post/layer_17_width_16k_l0_medium
        layer = re.match(r"layer_(\d+)_", folder.name)
        site = FOLDERS.get(folder.parent.name.removesuffix("_all"))
        module = f"model.layers.{layer[1]}.{site}" if layer and site else None
    hook: str | None = None
    aliases: tuple[str, ...] = ()
    reshape: Reshape = "none"
    found = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module or "")
    if module is not None:
        aliases = (module, module.removesuffix(".output")) if module.endswith(".output") else (module,)
    if found and found[2] in MODULES:
        hook = MODULES[found[2]].format(layer=found[1])
        reshape = "hook_z" if hook.endswith("hook_z") else "none"
    elif module is not None:
        hook, aliases = module, ()
    return _jumprelu(folder, path, SafetensorsWeights(path), "Gemma Scope 2", hook, aliases, reshape)


def _jumprelu(
    folder: Path,
    path: Path,
    tensors: Tensors,
    library: str,
    hook: str | None,
    aliases: tuple[str, ...],
    reshape: Reshape,
) -> Sae:
    """A JumpReLU SAE of ``W_enc`` (or ``w_enc``) [d_in, d_sae], ``b_enc`` and ``threshold``."""
    name = "W_enc" if "W_enc" in tensors else "w_enc"
    if name not in tensors or tensors[name].ndim != 2:
        raise BadInput(path, f"has no 2-d tensor 'W_enc' (it has {', '.join(sorted(tensors)) or 'none'})")
    d_in, d_sae = tensors[name].shape
    w_enc, b_enc, threshold = weights(path, tensors, {name: (d_in, d_sae), "b_enc": (d_sae,), "threshold": (d_sae,)})
    return Sae(
        path=folder,
        library=library,
        architecture="jumprelu",
        rule="jumprelu",
        hook=hook,
        d_in=d_in,
        d_sae=d_sae,
        weight=w_enc,
        bias=b_enc,
        threshold=threshold,
        reshape=reshape,
        hook_aliases=aliases,
    )


def _release_hook(folder: Path) -> tuple[str | None, tuple[str, ...], Reshape]:
    """The hook a Gemma Scope folder's path names (the release and the layer), its Hugging Face
    name, and how its input is shaped; None when the path does not keep them."""
    parts = folder.resolve().parts
    site = next((m[1] for part in parts if (m := RELEASE.search(part))), None)
    if site == "res" and "embedding" in parts:
        return "hook_embed", (), "none"
    layer = next((m[1] for part in parts if (m := re.fullmatch(r"layer_(\d+)", part))), None)
    if site is None or layer is None:
        return None, (), "none"
    hook = SITES[site].format(layer=layer)
    aliases = (f"model.layers.{layer}",) if site == "res" else ()
    return hook, aliases, "hook_z" if site == "att" else "none"
