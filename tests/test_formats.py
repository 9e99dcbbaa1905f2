"""Every input format: fixtures made here, scanned, and checked against the numpy reference."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke_without
from reference import as_float64, fire_counts, random_activations, write_shard
from typer.testing import CliRunner

from nact_cli.main import app
from neuron_activity import BadInput, NactError, inspect, scan

runner = CliRunner()


def counts(folder_or_files, **kw) -> dict[str, tuple[list[int], int]]:
    paths = folder_or_files if isinstance(folder_or_files, list) else [folder_or_files]
    activity = scan(paths, **kw).activity
    return {name: (c.fire_counts.tolist(), c.num_vectors) for name, c in activity.components.items()}


def expected(values: np.ndarray, fire_above: str = "0") -> tuple[list[int], int]:
    return fire_counts(values.reshape(-1, values.shape[-1]), Fraction(fire_above)).tolist(), len(
        values.reshape(-1, values.shape[-1])
    )


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# --- .npy and .npz ---------------------------------------------------------------------------


def test_the_input_formats_are_the_readers_formats_in_order() -> None:
    from neuron_activity.sources import registry

    assert registry.INPUT_FORMATS == tuple(registry.READERS)


def test_npy_shards_one_component_per_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = [np.maximum(rng.standard_normal((n, 7)), 0).astype(np.float32) for n in (50, 31)]
    layer = rng.standard_normal((20, 3)).astype(np.float64)
    np.save(tmp_path / "acts_000.npy", a[0])
    np.save(tmp_path / "acts_001.npy", a[1])
    np.save(tmp_path / "layer0.npy", layer)
    got = counts(tmp_path, chunk_rows=8)
    assert got == {"acts": expected(np.concatenate(a)), "layer0": expected(layer)}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npy_fortran_order_and_component_axis(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(2)
    x = np.asfortranarray(rng.standard_normal((40, 3, 5)).astype(dtype))
    np.save(tmp_path / "x.npy", x)
    assert np.load(tmp_path / "x.npy").flags.f_contiguous
    got = counts(tmp_path / "x.npy", chunk_rows=7, fire_above="0.5")
    assert got == {f"x[{c}]": expected(x[:, c, :].astype(np.float64), "0.5") for c in range(3)}
    flat = counts(tmp_path / "x.npy", chunk_rows=7, flatten=True)
    assert flat == {"x": expected(x.astype(np.float64))}


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(3)
    arrays = {"resid": rng.standard_normal((333, 9)).astype(np.float32), "mlp": rng.standard_normal((333, 2, 4))}
    (np.savez_compressed if compressed else np.savez)(tmp_path / "cache.npz", **arrays)
    got = counts(tmp_path, chunk_rows=10)
    want = {"resid": expected(arrays["resid"].astype(np.float64))}
    want |= {f"mlp[{c}]": expected(arrays["mlp"][:, c, :]) for c in range(2)}
    assert got == want


def test_npz_members_are_mapped_or_streamed(tmp_path: Path) -> None:
    np.savez(tmp_path / "stored.npz", a=np.ones((4, 2)))
    np.savez_compressed(tmp_path / "packed.npz", a=np.ones((4, 2)))
    stored = inspect([tmp_path / "stored.npz"]).tensors[0].entry
    packed = inspect([tmp_path / "packed.npz"]).tensors[0].entry
    assert stored.offset is not None and packed.offset is None and packed.note == "compressed"


def test_broken_numpy_files(tmp_path: Path) -> None:
    good = tmp_path / "good.npy"
    np.save(good, np.ones((100, 4), np.float32))
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(good.read_bytes()[:-5])
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy at all")
    bad_zip = tmp_path / "bad.npz"
    bad_zip.write_bytes(b"PK\x03\x04 this is not a zip")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([[1 + 2j]]))
    cases = {
        truncated: f"Error: {truncated}: truncated: the array needs 1728 bytes but the file has 1723",
        garbage: f"Error: {garbage}: not a valid .npy array: the magic string is not correct; expected b'\\x93NUMPY', got b'not nu'",
        bad_zip: f"Error: {bad_zip}: not a valid .npz archive: File is not a zip file",
        objects: f"Error: {objects}: dtype complex128 is not supported (floating, integer or bool arrays only)",
    }
    for path, message in cases.items():
        result = nact("scan", path)
        assert (result.exit_code, result.stderr) == (2, message + "\n"), path


def test_corrupt_compressed_member(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez_compressed(path, a=np.random.default_rng(0).standard_normal((2000, 50)))
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("a.npy")
    middle = info.header_offset + 200 + info.compress_size // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    result = nact("scan", path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {path}: member 'a.npy': corrupt compressed data")


# --- torch.save files --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "F32"])
def test_torch_tensor_dict_and_nested(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(4)
    resid = random_activations(rng, (60, 8), dtype)
    states = random_activations(rng, (30, 2, 4), dtype)
    torch.save({"blocks.0.hook_resid_post": resid, "meta": {"step": 3}}, tmp_path / "tl_cache.pt")
    torch.save({"states": states}, tmp_path / "activault.pth")
    torch.save(resid, tmp_path / "bare_01.pt")
    got = counts([tmp_path / "tl_cache.pt", tmp_path / "activault.pth", tmp_path / "bare_01.pt"], chunk_rows=9)
    assert got == {  # activault's [batch, position, d] states: positions are vectors
        "states": expected(as_float64(states)),
        "bare": expected(as_float64(resid)),
        "blocks.0.hook_resid_post": expected(as_float64(resid)),
    }
    torch.save({"layer": {"acts": resid}}, tmp_path / "nested.pt")
    assert counts(tmp_path / "nested.pt") == {"layer.acts": expected(as_float64(resid))}


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"acts": torch.ones(2, 2), "payload": Exploit(marker)}, tmp_path / "evil.pt")
    result = nact("scan", tmp_path / "evil.pt")
    assert result.exit_code == 2 and result.stderr == (
        f"Error: {tmp_path / 'evil.pt'}: its pickle names __builtin__.getattr, which nact does not run: nact reads "
        "tensors, dicts and lists of tensors, and TransformerLens ActivationCache objects\n"
    )
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the same file, loaded unsafely, does run it
    assert marker.exists()


@contextmanager
def transformer_lens_classes() -> Iterator[tuple[type, type]]:
    """Stand-ins of TransformerLens' ActivationCache and HookedTransformer under their own module
    names (so that torch.save pickles them by those names), gone afterwards: the tests need no
    transformer_lens, and nact must read the files without it."""
    import sys
    import types

    class ActivationCache:  # as transformer_lens keeps it: cache_dict, the model, flags
        def __init__(self, cache_dict: dict, model: torch.nn.Module) -> None:
            self.cache_dict, self.model, self.has_batch_dim = cache_dict, model, True

    class HookedTransformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(8, 16)
            self.cfg = {"n_layers": 2, "act_fn": "gelu"}

        def __setstate__(self, state: dict) -> None:  # would run on an unsafe load
            raise AssertionError("the model was unpickled for real")

    package = types.ModuleType("transformer_lens")
    modules = {package.__name__: package}
    for name, cls in (("ActivationCache", ActivationCache), ("HookedTransformer", HookedTransformer)):
        module = types.ModuleType(f"transformer_lens.{name}")
        cls.__module__, cls.__qualname__ = module.__name__, name
        setattr(module, name, cls)
        setattr(package, name, module)
        modules[module.__name__] = module
    sys.modules.update(modules)
    try:
        yield ActivationCache, HookedTransformer
    finally:
        for name in modules:
            del sys.modules[name]


def test_a_transformer_lens_activation_cache_saved_whole_is_read_without_it(tmp_path: Path) -> None:
    """``torch.save(cache)`` of an ActivationCache (its model inside): its cache_dict counted as
    the same tensors saved on their own, nothing of the pickle run, the model left unread;
    strided views (a permuted attention pattern) included."""
    rng = np.random.default_rng(8)
    cache_dict = {
        "blocks.0.hook_resid_post": random_activations(rng, (2, 8, 16), "F32"),
        "blocks.0.mlp.hook_post": random_activations(rng, (2, 8, 32), "BF16"),
        "blocks.0.attn.hook_pattern": random_activations(rng, (2, 8, 4, 8), "F32").permute(0, 2, 1, 3),
    }
    with transformer_lens_classes() as (ActivationCache, HookedTransformer):
        torch.save(ActivationCache(cache_dict, HookedTransformer()), tmp_path / "cache.pt")
    torch.save(cache_dict, tmp_path / "dict.pt")
    args = ("--key", "blocks.0.hook_resid_post", "--key", "blocks.0.mlp.hook_post", "--component-axis", "-2")
    want = nact("scan", tmp_path / "dict.pt", *args, "-f", "json")
    got = nact("scan", tmp_path / "cache.pt", *args, "-f", "json")
    assert want.exit_code == 0 and got.exit_code == 0, got.stderr
    assert json.loads(got.stdout)["rows"] == json.loads(want.stdout)["rows"]
    assert counts(tmp_path / "cache.pt", keys=["blocks.0.hook_resid_post"]) == {
        "blocks.0.hook_resid_post": expected(as_float64(cache_dict["blocks.0.hook_resid_post"]))
    }
    pattern = nact("scan", tmp_path / "cache.pt", "--key", "blocks.0.attn.hook_pattern", "--flatten", "-f", "json")
    alone = nact("scan", tmp_path / "dict.pt", "--key", "blocks.0.attn.hook_pattern", "--flatten", "-f", "json")
    assert pattern.exit_code == 0, pattern.stderr
    assert json.loads(pattern.stdout)["rows"] == json.loads(alone.stdout)["rows"]


def test_an_object_of_another_class_is_named_in_one_line(tmp_path: Path) -> None:
    with transformer_lens_classes() as (_, HookedTransformer):
        torch.save({"model": HookedTransformer(), "acts": torch.ones(3, 4)}, tmp_path / "model.pt")
    for missing in (None, "torch"):
        code, stderr = (
            (lambda r: (r.exit_code, r.stderr))(nact("scan", tmp_path / "model.pt"))
            if missing is None
            else invoke_without(missing, ["scan", str(tmp_path / "model.pt")])
        )
        assert code == 2 and stderr == (
            f"Error: {tmp_path / 'model.pt'}: its pickle names transformer_lens.HookedTransformer.HookedTransformer, "
            "which nact does not run: nact reads tensors, dicts and lists of tensors, and TransformerLens "
            "ActivationCache objects\n"
        )


def test_broken_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save({"acts": torch.ones(100, 3)}, path)
    path.write_bytes(path.read_bytes()[:200])
    result = nact("scan", path)
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {path}: not a readable torch.save file")
    (tmp_path / "empty.pt").write_bytes(b"")
    result = nact("scan", tmp_path / "empty.pt")
    assert result.exit_code == 2 and "not a readable torch.save file" in result.stderr


# --- SAELens Arrow caches ----------------------------------------------------------------------


def write_saelens_cache(folder: Path, hooks: dict[str, np.ndarray], batch_rows: int, files: int = 2) -> None:
    """A saved datasets folder as SAELens writes it: one [context, d_in] array per row per hook."""
    import pyarrow as pa

    rows = next(iter(hooks.values())).shape[0]
    context = next(iter(hooks.values())).shape[1]
    tables = []
    per_file = -(-rows // files)
    for i in range(files):
        lo, hi = i * per_file, min((i + 1) * per_file, rows)
        columns = {}
        for name, x in hooks.items():
            d_in = x.shape[2]
            flat = pa.array(x[lo:hi].reshape(-1))
            inner = pa.FixedSizeListArray.from_arrays(flat, d_in)
            columns[name] = pa.ListArray.from_arrays(
                pa.array(np.arange(0, (hi - lo) * context + 1, context, dtype=np.int32)), inner
            )
        columns["token_ids"] = pa.array([[1] * context] * (hi - lo), type=pa.list_(pa.int32()))
        tables.append(pa.table(columns))
    write_datasets_folder(folder, tables, batch_rows)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {k: {"_type": "Array2D"} for k in hooks}}))


def write_datasets_folder(folder: Path, tables: list, batch_rows: int) -> None:
    """Arrow stream files, one per table in record batches of ``batch_rows``, and the
    ``state.json`` that lists them, as ``datasets.save_to_disk`` writes."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    names = []
    for i, table in enumerate(tables):
        name = f"data-{i:05d}-of-{len(tables):05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=batch_rows):
                writer.write_batch(batch)
        names.append(name)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))


