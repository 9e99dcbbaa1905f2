"""SAE checkpoints that are one pickled ``torch.save`` file: OpenAI ``sparse_autoencoder`` state
dicts and ai-safety-foundation ``sparse_autoencoder`` checkpoints (a pickled pydantic state, or a
bare state dict in older versions), written here as the libraries write them (the same calls, the
same globals, the same key order), read without running their pickles, and encoded as the
float64 reference of ``sae_checkpoints`` says the libraries do."""

from __future__ import annotations

import contextlib
import json
import pickletools
import sys
import types
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from sae_checkpoints import (
    D_IN,
    D_SAE,
    DEAD,
    HOOK,
    ROWS,
    activations,
    base_weights,
    cache,
    expected_counts,
    near_boundary,
    reference,
    rng_for,
)
from typer.testing import CliRunner

from nact_cli.main import app
from neuron_activity import scan
from neuron_activity.errors import BadInput
from neuron_activity.sae import NumpyEncoder, Sae, TorchEncoder, openai, unpickle
from neuron_activity.sae import ai_safety_foundation as asf

runner = CliRunner()


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))


# ----------------------------------------------------------------------------- OpenAI


def module_state(items: list[tuple[str, object]], modules: tuple[str, ...]) -> OrderedDict:
    """A state dict as ``nn.Module.state_dict`` returns it: an OrderedDict with ``_metadata``
    (each module's version) set on it, which ``torch.save`` pickles too."""
    state = OrderedDict(items)
    vars(state)["_metadata"] = OrderedDict((m, {"version": 1}) for m in ("", *modules))
    return state


