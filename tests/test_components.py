"""Components as users mean them: every layout built here, its components and counts checked
against the plain numpy reference, and never a silent merge or split."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import as_float64, fire_counts, random_activations, write_shard
from test_formats import write_delphi_module
from typer.testing import CliRunner

from nact_cli.main import app
from neuron_activity import BadInput, scan

runner = CliRunner()


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def counts_of(paths, **kw) -> dict[str, tuple[list[int], int]]:
    activity = scan(paths if isinstance(paths, list) else [paths], **kw).activity
    return {name: (c.fire_counts.tolist(), c.num_vectors) for name, c in activity.components.items()}


def expect(values: np.ndarray, fire_above: str = "0") -> tuple[list[int], int]:
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    return fire_counts(flat, Fraction(fire_above)).tolist(), len(flat)


def relu(rng: np.random.Generator, shape: tuple[int, ...], dead: int | None = None) -> np.ndarray:
    x = np.maximum(rng.standard_normal(shape) - 1.0, 0).astype(np.float32)
    if dead is not None:
        x[..., dead] = 0
    return x


# --- layer numbers, shard numbers, folders ----------------------------------------------------


@pytest.mark.parametrize(
    ("names", "components"),
    [
        (["layer_0.npy", "layer_1.npy"], ["layer_0", "layer_1"]),
        (["mlp.3.npy", "mlp.4.npy"], ["mlp.3", "mlp.4"]),
        (["resid-0.npy", "resid-12.npy"], ["resid-0", "resid-12"]),
        (["blocks.2.npy", "blocks.3.npy"], ["blocks.2", "blocks.3"]),
        (["acts_000.npy", "acts_001.npy", "acts_002.npy"], ["acts"]),
        (["acts_shard1.npy", "acts_shard2.npy"], ["acts_shard"]),
        (["acts_part-1.npy", "acts_part-2.npy"], ["acts_part"]),
    ],
)
def test_layer_numbers_and_shard_numbers(tmp_path: Path, names: list[str], components: list[str]) -> None:
    rng = np.random.default_rng(len(names))
    arrays = {n: relu(rng, (20 + i, 6), dead=i) for i, n in enumerate(names)}
    for n, x in arrays.items():
        np.save(tmp_path / n, x)
    got = counts_of(tmp_path)
    assert list(got) == components
    if len(components) == len(names):  # one component per file
        assert [got[c] for c in components] == [expect(x) for x in arrays.values()]
    else:
        assert got[components[0]] == expect(np.concatenate(list(arrays.values())))


def test_unpadded_numbers_are_layers_and_the_scan_says_so(tmp_path: Path) -> None:
    for i in range(3):
        np.save(tmp_path / f"acts_{i}.npy", np.ones((4, 2), np.float32))
    result = nact("scan", tmp_path, "-f", "json")
    doc = json.loads(result.stdout)
    assert [c["component"] for c in doc["components"]] == ["acts_0", "acts_1", "acts_2"]
    assert result.stderr == (
        f"Warning: 3 files {tmp_path}/acts_* were counted as 3 components: a number that is not zero-padded "
        "is taken as a layer (--group-by key counts them as shards of one component)\n"
    )
    merged = json.loads(nact("scan", tmp_path, "-f", "json", "--group-by", "key").stdout)
    assert [(c["component"], c["num_vectors"]) for c in merged["components"]] == [("acts", 12)]


def test_per_layer_folders_are_components_named_by_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    layers = {3: relu(rng, (30, 5), dead=1), 4: relu(rng, (30, 5), dead=2)}
    for layer, x in layers.items():
        (tmp_path / "perlayer" / f"layer_{layer}").mkdir(parents=True)
        np.save(tmp_path / "perlayer" / f"layer_{layer}" / "000.npy", x[:10])
        np.save(tmp_path / "perlayer" / f"layer_{layer}" / "001.npy", x[10:])
    got = counts_of(tmp_path / "perlayer")
    assert got == {"layer_3": expect(layers[3]), "layer_4": expect(layers[4])}
    files = [tmp_path / "perlayer" / "layer_3" / "000.npy", tmp_path / "perlayer" / "layer_4" / "000.npy"]
    assert list(counts_of(files)) == ["layer_3", "layer_4"]  # named one by one, still two layers


def test_legacy_saelens_hook_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    hooks = {
        f"blocks.{i}.hook_resid_pre": [random_activations(rng, (25, 1, 7), "F32") for _ in range(2)] for i in (2, 3)
    }
    for hook, shards in hooks.items():
        for j, x in enumerate(shards):
            write_shard(tmp_path / "activations" / hook / f"{j}.safetensors", {"activations": x})
    got = counts_of(tmp_path / "activations")
    assert got == {hook: expect(np.concatenate([as_float64(x) for x in shards])) for hook, shards in hooks.items()}


def test_numbered_folders_are_shards_of_one_thing(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    parts = [relu(rng, (12, 4)) for _ in range(3)]
    for i, x in enumerate(parts):
        write_shard(
            tmp_path / "run" / f"shard_{i}" / "acts.safetensors", {"blocks.0.hook_sae_acts": torch.from_numpy(x)}
        )
    result = scan([tmp_path / "run"])
    assert {n: (c.fire_counts.tolist(), c.num_vectors) for n, c in result.activity.components.items()} == {
        "blocks.0.hook_sae_acts": expect(np.concatenate(parts))
    }
    assert len(result.plan.sources()["blocks.0.hook_sae_acts"]) == 3


def test_two_runs_with_the_same_key_are_two_components(tmp_path: Path) -> None:
    for run in ("run_a", "run_b"):
        write_shard(tmp_path / run / "0.safetensors", {"sae": torch.ones(3, 2)})
    assert list(counts_of(tmp_path)) == ["run_a/sae", "run_b/sae"]
    assert list(counts_of(tmp_path, group_by="key")) == ["sae"]
    assert list(counts_of(tmp_path, group_by="file")) == ["run_a/0/sae", "run_b/0/sae"]


def test_grouping_is_shown_in_json_table_and_inspect(tmp_path: Path) -> None:
    for i in range(3):
        write_shard(tmp_path / f"{i:03d}.safetensors", {"sae": torch.ones(2, 3)})
    doc = json.loads(nact("scan", tmp_path, "-f", "json").stdout)
    assert doc["components"][0]["files"] == {
        "count": 3,
        "first": str(tmp_path / "000.safetensors"),
        "last": str(tmp_path / "002.safetensors"),
    }
    table = nact("scan", tmp_path).stdout
    assert f"sae: read from 3 files, {tmp_path}/000.safetensors ... {tmp_path}/002.safetensors" in table
    inspected = nact("inspect", tmp_path)
    assert f"  sae (3 features): 3 files, {tmp_path}/000.safetensors ... {tmp_path}/002.safetensors" in inspected.stdout
    groups = json.loads(nact("inspect", tmp_path, "-f", "json").stdout)["groups"]
    assert groups == [
        {"components": ["sae"], "num_features": 3, "files": [str(tmp_path / f"{i:03d}.safetensors") for i in range(3)]}
    ]


def test_keys_take_glob_patterns(tmp_path: Path) -> None:
    write_shard(
        tmp_path / "a.safetensors",
        {f"blocks.{i}.hook_sae_acts": torch.ones(2, 2) for i in range(3)} | {"other": torch.ones(2, 2)},
    )
    assert list(counts_of(tmp_path, keys=["blocks.*.hook_sae_acts"])) == [f"blocks.{i}.hook_sae_acts" for i in range(3)]
    result = nact("scan", tmp_path, "-k", "nothing.*")
    assert result.exit_code == 2 and result.stderr.startswith("Error: --key 'nothing.*' not found in any shard")


# --- axes ------------------------------------------------------------------------------------


def test_transformerlens_positions_are_flattened_with_a_note(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    x = relu(rng, (16, 128, 64), dead=5)
    torch.save({"blocks.0.hook_resid_post": torch.from_numpy(x)}, tmp_path / "cache.pt")
    result = nact("scan", tmp_path / "cache.pt", "-f", "json", "-t", "0")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(c["component"], c["num_vectors"]) for c in doc["components"]] == [("blocks.0.hook_resid_post", 2048)]
    assert doc["rows"][0]["dead"] == int((fire_counts(x.reshape(-1, 64).astype(np.float64)) == 0).sum())
    assert "128 positions flattened into 2048 vectors" in result.stderr


def test_a_long_middle_axis_is_never_split_silently(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"x": torch.ones(16, 128, 8)})
    result = nact("scan", tmp_path)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {tmp_path / 'a.safetensors'}: tensor 'x' of shape [16, 128, 8]: axis 1 has 128 entries, too many for "
        "a component axis (at most 64): flatten it (its entries are positions or tokens) or pick the component axis "
        "(--flatten or --component-axis)\n"
    )
    assert json.loads(nact("scan", tmp_path, "--flatten", "-f", "json").stdout)["components"][0]["num_vectors"] == 2048


@pytest.mark.parametrize("suffix", ["safetensors", "npy", "pt"])
def test_component_axis_0_gives_per_layer_components(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(7)
    x = relu(rng, (3, 4, 10, 6))  # [layer, batch, pos, d]
    for layer in range(3):
        x[layer, :, :, layer] = 0  # a different dead neuron per layer
    path = tmp_path / f"stack.{suffix}"
    if suffix == "safetensors":
        write_shard(path, {"resid": torch.from_numpy(x)})
        key = "resid"
    elif suffix == "npy":
        np.save(path, x)
        key = "stack"
    else:
        torch.save({"resid": torch.from_numpy(x)}, path)
        key = "resid"
    got = counts_of(path, component_axis=0, chunk_rows=7)
    assert got == {f"{key}[{layer}]": expect(x[layer]) for layer in range(3)}


def test_component_axis_of_size_one_and_default_axis(tmp_path: Path) -> None:
    x = np.ones((5, 3, 4), np.float32)
    x[:, 1, 2] = 0
    np.save(tmp_path / "x.npy", x)
    assert counts_of(tmp_path / "x.npy") == {f"x[{c}]": expect(x[:, c, :]) for c in range(3)}
    result = nact("scan", tmp_path / "x.npy", "--component-axis", "2")
    assert result.exit_code == 2 and "has no axis 2 before its features" in result.stderr
    result = nact("scan", tmp_path / "x.npy", "--component-axis", "0", "--flatten")
    assert (
        result.stderr
        == "Error: --flatten and --component-axis cannot be used together: flatten makes every axis before the features a batch axis\n"
    )


# --- whole sparse caches ------------------------------------------------------------------------


def delphi_dense(seed: int = 8, latents: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = np.maximum(rng.standard_normal((5, 6, latents)) - 1.0, 0).astype(np.float16)
    dense[:, :, 3] = 0  # a dead latent in the first split
    return dense


def test_a_missing_split_is_an_error_naming_the_latents(tmp_path: Path) -> None:
    dense = delphi_dense()
    write_delphi_module(tmp_path / "layers.3.mlp", dense, [(0, 9), (10, 19), (20, 29), (30, 39)])
    (tmp_path / "layers.3.mlp" / "10_19.safetensors").unlink()
    result = nact("scan", tmp_path)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"Error: {tmp_path / 'layers.3.mlp'}: the splits do not cover the module's 40 latents: latents 10-19 are in no split\n"
    )
    partial = nact("scan", tmp_path, "--partial-latents", "-f", "json", "-t", "0", "--neurons")
    assert partial.exit_code == 0, partial.stderr
    doc = json.loads(partial.stdout)
    assert [(c["component"], c["num_features"], c.get("first_neuron", 0)) for c in doc["components"]] == [
        ("layers.3.mlp:0-9", 10, 0),
        ("layers.3.mlp:20-39", 20, 20),
    ]
    flat = dense.reshape(-1, 40).astype(np.float64)
    never = np.flatnonzero(fire_counts(flat) == 0)
    by_component = {r["component"]: r["dead_neurons"] for r in doc["rows"]}
    assert by_component["layers.3.mlp:0-9"] == [int(i) for i in never if i < 10]
    assert by_component["layers.3.mlp:20-39"] == [int(i) for i in never if i >= 20]  # true latent indices


def test_a_missing_last_split_is_caught_by_config_json(tmp_path: Path) -> None:
    write_delphi_module(tmp_path / "m", delphi_dense(), [(0, 19), (20, 39)])
    (tmp_path / "m" / "config.json").write_text(json.dumps({"n_splits": 3, "batch_size": 8}))
    result = nact("scan", tmp_path)
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"Error: {tmp_path / 'm'}: config.json says 3 splits but 2 are here: the last split(s) are missing\n"
    )


def test_one_split_named_alone_reports_its_own_latents(tmp_path: Path) -> None:
    dense = delphi_dense(latents=40)
    write_delphi_module(tmp_path / "m", dense, [(0, 19), (20, 39)])
    activity = scan([tmp_path / "m" / "20_39.safetensors"]).activity
    ((name, c),) = activity.components.items()
    assert (name, c.num_features, c.first_neuron) == ("m:20-39", 20, 20)
    assert c.fire_counts.tolist() == fire_counts(dense.reshape(-1, 40)[:, 20:].astype(np.float64)).tolist()


def test_latent_cache_save_and_splits_without_tokens(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    dense = delphi_dense(latents=12)
    b, p, latent = np.nonzero(dense)
    save_file(
        {
            "locations": np.stack([b, p, latent], axis=1).astype(np.int64),
            "activations": dense[b, p, latent],
            "tokens": np.zeros((5, 6), np.int64),
        },
        str(tmp_path / "layers.1.mlp.safetensors"),
    )
    result = nact("scan", tmp_path)
    assert result.exit_code == 2 and "its width is not in its name; give the number of latents" in result.stderr
    got = counts_of(tmp_path, num_latents=12)
    assert got == {"layers.1.mlp": expect(dense)}
    write_delphi_module(tmp_path / "no_tokens" / "m", dense, [(0, 11)], tokens=False)
    assert counts_of(tmp_path / "no_tokens", num_vectors=30) == {"m": expect(dense)}


def test_delphi_warning_states_the_writers_cut(tmp_path: Path) -> None:
    write_delphi_module(tmp_path / "m", delphi_dense(latents=4), [(0, 3)])
    result = nact("scan", tmp_path, "-f", "json")
    assert "delphi stores only entries with |activation| > 1e-5, as fp16" in result.stderr


# --- what is not activations --------------------------------------------------------------------


def test_hidden_files_and_saved_counts_are_skipped_with_a_note(tmp_path: Path) -> None:
    write_shard(tmp_path / "data" / "0.safetensors", {"sae": torch.ones(3, 2)})
    write_shard(tmp_path / "data" / ".trash" / "0.safetensors", {"sae": torch.ones(3, 2)})
    write_shard(tmp_path / "data" / ".1.safetensors", {"sae": torch.ones(3, 2)})
    nact("scan", tmp_path / "data", "--save-counts", tmp_path / "data" / "counts.safetensors", "-q")
    result = nact("scan", tmp_path / "data", "-f", "json")
    assert json.loads(result.stdout)["components"][0]["num_vectors"] == 3
    assert result.stderr.splitlines() == [
        f"Warning: {tmp_path / 'data'}: skipped 2 hidden file(s) or folder(s) (names starting with '.')",
        f"Warning: {tmp_path / 'data'}: skipped 1 file(s) of saved counts, not activations ({tmp_path / 'data' / 'counts.safetensors'})",
    ]


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        (["cfg.json", "sae_weights.safetensors"], "a SAELens SAE checkpoint"),
        (["cfg.json", "sae.safetensors"], "a sparsify SAE checkpoint"),
        (["sparsity.safetensors"], "a SAELens feature-sparsity file"),
        (["config.json", "params.safetensors"], "a Gemma Scope 2 SAE checkpoint"),
        (["config.json", "ae.pt"], "a dictionary_learning SAE checkpoint"),
        (["../config.json", "ae_1000.pt"], "a dictionary_learning SAE checkpoint"),  # a run's checkpoints/
        (["../hyperparams.json", "final.safetensors"], "a Llama Scope SAE checkpoint"),
    ],
)
def test_sae_checkpoints_are_refused_with_a_hint(tmp_path: Path, files: list[str], kind: str) -> None:
    folder = tmp_path / "sae" / ("checkpoints" if files[0].startswith("..") else "blocks.0.hook_resid_pre")
    folder.mkdir(parents=True)
    for name in files:
        if name.endswith(".json"):
            (folder / name).write_text("{}")
        else:
            write_shard(folder / name, {"W_enc": torch.ones(4, 8), "b_enc": torch.ones(8)})
    result = nact("scan", tmp_path / "sae")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {folder}: {kind}, not activations: scan the cache of activations the SAE reads\n"
    with pytest.raises(BadInput, match="not activations"):
        scan([folder / files[-1]])


# --- big-endian .npy -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [">f2", ">f4", ">f8"])
def test_big_endian_npy_is_counted_exactly(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((50, 3, 7)) * rng.choice([1e-6, 1e-3, 1.0], size=(50, 3, 7))).astype(dtype)
    np.save(tmp_path / "c_order.npy", x)
    np.save(tmp_path / "f_order.npy", np.asfortranarray(x))
    np.savez_compressed(tmp_path / "packed.npz", acts=x)
    np.savez(tmp_path / "stored.npz", acts=x)
    native = x.astype(x.dtype.newbyteorder("="))
    want = {f"{{}}[{c}]": expect(native[:, c, :], "1e-5") for c in range(3)}
    for name in ("c_order.npy", "f_order.npy"):
        key = name[: -len(".npy")]
        got = counts_of(tmp_path / name, fire_above="1e-5", chunk_rows=9)
        assert got == {k.format(key): v for k, v in want.items()}, name
    for name in ("packed.npz", "stored.npz"):
        assert counts_of(tmp_path / name, fire_above="1e-5", chunk_rows=9) == {
            k.format("acts"): v for k, v in want.items()
        }


@pytest.mark.parametrize(
    ("name", "tensors"),
    [
        ("3.pt", {"encoder.weight": torch.ones(8, 4), "decoder.weight": torch.ones(4, 8), "pre_bias": torch.ones(4)}),
        ("sae.safetensors", {"W_enc": torch.ones(4, 8), "W_dec": torch.ones(8, 4), "b_enc": torch.ones(8)}),
    ],
)
def test_a_file_of_sae_weights_is_not_counted_as_activations(tmp_path: Path, name: str, tensors: dict) -> None:
    """An SAE's weights without the config that names their family (an OpenAI state dict, a
    copied weights file): refused, unless the tensors to count are named."""
    torch.save(tensors, tmp_path / name) if name.endswith(".pt") else write_shard(tmp_path / name, tensors)
    result = nact("scan", tmp_path / name)
    assert result.exit_code == 2 and result.stderr == (
        f"Error: {tmp_path / name}: holds an SAE's encoder and decoder weights, not activations: give it with --sae "
        "and scan the cache of activations it reads (or name the tensors to count with --key)\n"
    )
    key = next(iter(tensors))
    assert nact("scan", tmp_path / name, "--key", key).exit_code == 0


def test_a_stack_of_layers_is_a_question_not_a_guess(tmp_path: Path) -> None:
    """``cache.stack_activation(...)``'s [layer, batch, pos, d]: which axis holds components is
    asked, in one line naming both choices; each choice then counts what it says."""
    rng = np.random.default_rng(9)
    x = relu(rng, (2, 8, 32, 16))
    write_shard(tmp_path / "stack.safetensors", {"resid": torch.from_numpy(x)})
    result = nact("scan", tmp_path)
    assert result.exit_code == 2 and result.stderr == (
        f"Error: {tmp_path / 'stack.safetensors'}: tensor 'resid' of shape [2, 8, 32, 16]: has 2 axes between its "
        "first and its features: nact cannot tell which holds components (a stack of layers, heads) and which "
        "vectors: pick the component axis, or flatten them all (--flatten or --component-axis)\n"
    )
    per_layer = counts_of(tmp_path, component_axis=0)
    assert per_layer == {
        f"resid[{i}]": (fire_counts(x[i].reshape(-1, 16).astype(np.float64)).tolist(), 256) for i in range(2)
    }
    assert counts_of(tmp_path, flatten=True) == {
        "resid": (fire_counts(x.reshape(-1, 16).astype(np.float64)).tolist(), 512)
    }


def test_one_note_for_every_flattened_transformerlens_hook(tmp_path: Path) -> None:
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(6)]
    write_shard(tmp_path / "a.safetensors", {h: torch.ones(2, 5, 4) for h in hooks})
    result = nact("scan", tmp_path, "-f", "json")
    assert result.exit_code == 0
    assert result.stderr == (
        "Warning: 6 components (blocks.0.hook_resid_post, blocks.1.hook_resid_post, blocks.2.hook_resid_post, "
        "blocks.3.hook_resid_post, ...) read as a TransformerLens hook's [batch, position, d] layout: their positions "
        "flattened into vectors (--component-axis -2 counts per position, --flatten reads them so without this note)\n"
    )


def test_a_component_keeps_its_name_whatever_else_is_scanned(tmp_path: Path) -> None:
    """A folder is part of a name only where the same key is in several folders: scanning b/
    beside a/ leaves a/'s names as they were (jq selectors, cron comparisons, diff)."""
    write_shard(tmp_path / "a" / "0.safetensors", {"blocks.3.hook_resid_post": torch.ones(2, 3)})
    write_shard(tmp_path / "b" / "0.safetensors", {"blocks.4.hook_resid_post": torch.ones(2, 3)})
    write_shard(tmp_path / "c" / "0.safetensors", {"blocks.3.hook_resid_post": torch.zeros(2, 3)})
    alone = list(counts_of(tmp_path / "a"))
    assert alone == ["blocks.3.hook_resid_post"]
    assert list(counts_of([tmp_path / "a", tmp_path / "b"])) == ["blocks.3.hook_resid_post", "blocks.4.hook_resid_post"]
    both = counts_of([tmp_path / "a", tmp_path / "c"])  # the same key in two folders: told apart by them
    assert both == {"a/blocks.3.hook_resid_post": ([2, 2, 2], 2), "c/blocks.3.hook_resid_post": ([0, 0, 0], 2)}