def test_saelens_arrow_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    hooks = {
        "blocks.0.hook_resid_pre": np.maximum(rng.standard_normal((45, 6, 10)), 0).astype(np.float32),
        "blocks.1.hook_resid_pre": rng.standard_normal((45, 6, 3)).astype(np.float16),
    }
    write_saelens_cache(tmp_path / "cache", hooks, batch_rows=7)
    (tmp_path / "cache" / "cache-1234.arrow").write_bytes(b"a datasets cache file, not data")
    got = counts(tmp_path / "cache")
    assert got == {name: expected(x.astype(np.float64)) for name, x in hooks.items()}


def test_arrow_columns_are_mapped_a_run_per_record_batch(tmp_path: Path) -> None:
    """Each record batch's values lie in the file: the column is mapped from its runs and counted
    in windows on every thread (windows of 3 vectors never cross a batch of 7 rows x 6 positions),
    with positions skipped and last fires tracked as for any mapped tensor."""
    from neuron_activity import CountOptions
    from neuron_activity.engine import _work
    from neuron_activity.scan import plan_for
    from neuron_activity.sources import discover

    rng = np.random.default_rng(12)
    x = np.maximum(rng.standard_normal((45, 6, 10)) - 0.5, 0).astype(np.float32)
    x[:, :, 2] = 0
    x[44, 5, 2] = 1.0  # fires once, on the last vector
    write_saelens_cache(tmp_path / "cache", {"h": x}, batch_rows=7, files=2)
    plan = plan_for(discover([tmp_path / "cache"]), CountOptions())
    assert [s.entry.storage for s in plan.slabs] == ["mapped", "mapped"]
    assert [len(s.runs) for s in plan.slabs] == [4, 4]  # 23 and 22 rows in batches of 7
    assert [r[1] for r in plan.slabs[0].runs] == [42, 42, 42, 12]
    items = list(_work(plan, 3))
    for slab, start, end, _ in items:
        first, rows, _ = next(r for r in slab.runs if r[0] <= start < r[0] + r[1])
        assert first <= start < end <= first + rows
    flat = x.reshape(-1, 10).astype(np.float64)
    for threads in (1, 3):
        got = scan([tmp_path / "cache"], chunk_rows=3, threads=threads, track_last=True).activity.components["h"]
        assert (got.fire_counts.tolist(), got.num_vectors) == expected(flat)
        assert got.last_fired[2] == len(flat) - 1
    kept = scan([tmp_path / "cache"], chunk_rows=4, skip_positions=(0, 5)).activity.components["h"]
    assert (kept.fire_counts.tolist(), kept.num_vectors) == expected(x[:, 1:5].astype(np.float64))


