"""Which family a checkpoint folder is, told by the weights file it holds, and its SAE read by
that family's module."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import BadInput
from ..options import HUB, SaeRequest
from . import ai_safety_foundation, dictionary_learning, gemma_scope, hub, llama_scope, openai, saelens, sparsify
from .model import Sae

# weights file -> the family's reader, in the order they are looked for
FAMILIES: dict[str, Callable[[Path], Sae]] = {
    saelens.WEIGHTS: saelens.read,
    sparsify.WEIGHTS: sparsify.read,
    dictionary_learning.WEIGHTS: dictionary_learning.read,
    gemma_scope.WEIGHTS: gemma_scope.read,
    gemma_scope.WEIGHTS_2: gemma_scope.read_2,
    llama_scope.WEIGHTS: llama_scope.read,
}
# single-file checkpoints: how each family tells its files, and reads one
FILES: tuple[tuple[Callable[[Path], bool], Callable[[Path], Sae]], ...] = (
    (openai.recognizes, openai.read_file),
    (ai_safety_foundation.recognizes, ai_safety_foundation.read_file),
)
# a config file without the weights file of any family that keeps it: what it is missing
CONFIGS = {
    "cfg.json": "sae_weights.safetensors (SAELens) nor sae.safetensors (sparsify)",
    "config.json": "ae.pt (dictionary_learning) nor params.safetensors (Gemma Scope 2)",
    "hyperparams.json": "checkpoints/final.safetensors (Llama Scope)",
}


def load_saes(requests: Sequence[SaeRequest]) -> list[tuple[str | None, Sae, str]]:
    """The SAEs asked for, each with the component it is asked to encode and its name: the name
    given, else the shortest end of its path (at least ``Sae.name_parts`` parts; of its URL for an
    SAE on the Hub) that no other SAE's path ends with. The same command line gives the same names."""
    chosen = [(r, sae) for r in requests for sae in _load_all(r)]
    resolved = [_parts(r, sae) for r, sae in chosen]
    out = []
    for (request, sae), parts in zip(chosen, resolved):
        if request.name is not None:
            out.append((request.key, sae, request.name))
            continue
        others = {other for other in resolved if other != parts}
        n = sae.name_parts
        while n < len(parts) and any(other[-n:] == parts[-n:] for other in others):
            n += 1
        out.append((request.key, sae, "/".join(parts[-n:]) if n < len(parts) else "/".join(parts)))
    return out


def _parts(request: SaeRequest, sae: Sae) -> tuple[str, ...]:
    """What an SAE is named from: its resolved path, or the URL it was fetched from (a Hub cache's
    paths end in commit hashes)."""
    if isinstance(request.path, str):
        return tuple(part for part in request.path.removeprefix(HUB).split("/") if part)
    return sae.path.resolve().parts


def _load_all(request: SaeRequest) -> list[Sae]:
    """The SAEs a request asks for: one, or each component's of a file of several (the one whose
    hook the request names, when it names a component). One on the Hub is fetched first."""
    if isinstance(request.path, str):
        return _load_all(replace(request, path=hub.fetch(request.path, progress=sys.stderr.isatty())))
    path = request.path
    if not (path.is_file() and ai_safety_foundation.recognizes(path)):
        return [load_sae(path)]
    found = [sae.with_fingerprint() for sae in ai_safety_foundation.read_all(path)]
    if request.key is None or len(found) == 1:
        return found
    named = [sae for sae in found if sae.hook == request.key]
    if not named:
        hooks = ", ".join(str(sae.hook) for sae in found)
        raise BadInput(path, f"holds the SAEs of components {hooks}, not of {request.key!r}: name one of them")
    return named


def load_sae(path: Path | str) -> Sae:
    """The SAE in the checkpoint folder ``path``: a file of the folder names the folder too, a
    file of a training run's ``checkpoints/`` names that checkpoint, and a checkpoint kept in one
    file (OpenAI's, the ai-safety-foundation library's) is that file."""
    given = Path(path)
    folder = given.parent if given.is_file() else given
    if given.is_file() and folder.name == "checkpoints":
        run = folder.parent
        if (run / "hyperparams.json").is_file() and given.suffix == ".safetensors":
            return llama_scope.read(run, given).with_fingerprint()
        if (run / "config.json").is_file() and given.suffix == ".pt":
            return dictionary_learning.read(run, given).with_fingerprint()
    if given.is_file():
        for recognizes, read_file in FILES:
            if recognizes(given):
                return read_file(given).with_fingerprint()
    if not folder.is_dir():
        raise BadInput(folder, "no such SAE checkpoint folder")
    for weights, read in FAMILIES.items():
        if (folder / weights).is_file():
            return read(folder).with_fingerprint()
    for config, missing in CONFIGS.items():
        if (folder / config).is_file():
            raise BadInput(folder, f"has {config} but neither {missing}: give the folder the checkpoint was saved to")
    inside = sorted({p.parent.name for name in FAMILIES for p in folder.glob(f"*/{name}")})
    if inside:
        listed = ", ".join(inside[:4]) + (", ..." if len(inside) > 4 else "")
        raise BadInput(folder, f"holds {len(inside)} SAE checkpoint(s) in its folders ({listed}): give one of them")
    raise BadInput(
        folder,
        "not an SAE checkpoint: nact reads the folders of SAELens (cfg.json, sae_weights.safetensors), sparsify "
        "(cfg.json, sae.safetensors), dictionary_learning (config.json, ae.pt), Gemma Scope (params.npz; "
        "params.safetensors, config.json) and Llama Scope (hyperparams.json, checkpoints/final.safetensors), and "
        "the .pt files of OpenAI's and the ai-safety-foundation sparse_autoencoder",
    )