def openai_checkpoint(
    path: Path,
    activation: str | None = "TopK",
    k: int = 8,
    seed: int = 30,
    postact: str = "ReLU",
    released: bool = False,
) -> dict:
    """``torch.save(ae.state_dict())`` of an OpenAI ``Autoencoder``: its parameters, buffers and
    children in module order (TopK's own state_dict adds ``activation.k`` and
    ``activation.postact_fn``), then ``activation`` and ``activation_state_dict``. ``activation``
    None: a v1/v4 file, which names none. ``released``: the module's keys without the
    ``activation.*`` pair, which ``from_state_dict`` refuses when loading strictly (as the README
    loads the released files; whether those are a dict or an OrderedDict is not known here: a dict)."""
    w = base_weights(rng_for(seed))
    items: list[tuple[str, object]] = [
        ("pre_bias", t(w["b_dec"])),
        ("latent_bias", t(w["b"])),
        ("stats_last_nonzero", torch.zeros(D_SAE, dtype=torch.long)),
        ("latents_activation_frequency", torch.ones(D_SAE)),
        ("latents_mean_square", torch.zeros(D_SAE)),
        ("encoder.weight", t(w["W"].T)),  # nn.Linear(n_inputs, n_latents): [n_latents, n_inputs]
    ]
    topk = activation == "TopK"
    if topk:
        items += [("activation.k", k), ("activation.postact_fn", postact)]
    items.append(("decoder.weight", t(w["W_dec"].T)))
    if activation is not None:
        options = [("k", k), ("postact_fn", postact)] if topk else []
        items += [("activation", activation), ("activation_state_dict", module_state(options, ("postact_fn",) * topk))]
    modules = ("encoder", "activation", *(("activation.postact_fn",) * topk), "decoder")
    state: dict = module_state(items, modules)
    if released:
        state = {key: value for key, value in state.items() if not key.startswith("activation.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    arch: dict = {"weights": w, "center": "b_dec", "rule": "relu", "hook": None}
    if topk:  # from_state_dict: normalize exactly when the activation is TopK
        arch.update(rule="topk", k=k, normalize="layer_norm")
    return arch


# ----------------------------------------------------------------------------- ai-safety-foundation

MODEL, LIGHTNING = "sparse_autoencoder.autoencoder.model", "sparse_autoencoder.autoencoder.lightning"


class PydanticModel:
    """Pickles as a pydantic 2 ``BaseModel`` does (protocol 2): its class, ``NEWOBJ``, then
    ``BUILD`` with ``__dict__`` (every field, in declaration order), ``__pydantic_extra__``,
    ``__pydantic_fields_set__`` (the fields given) and ``__pydantic_private__``."""

    def __init__(self, fields: dict, given: tuple[str, ...]) -> None:
        self.fields, self.given = fields, given

    def __getstate__(self) -> dict:
        return {
            "__dict__": self.fields,
            "__pydantic_extra__": None,
            "__pydantic_fields_set__": set(self.given),
            "__pydantic_private__": None,
        }


def stand_in(module: str, name: str) -> type[PydanticModel]:
    return type(name, (PydanticModel,), {"__module__": module, "__qualname__": name})


State = stand_in(MODEL, "SparseAutoencoderState")
Config = stand_in(MODEL, "SparseAutoencoderConfig")
LitConfig = stand_in(LIGHTNING, "LitSparseAutoencoderConfig")
LIT_DEFAULTS = {
    "l1_coefficient": 0.001,
    "resample_interval": 200000000,
    "max_n_resamples": 4,
    "resample_dead_neurons_dataset_size": 100000000,
    "resample_loss_dataset_size": 819200,
    "resample_threshold_is_dead_portion_fires": 0.0,
}


@contextlib.contextmanager
def library_modules() -> Iterator[None]:
    """The library's module names, holding the stand-ins, while pickle looks its classes up."""
    modules = {name: types.ModuleType(name) for name in ("sparse_autoencoder", MODEL, LIGHTNING)}
    for cls in (State, Config, LitConfig):
        setattr(modules[cls.__module__], cls.__qualname__, cls)
    with mock.patch.dict(sys.modules, modules):
        yield


# the encoder's keys by version (LinearEncoder's parameters were _weight and _bias to v1.4, and the
# modules _encoder, _pre_encoder_bias, ... to v1.2)
VERSION_KEYS = {
    "1.5": ("", "encoder.weight", "encoder.bias", "decoder.weight"),
    "1.3": ("", "encoder._weight", "encoder._bias", "decoder._weight"),
    "1.0": ("_", "_encoder._weight", "_encoder._bias", "_decoder._weight"),
}


def asf_checkpoint(
    path: Path,
    version: str = "1.5",
    n_components: int | None = None,
    names: list[str] | None = None,
    seed: int = 40,
    bare: bool = False,
) -> list[dict]:
    """A checkpoint as the library saves it, and the reference of each component's SAE.

    From v1.5 ``SparseAutoencoder.save``: ``torch.save(SparseAutoencoderState(config=...,
    state_dict=sae.state_dict()))`` (the state dict a plain dict, as pydantic validates it; the
    Lightning trainer's config a ``LitSparseAutoencoderConfig`` with ``component_names``).
    Earlier (or ``bare``): ``torch.save(sae.state_dict())``. ``tied_bias`` and both
    ``TiedBias`` references are one Parameter, so one storage."""
    rng = rng_for(seed)
    parts = [base_weights(rng) for _ in range(n_components or 1)]

    def stacked(key: str, transpose: bool = False) -> torch.Tensor:
        arrays = [p[key].T if transpose else p[key] for p in parts]
        return t(np.stack(arrays) if n_components else arrays[0])

    prefix, weight, bias, decoder = VERSION_KEYS[version]
    tied = stacked("b_dec")  # state_dict() detaches the Parameter once per key: one storage
    items: list[tuple[str, object]] = [
        ("tied_bias", tied),
        (f"{prefix}pre_encoder_bias._bias_reference", tied.detach()),
        (weight, stacked("W", transpose=True)),  # [(n_components,) d_sae, d_in]
        (bias, stacked("b")),
        (decoder, stacked("W_dec", transpose=True)),  # [(n_components,) d_in, d_sae]
        (f"{prefix}post_decoder_bias._bias_reference", tied.detach()),
    ]
    modules = ("pre_encoder_bias", "encoder", "encoder.activation_function", "decoder", "post_decoder_bias")
    state_dict = module_state(items, tuple(prefix + m for m in modules))
    path.parent.mkdir(parents=True, exist_ok=True)
    if version != "1.5" or bare:
        torch.save(state_dict, path)
    else:
        fields: dict = {"n_input_features": D_IN, "n_learned_features": D_SAE, "n_components": n_components}
        given = ("n_input_features", "n_learned_features") + (("n_components",) if n_components else ())
        if names is not None:
            config = LitConfig({**fields, "component_names": names, **LIT_DEFAULTS}, (*given, "component_names"))
        else:
            config = Config(fields, given)
        with library_modules():
            state = State({"config": config, "state_dict": dict(state_dict)}, ("config", "state_dict"))
            torch.save(state, path)
    return [{"weights": p, "center": "b_dec", "rule": "relu"} for p in parts]


# ----------------------------------------------------------------------------- the cases

# case -> (write it, its reference; the component read, or None)
CASES: dict[str, Callable[[Path], tuple[dict, int | None]]] = {
    "openai-topk": lambda p: (openai_checkpoint(p), None),
    "openai-topk-released": lambda p: (openai_checkpoint(p, k=5, seed=31, released=True), None),
    "openai-relu": lambda p: (openai_checkpoint(p, "ReLU", seed=32), None),
    "openai-v1": lambda p: (openai_checkpoint(p, None, seed=33), None),
    "asf-1.5": lambda p: (asf_checkpoint(p)[0], None),
    "asf-1.5-lightning": lambda p: (asf_checkpoint(p, n_components=2, names=["mlp.0", "mlp.1"], seed=41)[1], 1),
    "asf-1.5-one-component": lambda p: (asf_checkpoint(p, n_components=1, names=[HOOK], seed=42)[0], None),
    "asf-1.5-state-dict": lambda p: (asf_checkpoint(p, bare=True, seed=43)[0], None),
    "asf-1.3": lambda p: (asf_checkpoint(p, "1.3", n_components=3, seed=44)[2], 2),
    "asf-1.0": lambda p: (asf_checkpoint(p, "1.0", seed=45)[0], None),
}


def make_case(tmp_path: Path, case: str) -> tuple[Path, dict, Sae]:
    path = tmp_path / case / "0.pt"
    arch, component = CASES[case](path)
    sae = openai.read_file(path) if case.startswith("openai") else asf.read_file(path, component)
    return path, arch, sae


# ----------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_decides_as_the_formulas_do(tmp_path: Path, case: str) -> None:
    _, arch, sae = make_case(tmp_path, case)
    x = activations()
    latents = NumpyEncoder(sae).encode(x)
    want, margin = reference(arch, x)
    near = near_boundary(want, margin)
    assert near.mean() < 0.002, f"{near.sum()} near-boundary decisions: the test data is too close to call"
    assert ((latents > 0) == (want > 0))[~near].all()
    np.testing.assert_allclose(latents[~near], want[~near], rtol=2e-4, atol=2e-4)
    assert (latents[:, :DEAD] == 0).all() and (want[:, DEAD:] > 0).any(axis=0).mean() > 0.5


@pytest.mark.parametrize("case", ["openai-topk", "openai-relu", "asf-1.5-lightning", "asf-1.3"])
def test_the_torch_encoder_agrees(tmp_path: Path, case: str) -> None:
    """The encoder that runs on a GPU, run here on the cpu."""
    _, arch, sae = make_case(tmp_path, case)
    x = activations(seed=3)
    latents = TorchEncoder(sae, torch.device("cpu")).encode(torch.from_numpy(x)).numpy()
    want, margin = reference(arch, x)
    near = near_boundary(want, margin)
    assert ((latents > 0) == (want > 0))[~near].all()
    np.testing.assert_allclose(latents[~near], want[~near], rtol=2e-4, atol=2e-4)


def test_what_each_file_is_read_as(tmp_path: Path) -> None:
    """The encode each checkpoint reads into, and the hook it names (a Lightning config's
    component_names; nothing else names one)."""
    seen = {case: make_case(tmp_path, case)[2] for case in CASES}
    assert seen["openai-topk"].describe() == (
        "OpenAI sparse_autoencoder TopK: layer_norm, x - b_dec, h = x @ W_enc + b, top 8 of h, relu"
    )
    assert seen["openai-relu"].describe() == "OpenAI sparse_autoencoder ReLU: x - b_dec, h = x @ W_enc + b, relu(h)"
    assert seen["openai-v1"].architecture == "ReLU" and seen["openai-v1"].normalize == "none"
    assert seen["asf-1.0"].describe() == (
        "ai-safety-foundation sparse_autoencoder SparseAutoencoder: x - b_dec, h = x @ W_enc + b, relu(h)"
    )
    hooks = {case: sae.hook for case, sae in seen.items()}
    assert hooks == {case: None for case in CASES} | {"asf-1.5-lightning": "mlp.1", "asf-1.5-one-component": HOOK}
    assert all((sae.d_in, sae.d_sae) == (D_IN, D_SAE) for sae in seen.values())


def test_topk_is_layer_normed_and_relu_is_not(tmp_path: Path) -> None:
    """from_state_dict does not store the flag: TopK SAEs normalise their input, others do not,
    and it changes which latents fire."""
    arch = openai_checkpoint(tmp_path / "0.pt")
    x = activations()
    latents = NumpyEncoder(openai.read_file(tmp_path / "0.pt")).encode(x)
    unnormed, _ = reference({**arch, "normalize": None}, x)
    assert ((latents > 0) != (unnormed > 0)).sum() > ROWS
    relu = openai_checkpoint(tmp_path / "relu.pt", "ReLU")
    assert openai.read_file(tmp_path / "relu.pt").normalize == "none" and "normalize" not in relu


def test_an_activation_the_library_does_not_know_is_read_as_relu(tmp_path: Path) -> None:
    arch = openai_checkpoint(tmp_path / "0.pt", "GELU")
    sae = openai.read_file(tmp_path / "0.pt")
    assert (sae.rule, sae.normalize, sae.architecture) == ("relu", "none", "GELU")
    assert sae.notes == (
        f"SAE {tmp_path / '0.pt'}: activation 'GELU' is not one the library knows: read as ReLU, as it does",
    )
    x = activations()
    want, margin = reference(arch, x)
    near = near_boundary(want, margin)
    assert ((NumpyEncoder(sae).encode(x) > 0) == (want > 0))[~near].all()


def test_a_one_number_tensor_k_is_read_as_its_number(tmp_path: Path) -> None:
    path = tmp_path / "0.pt"
    openai_checkpoint(path, k=6)
    state = torch.load(path, weights_only=True)
    state["activation_state_dict"]["k"] = torch.tensor(6)
    torch.save(state, path)
    assert openai.read_file(path).k == 6


def test_k_from_the_keys_topk_state_dict_adds(tmp_path: Path) -> None:
    """Without activation_state_dict, TopK's k and postact_fn are read from the activation.k and
    activation.postact_fn that Autoencoder.state_dict also writes."""
    path = tmp_path / "0.pt"
    openai_checkpoint(path, k=7)
    _drop(path, "activation_state_dict")
    sae = openai.read_file(path)
    assert (sae.rule, sae.k, sae.normalize) == ("topk", 7, "layer_norm")


# ----------------------------------------------------------------------------- telling files apart


def test_each_family_recognizes_its_own_files_only(tmp_path: Path) -> None:
    for case in CASES:
        path = tmp_path / case / "0.pt"
        CASES[case](path)
        assert (openai.recognizes(path), asf.recognizes(path)) == (
            case.startswith("openai"),
            case.startswith("asf"),
        ), case
    # a dictionary_learning ae.pt is a torch.save dict too: bias, encoder.weight, encoder.bias
    w = base_weights(rng_for(1))
    ae = tmp_path / "ae.pt"
    torch.save(
        OrderedDict(
            [
                ("bias", t(w["b_dec"])),
                ("encoder.weight", t(w["W"].T)),
                ("encoder.bias", t(w["b"])),
                ("decoder.weight", t(w["W_dec"].T)),
            ]
        ),
        ae,
    )
    (tmp_path / "notes.txt").write_text("hello")
    from safetensors.torch import save_file

    save_file(
        {"pre_bias": torch.zeros(3), "latent_bias": torch.zeros(3), "encoder.weight": torch.zeros(3, 3)},
        tmp_path / "a.safetensors",
    )
    for other in (ae, tmp_path / "notes.txt", tmp_path / "a.safetensors", tmp_path, tmp_path / "missing.pt"):
        assert not openai.recognizes(other) and not asf.recognizes(other), other


def test_recognizing_reads_no_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    openai_checkpoint(tmp_path / "oai.pt")
    asf_checkpoint(tmp_path / "asf.pt")

    def refuse(*args: object) -> None:
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(unpickle.Pickled, "array", refuse)
    assert openai.recognizes(tmp_path / "oai.pt") and asf.recognizes(tmp_path / "asf.pt")


def test_the_checkpoints_here_name_the_globals_the_library_pickles(tmp_path: Path) -> None:
    """What the library's files name (torch 2, pydantic 2, protocol 2): the stand-ins here write
    the same globals, so the unpickler is tested on what it meets."""
    asf_checkpoint(tmp_path / "state.pt", n_components=2, names=["a", "b"])
    asf_checkpoint(tmp_path / "plain.pt", "1.3", seed=2)
    openai_checkpoint(tmp_path / "oai.pt")
    tensors = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage"}
    assert pickled_globals(tmp_path / "state.pt") == tensors | {
        f"{MODEL} SparseAutoencoderState",
        f"{LIGHTNING} LitSparseAutoencoderConfig",
        "__builtin__ set",
    }
    assert pickled_globals(tmp_path / "plain.pt") == tensors
    assert pickled_globals(tmp_path / "oai.pt") == tensors | {"torch LongStorage"}


def pickled_globals(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


# ----------------------------------------------------------------------------- refusals


def replace_pickle(path: Path, data: bytes) -> None:
    """The archive at ``path`` with its ``data.pkl`` replaced by ``data`` (its storages kept)."""
    with zipfile.ZipFile(path) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, content in members.items():
            z.writestr(name, data if name.endswith("data.pkl") else content)


RAN: list[str] = []


def mark(text: str) -> None:
    """What a pickle that ran its globals would call (it never does)."""
    RAN.append(text)


@pytest.mark.parametrize(
    "module, name, argument",
    [
        ("os", "system", "touch {marker}"),
        ("builtins", "eval", "open({marker!r}, 'w')"),
        ("__builtin__", "exec", "open({marker!r}, 'w')"),
        ("test_sae_pickled", "mark", "{marker}"),
        ("torch", "load", "{marker}"),
    ],
)
@pytest.mark.parametrize("family", ["openai", "asf"])
def test_a_pickle_naming_another_global_is_refused_without_running_it(
    tmp_path: Path, family: str, module: str, name: str, argument: str
) -> None:
    path = tmp_path / "0.pt"
    openai_checkpoint(path) if family == "openai" else asf_checkpoint(path)
    marker = str(tmp_path / "ran")
    text = argument.format(marker=marker).encode()
    # GLOBAL module name, the argument, TUPLE1, REDUCE: module.name(argument)
    evil = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + len(text).to_bytes(4, "little") + text + b"\x85R."
    replace_pickle(path, evil)
    reader = openai if family == "openai" else asf
    with pytest.raises(BadInput) as raised:
        reader.read_file(path)
    assert str(raised.value) == f"{path}: its pickle names {module}.{name}, which nact does not run: {reader.REFUSAL}"
    assert not reader.recognizes(path)
    assert not Path(marker).exists() and RAN == []


@pytest.mark.parametrize(
    "family, allowed", [("asf", b"c__builtin__\nset\n"), ("openai", b"ccollections\nOrderedDict\n")]
)
def test_a_global_hidden_inside_the_state_is_refused(tmp_path: Path, family: str, allowed: bytes) -> None:
    """A global beside what the file should name is refused wherever it is; the file is still
    told apart by what else it names, so reading it says what is wrong."""
    path = tmp_path / "0.pt"
    openai_checkpoint(path) if family == "openai" else asf_checkpoint(path)
    hide_in_pickle(path, allowed, b"ctest_sae_pickled\nmark\n")
    reader = openai if family == "openai" else asf
    assert reader.recognizes(path)
    with pytest.raises(BadInput) as raised:
        reader.read_file(path)
    assert (
        str(raised.value)
        == f"{path}: its pickle names test_sae_pickled.mark, which nact does not run: {reader.REFUSAL}"
    )
    assert RAN == []


def hide_in_pickle(path: Path, allowed: bytes, other: bytes) -> None:
    """The file's pickle with its global ``allowed`` replaced by ``other``."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert allowed in data
    replace_pickle(path, data.replace(allowed, other))


@pytest.mark.parametrize("family", ["openai", "asf"])
def test_a_truncated_file(tmp_path: Path, family: str) -> None:
    path = tmp_path / "0.pt"
    openai_checkpoint(path) if family == "openai" else asf_checkpoint(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    reader = openai if family == "openai" else asf
    with pytest.raises(BadInput) as raised:
        reader.read_file(path)
    assert str(raised.value) == (
        f"{path}: truncated or corrupt: a zip archive without its directory (download or save it again)"
    )
    assert not reader.recognizes(path)


def test_a_storage_cut_short_inside_a_whole_archive(tmp_path: Path) -> None:
    path = tmp_path / "0.pt"
    openai_checkpoint(path)
    with zipfile.ZipFile(path) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
        data = members[next(n for n in members if n.endswith("data.pkl"))]
    ops = list(pickletools.genops(data))
    at = next(i for i, (op, arg, _) in enumerate(ops) if arg == "encoder.weight")
    key = next(arg for op, arg, _ in ops[at:] if op.name == "BINUNICODE" and arg.isdigit())
    storage = next(n for n in members if n.endswith(f"/data/{key}"))
    members[storage] = members[storage][:100]
    with zipfile.ZipFile(path, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    with pytest.raises(BadInput) as raised:
        openai.read_file(path)
    assert str(raised.value) == f"{path}: tensor 'encoder.weight' lies beyond its storage (100 bytes)"


def test_a_legacy_torch_save_file(tmp_path: Path) -> None:
    path = tmp_path / "0.pt"
    openai_checkpoint(path)
    torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
    with pytest.raises(BadInput) as raised:
        openai.read_file(path)
    assert str(raised.value) == (
        f"{path}: a torch.save file in the legacy format (torch < 1.6): nact reads the zip format; "
        "load it with torch and save it again"
    )


def test_a_corrupt_pickle(tmp_path: Path) -> None:
    path = tmp_path / "0.pt"
    asf_checkpoint(path)
    replace_pickle(path, b"\x80\x02}q\x00(X\x03\x00\x00\x00abc")  # cut off mid-dict
    with pytest.raises(BadInput, match=r"0.pt: a corrupt torch.save pickle: "):
        asf.read_file(path)


def _drop(path: Path, key: str) -> None:
    state = torch.load(path, weights_only=True)
    del state[key]
    torch.save(state, path)


def _set(path: Path, key: str, value: object) -> None:
    state = torch.load(path, weights_only=True)
    state[key] = value
    torch.save(state, path)


@pytest.mark.parametrize(
    "make, problem",
    [
        (
            lambda p: openai_checkpoint(p, "Identity"),
            "activation Identity (signed latents, no sparsity): nact encodes ReLU and TopK autoencoders",
        ),
        (
            lambda p: openai_checkpoint(p, postact="Identity"),
            "TopK with postact_fn 'Identity': nact encodes TopK autoencoders whose postact_fn is ReLU",
        ),
        (
            lambda p: openai_checkpoint(p, k=D_SAE + 1),
            f"k is {D_SAE + 1}, not a whole number from 1 to d_sae ({D_SAE})",
        ),
        (
            lambda p: (openai_checkpoint(p), _set(p, "activation", 3)),
            "activation is 3, not the name of an activation",
        ),
        (
            lambda p: (openai_checkpoint(p), _set(p, "pre_bias", torch.zeros(D_IN + 1))),
            f"tensor 'pre_bias' has shape [{D_IN + 1}], expected [{D_IN}]",
        ),
        (
            lambda p: (openai_checkpoint(p), _drop(p, "latent_bias")),
            "not an OpenAI sparse_autoencoder state dict (no tensors encoder.weight, pre_bias and latent_bias)",
        ),
        (
            lambda p: torch.save([torch.zeros(3)], p),
            "not an OpenAI sparse_autoencoder state dict (no tensors encoder.weight, pre_bias and latent_bias)",
        ),
    ],
)
def test_openai_checkpoints_nact_does_not_encode(tmp_path: Path, make: Callable, problem: str) -> None:
    path = tmp_path / "0.pt"
    make(path)
    with pytest.raises(BadInput) as raised:
        openai.read_file(path)
    assert str(raised.value) == f"{path}: {problem}"


@pytest.mark.parametrize(
    "make, component, problem",
    [
        (
            lambda p: asf_checkpoint(p, n_components=2, names=["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]),
            None,
            "holds the SAEs of 2 components (blocks.0.hook_mlp_out, blocks.1.hook_mlp_out): nact reads one; "
            "save one with SparseAutoencoder.load(path, component_idx=I).save(new_path)",
        ),
        (lambda p: asf_checkpoint(p, "1.3", n_components=2), 2, "has 2 components (0 to 1), not 2"),
        (
            lambda p: asf_checkpoint(p),
            0,
            "an SAE of one component (no component axis): it has no component 0",
        ),
        (
            lambda p: (asf_checkpoint(p, "1.0"), _drop(p, "_encoder._bias")),
            None,
            "has no tensor '_encoder._bias' (it has _decoder._weight, _encoder._weight, "
            "_post_decoder_bias._bias_reference, _pre_encoder_bias._bias_reference, tied_bias)",
        ),
        (
            lambda p: (asf_checkpoint(p, "1.3"), _drop(p, "encoder._weight")),
            None,
            "has no encoder (encoder.weight or encoder._weight or _encoder._weight) in its state dict",
        ),
    ],
)
def test_asf_checkpoints_nact_does_not_encode(
    tmp_path: Path, make: Callable, component: int | None, problem: str
) -> None:
    path = tmp_path / "0.pt"
    make(path)
    with pytest.raises(BadInput) as raised:
        asf.read_file(path, component)
    assert str(raised.value) == f"{path}: {problem}"


def test_an_asf_config_that_disagrees_with_its_weights(tmp_path: Path) -> None:
    path = tmp_path / "0.pt"
    w = base_weights(rng_for(0))
    tied = t(w["b_dec"])
    state_dict = {"tied_bias": tied, "encoder.weight": t(w["W"].T), "encoder.bias": t(w["b"])}
    for fields, problem in [
        (
            {"n_learned_features": D_SAE * 2},
            f"its config says n_learned_features {D_SAE * 2}, but its encoder has {D_SAE}",
        ),
        ({"n_components": 2}, "its config says n_components 2, but its encoder's shape says None"),
        ({"n_input_features": 0}, "n_input_features is 0, not a whole number of at least 1"),
    ]:
        config = Config({"n_input_features": D_IN, "n_learned_features": D_SAE, "n_components": None, **fields}, ())
        with library_modules():
            torch.save(State({"config": config, "state_dict": state_dict}, ()), path)
        with pytest.raises(BadInput) as raised:
            asf.read_file(path)
        assert str(raised.value) == f"{path}: {problem}"


# ----------------------------------------------------------------------------- scanning (the CLI)


@pytest.mark.parametrize("case", ["openai-topk", "openai-relu", "asf-1.5", "asf-1.0"])
def test_scan_counts_the_latents(tmp_path: Path, case: str) -> None:
    path, arch, sae = make_case(tmp_path, case)
    x = activations(seed=zlib.crc32(case.encode()) % 1000)
    data = cache(tmp_path / "cache", x)
    result = nact("scan", data, "--sae", f"{HOOK}={path}", "-f", "json")
    assert result.exit_code == 0, result.stderr
    (component,) = json.loads(result.stdout)["components"]
    assert component["sae"]["library"] == sae.library and component["num_vectors"] == ROWS
    c = next(iter(scan([data], saes=(f"{HOOK}={path}",), chunk_rows=400).activity.components.values()))
    sure, near, latents = expected_counts(arch, x)
    assert c.num_vectors == ROWS and c.num_features == D_SAE
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all()
    exact = near == 0
    assert exact.mean() > 0.8
    assert (c.fire_counts[exact] == sure[exact]).all()
    np.testing.assert_allclose(c.states["act_max"][exact], latents.max(0)[exact], rtol=1e-4, atol=1e-5)


def test_a_file_that_names_no_hook_is_bound_by_name(tmp_path: Path) -> None:
    path = tmp_path / "v5_32k" / "autoencoders" / "3.pt"
    openai_checkpoint(path)
    data = cache(tmp_path / "cache", activations(), other=activations(seed=2))
    result = nact("scan", data, "--sae", path)
    assert result.exit_code == 2 and result.stderr == (
        f"Error: {path}: the checkpoint names no hook: name the component it encodes "
        f"(components: {HOOK}, other): bind it with --sae COMPONENT=PATH\n"
    )
    assert nact("scan", data, "--sae", f"{HOOK}={path}").exit_code == 0


def test_a_lightning_config_names_its_hook(tmp_path: Path) -> None:
    path = tmp_path / "run_final.pt"
    arch = asf_checkpoint(path, n_components=1, names=[HOOK])[0]
    x = activations()
    data = cache(tmp_path / "cache", x, other=activations(seed=2))
    c = next(iter(scan([data], saes=(str(path),)).activity.components.values()))
    sure, near, _ = expected_counts(arch, x)
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all() and (near == 0).mean() > 0.8


@pytest.mark.parametrize("family", ["openai", "asf"])
def test_refusals_through_the_cli_are_one_line(tmp_path: Path, family: str) -> None:
    path = tmp_path / "0.pt"
    openai_checkpoint(path) if family == "openai" else asf_checkpoint(path)
    allowed = b"ccollections\nOrderedDict\n" if family == "openai" else b"c__builtin__\nset\n"
    hide_in_pickle(path, allowed, b"cos\nsystem\n")
    data = cache(tmp_path / "cache", activations())
    out = tmp_path / "out.json"
    result = nact("scan", data, "--sae", f"{HOOK}={path}", "-o", out)
    assert result.exit_code == 2 and not out.exists()
    reader = openai if family == "openai" else asf
    assert result.stderr == f"Error: {path}: its pickle names os.system, which nact does not run: {reader.REFUSAL}\n"


def test_a_file_of_several_components_counts_each_on_its_hook(tmp_path: Path) -> None:
    """The reference library trains one SAE per component in one file (``n_components``); its
    Lightning config names each component's hook: each is bound to its own."""
    path = tmp_path / "run_final.pt"
    hooks = ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    archs = asf_checkpoint(path, n_components=2, names=hooks, seed=46)
    xs = [activations(seed=3), activations(seed=4)]
    data = cache(tmp_path / "cache", xs[0], key=hooks[0], **{hooks[1]: xs[1]})
    counted = scan([data], saes=(str(path),)).activity.components
    assert list(counted) == [f"{hook}:run_final.pt" for hook in hooks]
    for hook, arch, x in zip(hooks, archs, xs):
        sure, near, _ = expected_counts(arch, x)
        assert (counted[f"{hook}:run_final.pt"].fire_counts == sure)[near == 0].all()
    (one,) = scan([data], saes=(f"{hooks[1]}={path}",)).activity.components.values()
    sure, near, _ = expected_counts(archs[1], xs[1])
    assert (one.fire_counts == sure)[near == 0].all()
    result = nact("scan", data, "--sae", f"blocks.7.hook_mlp_out={path}")
    assert result.exit_code == 2 and result.stderr == (
        f"Error: {path}: holds the SAEs of components {', '.join(hooks)}, not of 'blocks.7.hook_mlp_out': "
        "name one of them\n"
    )
    unnamed = tmp_path / "unnamed.pt"
    asf_checkpoint(unnamed, "1.3", n_components=2)
    result = nact("scan", data, "--sae", unnamed)
    assert result.exit_code == 2 and "holds the SAEs of 2 components and names none of them" in result.stderr