@pytest.mark.parametrize("kind", ["list_", "large_list"])
def test_arrow_lists_of_any_length(tmp_path: Path, kind: str) -> None:
    """Hooks stored as variable-size lists of lists (or large lists): every row's lengths are
    read from the offsets, and the values counted where they lie."""
    import pyarrow as pa

    rng = np.random.default_rng(14)
    x = np.maximum(rng.standard_normal((23, 5, 6)), 0).astype(np.float32)
    make = getattr(pa, kind)
    column = pa.array(x.tolist(), type=make(make(pa.float32())))
    folder = tmp_path / kind.strip("_")
    write_datasets_folder(
        folder, [pa.table({"h": column, "token_ids": pa.array([[1] * 5] * 23, type=pa.list_(pa.int32()))})], 4
    )
    got = scan([folder], chunk_rows=7, threads=2).activity.components["h"]
    assert (got.fire_counts.tolist(), got.num_vectors) == expected(x.astype(np.float64))


def test_arrow_flattening_agrees_with_pyarrow_on_sliced_arrays() -> None:
    """nact flattens list arrays from their offsets (pyarrow's flatten imports pyarrow.compute):
    on sliced arrays, whose rows do not start at offset 0, both give the same values and lengths."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from neuron_activity.sources.arrow_files import _flat, _lengths

    arrays = [
        pa.array([[1.0], [2.0, 3.0], [4.0, 5.0, 6.0], [7.0]], type=pa.list_(pa.float32())),
        pa.array([[1.0], [2.0, 3.0], [4.0, 5.0, 6.0], [7.0]], type=pa.large_list(pa.float32())),
        pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.float32)), 3),
    ]
    for array in arrays:
        for part in (array, array.slice(1), array.slice(1, 2), array.slice(3)):
            assert _flat(part).to_pylist() == part.flatten().to_pylist()
            lengths = pc.list_value_length(part).to_pylist()
            assert _lengths(part) == (min(lengths), max(lengths))


def test_compressed_arrow_is_read_batch_by_batch(tmp_path: Path) -> None:
    """A compressed stream's values are not in the file as they lie: pyarrow decodes each batch."""
    import pyarrow as pa

    from neuron_activity import CountOptions
    from neuron_activity.scan import plan_for
    from neuron_activity.sources import discover

    rng = np.random.default_rng(13)
    x = np.maximum(rng.standard_normal((20, 4, 6)), 0).astype(np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 6)
    table = pa.table({"h": pa.FixedSizeListArray.from_arrays(inner, 4)})
    folder = tmp_path / "zstd"
    folder.mkdir()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with (
        pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema, options=options) as w,
    ):
        for batch in table.to_batches(max_chunksize=6):
            w.write_batch(batch)
    assert [s.entry.storage for s in plan_for(discover([folder]), CountOptions()).slabs] == ["batches"]
    assert counts(folder) == {"h": expected(x.astype(np.float64))}


