"""ai-safety-foundation ``sparse_autoencoder`` checkpoints (the library whose
``NeuronActivityMetric`` nact follows): one ``torch.save`` file per SAE, read without running its
pickle and without the library.

Its formats:

- from v1.5 (``SparseAutoencoder.save``: the pipeline's ``{run_name}_{final|<n>}.pt``, wandb's
  ``sae-model-state.pt``): a pickled pydantic ``SparseAutoencoderState``, its ``config`` (a
  ``SparseAutoencoderConfig``, or the Lightning trainer's ``LitSparseAutoencoderConfig``) and
  ``state_dict``. The unpickler allows exactly those three classes and the ``set`` pydantic keeps
  a model's fields in; each object is an inert record of its fields, and any other global is
  refused by name.
- v0.11 to v1.4 (the pipeline's ``torch.save(autoencoder.state_dict())``): the state dict alone,
  its encoder's keys ``_encoder._weight``/``_encoder._bias`` (to v1.2) or
  ``encoder._weight``/``encoder._bias`` (v1.3, v1.4); a later state dict saved the same way has
  ``encoder.weight``/``encoder.bias``.

The encode, as ``SparseAutoencoder.forward`` runs it (``TiedBias`` then ``LinearEncoder``):
``relu((x - tied_bias) @ encoder.weight.T + encoder.bias)``, no normalisation. An SAE trained on
several components (``n_components``) holds one SAE per component along the first axis of every
tensor: ``read_file`` reads one (the only one, or the one asked for). Its hook is the Lightning
config's ``component_names`` entry (the pipeline's ``cache_names``, TransformerLens hooks);
otherwise the file names none, and the SAE is bound with ``--sae COMPONENT=PATH``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from ..sources.torch_zip import TensorRef
from . import files, unpickle
from .model import Sae
from .unpickle import Record

LIBRARY = "ai-safety-foundation sparse_autoencoder"
STATE = "sparse_autoencoder.autoencoder.model.SparseAutoencoderState"
CONFIGS = (
    "sparse_autoencoder.autoencoder.model.SparseAutoencoderConfig",
    "sparse_autoencoder.autoencoder.lightning.LitSparseAutoencoderConfig",
)
# pickle protocol 2 (torch.save's) names builtins "__builtin__"
ALLOWED: dict[str, object] = {**unpickle.records(STATE, *CONFIGS), "__builtin__.set": set, "builtins.set": set}
REFUSAL = (
    "an ai-safety-foundation sparse_autoencoder checkpoint names only SparseAutoencoderState, its config, "
    "sets and tensors (if it is one, save its state dict: torch.save(sae.state_dict(), path))"
)
TIED_BIAS = "tied_bias"  # the pre-encoder (and post-decoder) bias, under one name in every version
ENCODER_KEYS = (  # (weight, bias) of LinearEncoder, by version
    ("encoder.weight", "encoder.bias"),  # v1.5 on
    ("encoder._weight", "encoder._bias"),  # v1.3, v1.4
    ("_encoder._weight", "_encoder._bias"),  # v0.11 to v1.2
)


def recognizes(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` file of this library: its pickle names the library's
    classes, or ``tied_bias`` and an encoder's weight (only its opcodes are read)."""
    names = unpickle.names(path)
    if names is None:
        return False
    if any(name.startswith("sparse_autoencoder.") for name in names.globals):
        return True
    return TIED_BIAS in names.strings and any(weight in names.strings for weight, _ in ENCODER_KEYS)


def read_file(path: Path, component: int | None = None) -> Sae:
    """The SAE of an ai-safety-foundation ``sparse_autoencoder`` checkpoint file: of component
    ``component`` when it was trained on several (``n_components``), of the only one otherwise."""
    encoder = _Encoder.read(path)
    return encoder.sae(_component(path, encoder.n_components, component, encoder.names))


def read_all(path: Path) -> list[Sae]:
    """The SAE of every component of a checkpoint file (one when it has no component axis), each
    hooked to its component's name; a file of several components that names none is refused."""
    encoder = _Encoder.read(path)
    n = encoder.n_components
    if n is None or n == 1:
        return [encoder.sae(None if n is None else 0)]
    if not encoder.names:
        raise BadInput(
            path,
            f"holds the SAEs of {n} components and names none of them: save one with "
            "SparseAutoencoder.load(path, component_idx=I).save(new_path), and bind it with --sae COMPONENT=PATH",
        )
    return [encoder.sae(i) for i in range(n)]