def test_a_transformerlens_cache_with_attention_hooks(tmp_path: Path) -> None:
    """The 4-D hooks of a whole TransformerLens cache are known layouts: q, k, v, z give a
    component per head (positions flattened), attention patterns are skipped (not neurons,
    counted only when named); one note per layout, one warning for the skipped."""
    rng = np.random.default_rng(10)
    z = relu(rng, (2, 5, 3, 4))  # [batch, position, head, d_head]
    tensors = {
        "blocks.0.hook_resid_post": torch.from_numpy(relu(rng, (2, 5, 6))),
        "blocks.0.attn.hook_z": torch.from_numpy(z),
        "blocks.0.attn.hook_pattern": torch.rand(2, 3, 5, 5),
        "blocks.1.attn.hook_pattern": torch.rand(2, 3, 5, 5),
    }
    write_shard(tmp_path / "cache.safetensors", tensors)
    result = nact("scan", tmp_path, "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "Warning: skipped 2 tensors ('blocks.0.attn.hook_pattern', 'blocks.1.attn.hook_pattern'): a TransformerLens "
        "attention pattern [batch, head, query, key] is not neuron activations (--key names it to count it)",
        "Warning: component 'blocks.0.attn.hook_z': [2, 5, 3, 4] read as a TransformerLens attention hook's [batch, "
        "position, head, d_head] layout (a component per head): 5 positions flattened into 10 vectors (--flatten "
        "would count the heads as one component)",
        "Warning: component 'blocks.0.hook_resid_post': [2, 5, 6] read as a TransformerLens hook's [batch, position, "
        "d] layout: 5 positions flattened into 10 vectors (--component-axis -2 counts per position, --flatten reads "
        "them so without this note)",
    ]
    got = counts_of(tmp_path, keys=["blocks.0.attn.hook_z"])
    assert got == {f"blocks.0.attn.hook_z[{h}]": expect(z[:, :, h, :]) for h in range(3)}