def test_arrow_without_pyarrow_says_which_extra(tmp_path: Path) -> None:
    write_saelens_cache(tmp_path / "cache", {"h": np.ones((2, 3, 4), np.float32)}, batch_rows=2, files=1)
    code, stderr = invoke_without("pyarrow", ["scan", str(tmp_path / "cache")])
    assert (code, stderr) == (2, "Error: reading Arrow caches (SAELens) needs pyarrow: pip install 'nact[arrow]'\n")


def test_broken_arrow_file(tmp_path: Path) -> None:
    write_saelens_cache(tmp_path / "cache", {"h": np.ones((20, 3, 4), np.float32)}, batch_rows=5, files=1)
    data = tmp_path / "cache" / "data-00000-of-00001.arrow"
    data.write_bytes(data.read_bytes()[:300])
    result = nact("scan", tmp_path / "cache")
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {data}: not a readable Arrow file")


# --- legacy SAELens safetensors ----------------------------------------------------------------


def test_legacy_saelens_numbered_shards(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    shards = [random_activations(rng, (25, 1, 12), "F32") for _ in range(11)]
    for i, x in enumerate(shards):
        write_shard(tmp_path / f"{i}.safetensors", {"activations": x})
    result = scan([tmp_path])
    assert [p.name for p in result.plan.shards][:3] == ["0.safetensors", "1.safetensors", "2.safetensors"]
    got = {n: (c.fire_counts.tolist(), c.num_vectors) for n, c in result.activity.components.items()}
    # the generic key takes the folder's name; a component axis of size 1 gives one component
    assert got == {tmp_path.name: expected(np.concatenate([as_float64(x) for x in shards])[:, 0, :])}


# --- delphi sparse caches ----------------------------------------------------------------------


def write_delphi_module(folder: Path, dense: np.ndarray, splits: list[tuple[int, int]], tokens: bool = True) -> None:
    """Sparse splits of a dense [batch, position, latents] array, as delphi saves them."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    b, p, latent = np.nonzero(dense)
    values = dense[b, p, latent].astype(np.float16)
    for start, end in splits:
        keep = (latent >= start) & (latent <= end)
        locations = np.stack([b[keep], p[keep], latent[keep] - start], axis=1).astype(np.uint16)
        data = {"locations": locations, "activations": values[keep]}
        if tokens:
            data["tokens"] = np.zeros(dense.shape[:2], np.int64)
        save_file(data, str(folder / f"{start}_{end}.safetensors"))


def test_delphi_sparse_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    dense = np.maximum(rng.standard_normal((6, 16, 40)) - 1.0, 0).astype(np.float16)
    dense[0, 0, 5] = -1.0  # stored, but does not fire
    dense[1, 1, 6] = 1e-6  # stored, fires only when --fire-above is below it
    dense[:, :, 39] = 0  # the last latent never fires
    write_delphi_module(tmp_path / "layers.3.mlp", dense, [(0, 12), (13, 26), (27, 39)])
    write_delphi_module(tmp_path / "layers.5.mlp", dense[:, :, :20], [(0, 19)])
    result = scan([tmp_path], fire_above="1e-5")
    c = result.activity.components["layers.3.mlp"]
    assert (c.fire_counts.tolist(), c.num_vectors) == expected(dense.astype(np.float64), "1e-5")
    assert c.num_features == 40 and c.num_vectors == 96
    assert result.activity.components["layers.5.mlp"].num_features == 20
    assert any("entries it did not store" in w for w in result.warnings)
    lower = scan([tmp_path / "layers.3.mlp"], fire_above="0").activity.components["layers.3.mlp"]
    assert lower.fire_counts[6] == c.fire_counts[6] + 1


def test_a_delphi_run_folder_reads_its_latents(tmp_path: Path) -> None:
    """``nact scan RUN/`` of a delphi run (latents/ beside log/): its latents, and a note."""
    rng = np.random.default_rng(11)
    dense = np.maximum(rng.standard_normal((4, 8, 20)) - 1.0, 0).astype(np.float16)
    write_delphi_module(tmp_path / "run" / "latents" / "layers.3.mlp", dense, [(0, 9), (10, 19)])
    (tmp_path / "run" / "log").mkdir()
    torch.save({"layers.3.mlp": torch.ones(20, dtype=torch.int64)}, tmp_path / "run" / "log" / "firing_counts.pt")
    result = nact("scan", tmp_path / "run", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"Warning: {tmp_path / 'run'}: a delphi run: read its latents/ (1 other file(s) left out)"
    )
    assert counts(tmp_path / "run") == counts(tmp_path / "run" / "latents")
    told = "its width, 20 latents, is taken from its split names (no config.json)"
    assert told in result.stderr  # nothing says how wide the module is but the names of its splits
    (tmp_path / "run" / "latents" / "layers.3.mlp" / "config.json").write_text('{"n_splits": 2}')
    assert told not in nact("scan", tmp_path / "run").stderr


def test_broken_delphi_caches(tmp_path: Path) -> None:
    dense = np.ones((2, 3, 8), np.float16)
    write_delphi_module(tmp_path / "no_tokens", dense, [(0, 7)], tokens=False)
    with pytest.raises(BadInput, match="no split has a 'tokens' tensor"):
        scan([tmp_path / "no_tokens"])
    write_delphi_module(tmp_path / "overlap", dense, [(0, 4), (3, 7)])
    with pytest.raises(BadInput, match="latents overlap those of 0_4.safetensors"):
        scan([tmp_path / "overlap"])


# --- format detection --------------------------------------------------------------------------


def test_files_of_several_formats_are_each_read_as_their_own(tmp_path: Path) -> None:
    """A folder of .npy and .safetensors files, or the files named one by one: each through its
    own reader (scan and inspect alike); --input-format still picks one."""
    np.save(tmp_path / "a.npy", np.ones((3, 2), np.float32))
    write_shard(tmp_path / "b.safetensors", {"acts": torch.ones(4, 5)})
    result = nact("scan", tmp_path, "-f", "json")
    assert result.exit_code == 0 and result.stderr == (
        f"Warning: {tmp_path}: holds files of several formats (1 npy, 1 safetensors): each is read as its own\n"
    )
    assert counts(tmp_path) == {"a": ([3, 3], 3), "acts": ([4] * 5, 4)}
    assert counts([tmp_path / "a.npy", tmp_path / "b.safetensors"]) == {"a": ([3, 3], 3), "acts": ([4] * 5, 4)}
    shown = nact("inspect", tmp_path / "a.npy", tmp_path / "b.safetensors", "-f", "json")
    assert shown.exit_code == 0, shown.stderr
    assert sorted(t["key"] for t in json.loads(shown.stdout)["tensors"]) == ["a", "acts"]
    assert counts(tmp_path, input_format="npy") == {"a": ([3, 3], 3)}
    assert counts(tmp_path, input_format="safetensors") == {"acts": ([4] * 5, 4)}
    with pytest.raises(NactError, match="input format 'hdf5' is not a format: use safetensors, npy"):
        scan([tmp_path], input_format="hdf5")


def test_unknown_file_type(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = nact("scan", tmp_path / "notes.txt")
    assert result.exit_code == 2 and "unknown file type" in result.stderr


# --- inspect -----------------------------------------------------------------------------------


def test_inspect_json_describes_without_counting(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"acts": torch.ones(4, 2, 3), "tokens": torch.ones(4, dtype=torch.int64)})
    result = nact("inspect", tmp_path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["shards"] == [{"path": str(tmp_path / "a.safetensors"), "format": "safetensors"}]
    by_key = {t["key"]: t for t in doc["tensors"]}
    assert by_key["acts"]["components"] == ["acts[0]", "acts[1]"]
    assert (by_key["acts"]["num_vectors"], by_key["acts"]["num_features"], by_key["acts"]["bytes"]) == (4, 3, 96)
    assert by_key["acts"]["counted"] and not by_key["tokens"]["counted"]
    assert doc["problems"] == []


def test_inspect_lists_problems_and_exits_2(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"acts": torch.ones(4, 3)})
    write_shard(tmp_path / "b.safetensors", {"acts": torch.ones(4, 5)})
    (tmp_path / "c.safetensors").write_bytes(b"\x00")
    result = nact("inspect", tmp_path)
    assert result.exit_code == 2
    assert "a.safetensors" in result.stdout and "b.safetensors" in result.stdout  # the readable ones are shown
    assert result.stderr.splitlines() == [
        f"Error: {tmp_path / 'c.safetensors'}: not a safetensors file: 1 bytes, too short for a header"
    ]


# --- the time since last fired, in every format ------------------------------------------------


def last_fired(values: np.ndarray) -> list[int]:
    rows = np.arange(len(values))[:, None]
    return np.where(values > 0, rows, -1).max(axis=0, initial=-1).tolist()


def test_last_fired_in_every_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    parts = [
        (np.maximum(rng.standard_normal((n, 6)), 0) * (rng.random((n, 6)) < 0.05)).astype(np.float32) for n in (40, 33)
    ]
    whole = np.concatenate(parts).astype(np.float64)
    expected = last_fired(whole)
    np.savez(tmp_path / "acts_0.npz", acts=parts[0])  # mapped
    np.savez_compressed(tmp_path / "acts_1.npz", acts=parts[1])  # streamed
    got = scan([tmp_path / "acts_0.npz", tmp_path / "acts_1.npz"], track_last=True, chunk_rows=5).activity
    assert got.components["acts"].last_fired.tolist() == expected
    for i, p in enumerate(parts):
        torch.save({"acts": torch.from_numpy(p)}, tmp_path / f"t_{i}.pt")
    got = scan([tmp_path / "t_0.pt", tmp_path / "t_1.pt"], track_last=True, chunk_rows=5).activity
    assert got.components["acts"].last_fired.tolist() == expected
    hooks = {"h": whole.astype(np.float32).reshape(73, 1, 6)}
    write_saelens_cache(tmp_path / "cache", hooks, batch_rows=4, files=2)
    got = scan([tmp_path / "cache"], track_last=True).activity
    assert got.components["h"].last_fired.tolist() == expected


def test_last_fired_in_a_delphi_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    dense = np.maximum(rng.standard_normal((5, 7, 30)) - 1.8, 0).astype(np.float16)
    write_delphi_module(tmp_path / "m", dense, [(0, 14), (15, 29)])
    got = scan([tmp_path / "m"], track_last=True).activity.components["m"]
    assert got.last_fired.tolist() == last_fired(dense.reshape(35, 30).astype(np.float64))


# --- .pt files read without torch ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_pt_files_are_mapped_without_torch_and_agree_with_torch(tmp_path: Path, dtype: str) -> None:
    from neuron_activity.sources import torch_zip

    rng = np.random.default_rng(20)
    big = random_activations(rng, (50, 6), dtype)
    saved = {
        "blocks.0.hook_sae_acts": big,
        "view": big[7:19],  # a view: its storage is the whole of big, at an offset
        "nested": {"layers": [random_activations(rng, (9, 2, 3), dtype)]},
        "param": torch.nn.Parameter(random_activations(rng, (11, 4), "F32"), requires_grad=False),
        "step": 7,
    }
    torch.save(saved, tmp_path / "cache.pt")
    mapped = torch_zip.entries(tmp_path / "cache.pt", "torch")
    assert mapped is not None and {e.key for e in mapped} == {
        "blocks.0.hook_sae_acts",
        "view",
        "nested.layers.0",
        "param",
    }
    assert all(e.storage == "mapped" for e in mapped)
    got = counts(tmp_path / "cache.pt", chunk_rows=4, fire_above="1e-5")
    assert got["blocks.0.hook_sae_acts"] == expected(as_float64(big), "1e-5")
    assert got["view"] == expected(as_float64(big[7:19]), "1e-5")
    assert got["nested.layers.0[1]"] == expected(as_float64(saved["nested"]["layers"][0])[:, 1, :], "1e-5")
    assert got["param"] == expected(as_float64(saved["param"].data), "1e-5")


def test_pt_files_torch_must_read_fall_back_to_it(tmp_path: Path) -> None:
    from neuron_activity.sources import torch_zip

    x = torch.arange(24.0).reshape(4, 6)
    torch.save({"t": x.t()}, tmp_path / "strided.pt")  # not row-major: torch reads it
    assert torch_zip.entries(tmp_path / "strided.pt", "torch") is None
    assert counts(tmp_path / "strided.pt") == {"t": expected(x.t().numpy().astype(np.float64))}
    torch.save({"t": x}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert torch_zip.entries(tmp_path / "legacy.pt", "torch") is None
    assert counts(tmp_path / "legacy.pt") == {"t": expected(x.numpy().astype(np.float64))}


def test_a_pt_scan_does_not_import_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    torch.save({"acts": torch.ones(5, 3)}, tmp_path / "a.pt")
    code = (
        "import sys; from neuron_activity import scan\n"
        f"c = scan([{str(tmp_path / 'a.pt')!r}]).activity.components['acts']\n"
        "print(c.fire_counts.tolist(), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("]")[-1].strip() == "False" and done.stdout.startswith("[5, 5, 5]")


def test_arrow_array2d_as_fixed_size_lists(tmp_path: Path) -> None:
    """datasets stores Array2D(shape=(context, d)) as fixed-size lists of fixed-size lists: the shape
    is read from the schema, the values counted in place."""
    import pyarrow as pa

    rng = np.random.default_rng(9)
    x = np.maximum(rng.standard_normal((30, 5, 7)), 0).astype(np.float32)
    x[:, :, 3] = 0
    folder = tmp_path / "cache"
    folder.mkdir()
    inner = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 7)
    column = pa.FixedSizeListArray.from_arrays(inner, 5)
    table = pa.table(
        {"blocks.2.hook_resid_post": column, "token_ids": pa.array([[1] * 5] * 30, type=pa.list_(pa.int32()))}
    )
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=8):
            w.write_batch(batch)
    got = counts(folder)
    assert got == {"blocks.2.hook_resid_post": expected(x.astype(np.float64))}
    sliced = scan([folder], skip_positions=(0,)).activity.components["blocks.2.hook_resid_post"]
    assert sliced.num_vectors == 30 * 4 and sliced.fire_counts.tolist() == (x[:, 1:] > 0).reshape(-1, 7).sum(0).tolist()


def test_delphi_skip_positions(tmp_path: Path) -> None:
    """Positions of a delphi cache are known from 'tokens': entries at skipped positions are left
    out, vectors are those kept, and the last vector each latent fired on counts among them."""
    rng = np.random.default_rng(11)
    dense = np.maximum(rng.standard_normal((5, 7, 30)) - 0.8, 0).astype(np.float16)
    dense[:, 0, 4] = 3.0  # fires only at position 0
    write_delphi_module(tmp_path / "layers.2.mlp", dense, [(0, 14), (15, 29)])
    c = scan([tmp_path], skip_positions=(0, 3), track_last=True).activity.components["layers.2.mlp"]
    kept = np.delete(dense, [0, 3], axis=1).reshape(-1, 30).astype(np.float64)
    assert (c.fire_counts.tolist(), c.num_vectors) == expected(kept)
    assert c.fire_counts[4] == 0 or (kept[:, 4] > 0).any()
    fired = kept > 0
    last = np.where(fired.any(0), len(kept) - 1 - np.argmax(fired[::-1], axis=0), -1)
    assert c.last_fired.tolist() == last.tolist()
    plain = scan([tmp_path]).activity.components["layers.2.mlp"]
    assert plain.fire_counts[4] > c.fire_counts[4]


def test_a_delphi_column_drops_its_own_pages_each_once(tmp_path: Path) -> None:
    """Pages are let go from the column's first page on, each range once, never the file's start."""
    import mmap

    from neuron_activity.sources import delphi_caches
    from neuron_activity.sources.base import TensorEntry

    page = mmap.PAGESIZE
    rows = 3 * page // 12 + 10  # rows of 12 bytes from byte page + 100: they end in the file's fifth page
    path = tmp_path / "split.safetensors"
    path.write_bytes(bytes(6 * page))
    entry = TensorEntry(path, "locations", "I32", (rows, 3), "delphi", offset=page + 100)
    column = delphi_caches._Column(path, entry, np.int32)
    dropped: list[tuple[int, int]] = []

    class Recorded:
        def madvise(self, advice: int, start: int, length: int) -> None:
            dropped.append((start, length))

    column.map = Recorded()
    to_second_page = -(-(page - 100) // 12)  # the first rows that fill the column's first page
    for counted in (10, to_second_page, to_second_page, rows):
        column.drop_behind(counted)
    assert dropped == [(page, page), (2 * page, 2 * page)]