@dataclass(frozen=True)
class _Encoder:
    """A checkpoint's encoder tensors (not read) with its shape and components' names."""

    path: Path
    pickled: unpickle.Pickled
    keys: tuple[str, str]
    refs: list[TensorRef]
    d_in: int
    d_sae: int
    n_components: int | None
    names: list[str]

    @classmethod
    def read(cls, path: Path) -> _Encoder:
        pickled = unpickle.load(path, ALLOWED, REFUSAL)
        config, state_dict = _state(path, pickled.root)
        keys = _encoder_keys(state_dict)
        if keys is None:
            raise BadInput(path, f"has no encoder ({' or '.join(w for w, _ in ENCODER_KEYS)}) in its state dict")
        weight_key, bias_key = keys
        encoder = state_dict[weight_key]
        if not isinstance(encoder, TensorRef) or len(encoder.size) not in (2, 3):
            shape = list(encoder.size) if isinstance(encoder, TensorRef) else None
            raise BadInput(path, f"{weight_key!r} is {shape}, not a tensor [(n_components,) d_sae, d_in]")
        d_sae, d_in = encoder.size[-2:]
        n_components = encoder.size[0] if len(encoder.size) == 3 else None
        names: list[str] = []
        if config is not None:
            n_components, names = _check_config(path, config, d_in, d_sae, n_components)
        lead = () if n_components is None else (n_components,)
        refs = pickled.refs(
            state_dict, {weight_key: (*lead, d_sae, d_in), bias_key: (*lead, d_sae), TIED_BIAS: (*lead, d_in)}
        )
        return cls(path, pickled, keys, refs, d_in, d_sae, n_components, names)

    def sae(self, index: int | None) -> Sae:
        """The SAE of component ``index`` (None: the file has no component axis)."""
        refs = self.refs if index is None else [ref.select(index) for ref in self.refs]
        keys = (*self.keys, TIED_BIAS)
        weight, bias, tied_bias = (self.pickled.array(ref, key) for ref, key in zip(refs, keys))
        return Sae(
            path=self.path,
            library=LIBRARY,
            architecture="SparseAutoencoder",
            rule="relu",
            hook=self.names[index or 0] if self.names else None,
            d_in=self.d_in,
            d_sae=self.d_sae,
            weight=weight.T,
            bias=bias,
            center=tied_bias,
        )


def _state(path: Path, root: object) -> tuple[dict[object, object] | None, dict[object, object]]:
    """The config's fields (None for a bare state dict) and the state dict."""
    if isinstance(root, dict):
        return None, root
    if not isinstance(root, Record) or root.name != STATE:
        raise BadInput(path, f"not an ai-safety-foundation sparse_autoencoder checkpoint (it holds {_kind(root)})")
    fields = _fields(path, root)
    config, state_dict = fields.get("config"), fields.get("state_dict")
    if not isinstance(config, Record) or config.name not in CONFIGS:
        raise BadInput(path, f"its SparseAutoencoderState's config is {_kind(config)}, not a SparseAutoencoderConfig")
    if not isinstance(state_dict, dict):
        raise BadInput(path, f"its SparseAutoencoderState's state_dict is {_kind(state_dict)}, not a dict")
    return _fields(path, config), state_dict


def _fields(path: Path, record: Record) -> dict[object, object]:
    """A pydantic model's fields: its pickled state's ``__dict__`` (pydantic 2)."""
    state = record.state
    fields = state.get("__dict__") if isinstance(state, dict) else None
    if not isinstance(fields, dict):
        raise BadInput(path, f"its {record.name.rpartition('.')[2]} has no fields (a pydantic 2 model's __dict__)")
    return fields


def _check_config(
    path: Path, config: dict[object, object], d_in: int, d_sae: int, n_components: int | None
) -> tuple[int | None, list[str]]:
    """The config's ``n_components`` and ``component_names`` (empty when it has none), checked
    against the encoder's shape."""
    fields = {str(k): v for k, v in config.items()}
    for key, have in (("n_input_features", d_in), ("n_learned_features", d_sae)):
        if files.whole(path, fields, key) != have:
            raise BadInput(path, f"its config says {key} {fields[key]}, but its encoder has {have}")
    said = fields.get("n_components")
    if said is not None:
        said = files.whole(path, fields, "n_components")
    if said != n_components:
        raise BadInput(path, f"its config says n_components {said}, but its encoder's shape says {n_components}")
    names = fields.get("component_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == (said or 1)):
        names = []
    return said, names


def _component(path: Path, n_components: int | None, component: int | None, names: list[str]) -> int | None:
    """Which component's SAE to read: None when there is no component axis."""
    if n_components is None:
        if component is not None:
            raise BadInput(path, f"an SAE of one component (no component axis): it has no component {component}")
        return None
    if component is None:
        if n_components == 1:
            return 0
        listed = f" ({', '.join(names)})" if names else ""
        raise BadInput(
            path,
            f"holds the SAEs of {n_components} components{listed}: nact reads one; save one with "
            "SparseAutoencoder.load(path, component_idx=I).save(new_path)",
        )
    if not 0 <= component < n_components:
        raise BadInput(path, f"has {n_components} components (0 to {n_components - 1}), not {component}")
    return component


def _encoder_keys(state_dict: dict[object, object]) -> tuple[str, str] | None:
    return next(((w, b) for w, b in ENCODER_KEYS if w in state_dict), None)


def _kind(value: object) -> str:
    """What a pickled value is, for a message."""
    return f"a {value.name}" if isinstance(value, Record) else f"a {type(value).__name__}"
