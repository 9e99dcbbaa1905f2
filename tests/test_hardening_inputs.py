"""Hardening of the newer inputs: JSON files beside the data, saved counts and sparsity files.

Each refusal is one line and exit code 2, whatever the file holds (see docs/security.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from test_formats import write_delphi_module, write_saelens_cache
from test_hardening import assert_one_line_error, nact

DEEP = "[" * 100_000 + "]" * 100_000  # deeper than json's parser goes: its RecursionError


# --- JSON files: one reader for all of them -----------------------------------------------------


def sparsity_file(folder: Path, values: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sparsity.safetensors"
    save_file({"sparsity": np.full(8, -2.0, np.float32) if values is None else values}, str(path))
    return path


def test_json_beside_the_data_nested_too_deep_or_not_a_file(tmp_path: Path) -> None:
    """sparsity cfg.json, delphi config.json and datasets state.json are read by one reader
    (json_files.read_json): nested too deep is one line, a FIFO is never opened."""
    sparsity = sparsity_file(tmp_path / "sae")
    (tmp_path / "sae" / "cfg.json").write_text(DEEP)
    assert_one_line_error(nact("density", sparsity), "cfg.json: not JSON nact reads: nested too deep")
    (tmp_path / "sae" / "cfg.json").unlink()
    os.mkfifo(tmp_path / "sae" / "cfg.json")  # opened, it would block until a writer came
    assert_one_line_error(nact("density", sparsity), "cfg.json: not a regular file")

    dense = np.maximum(np.random.default_rng(0).standard_normal((2, 5, 8)), 0).astype(np.float16)
    write_delphi_module(tmp_path / "latents" / "m", dense, [(0, 7)])
    (tmp_path / "latents" / "m" / "config.json").write_text(DEEP)
    assert_one_line_error(nact("scan", tmp_path / "latents"), "config.json: not JSON nact reads: nested too deep")

    pytest.importorskip("pyarrow")
    write_saelens_cache(tmp_path / "cache", {"h": np.ones((4, 2, 3), np.float32)}, batch_rows=2, files=1)
    (tmp_path / "cache" / "state.json").write_text(DEEP)
    assert_one_line_error(nact("scan", tmp_path / "cache"), "state.json: not JSON nact reads: nested too deep")


def test_a_sparsity_file_too_wide_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_activity import memory

    width = 1 << 25
    path = tmp_path / "sparsity.safetensors"
    header = json.dumps({"sparsity": {"dtype": "F32", "shape": [width], "data_offsets": [0, 4 * width]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 4 * width)  # a sparse file: 128 MiB of zeros that take no disk
    monkeypatch.setattr(memory, "available", lambda: 1 << 30)
    done = nact("density", path)
    assert done.exit_code == 2 and done.stderr == (
        f"Error: {path}: reading 33,554,432 latent densities needs 2.2 GiB of memory, more than this machine "
        "has available (1.0 GiB)\n"
    )


# --- saved counts --------------------------------------------------------------------------------

KEY = "blocks.0.hook_sae_acts"


@pytest.fixture(scope="module")
def counts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("counts") / "c.safetensors"
    assert nact("scan", SAMPLE_DATA, "-k", KEY, "--save-counts", path, "-q").exit_code == 0
    return path


Edit = Callable[[dict[str, np.ndarray], dict[str, str]], None]


def edited(source: Path, target: Path, edit: Edit) -> Path:
    with safe_open(str(source), "numpy") as f:
        metadata = f.metadata()
    tensors = load_file(str(source))
    edit(tensors, metadata)
    save_file(tensors, str(target), metadata=metadata)
    return target


def _set(mapping: dict, key: str, value: object) -> None:
    mapping[key] = value


@pytest.mark.parametrize(
    ("edit", "contains"),
    [
        (
            lambda t, m: _set(t, f"{KEY}/fire_counts", t[f"{KEY}/fire_counts"] + 0.7),
            f"{KEY}/fire_counts is stored as F64, not as a scan stores its whole counts (I64)",
        ),
        (
            lambda t, m: _set(t, f"{KEY}/fire_counts", t[f"{KEY}/fire_counts"].astype(np.float64)),
            "is stored as F64",  # whole numbers in floats too: a scan never writes them
        ),
        (lambda t, m: _set(m, "first_neurons", json.dumps({KEY: 10**30})), "first neuron 10000"),
        (lambda t, m: _set(m, "first_neurons", json.dumps({KEY: 1.5})), "first_neurons names no component"),
        (
            lambda t, m: _set(
                m, "part", json.dumps({"index": 0, "of": 10**12, "first_unit": 0, "units": 1, "total_units": 10**12})
            ),
            "is not a part of a split scan (at most 1,000,000 parts)",
        ),
        (
            lambda t, m: _set(
                m, "part", json.dumps({"index": 3, "of": 2, "first_unit": 0, "units": 1, "total_units": 4})
            ),
            "is not a part of a split scan",
        ),
        (lambda t, m: _set(t, f"{KEY}/nan_counts", np.zeros(3, np.int64)), "nan_counts has shape [3], not [8]"),
        (lambda t, m: t.pop(f"{KEY}/nan_counts"), "has no nan_counts"),
    ],
)
def test_counts_no_scan_could_have_written(tmp_path: Path, counts: Path, edit: Edit, contains: str) -> None:
    """Checked from the header before any tensor is read: fractional (float) fire counts, a
    first neuron or a part record beyond any scan's, tensors of the wrong shape or missing."""
    bad = edited(counts, tmp_path / "bad.safetensors", edit)
    assert_one_line_error(nact("report", bad, "--neurons"), contains)
    assert_one_line_error(nact("merge", bad, counts, "-o", tmp_path / "m.safetensors"))
    assert not (tmp_path / "m.safetensors").exists()


def test_sums_that_would_overflow_are_refused(tmp_path: Path, counts: Path) -> None:
    near = np.array([2**62 + 2**61], np.int64)

    def shard(name: str) -> Edit:
        def edit(t: dict[str, np.ndarray], m: dict[str, str]) -> None:
            t[f"{KEY}/num_vectors"] = near
            m["shards"] = json.dumps([{"path": f"/elsewhere/{name}", "size": 1, "mtime_ns": 1}])

        return edit

    a = edited(counts, tmp_path / "a.safetensors", shard("a"))
    b = edited(counts, tmp_path / "b.safetensors", shard("b"))
    assert nact("report", a, "-f", "csv").exit_code == 0  # one of them is fine
    expected = f"would count {2 * int(near[0]):,} vectors in all, more than a count holds (2^63 - 1)"
    assert_one_line_error(nact("report", a, b), expected)  # it said every neuron was dead
    assert_one_line_error(nact("merge", a, b, "-o", tmp_path / "m.safetensors"), expected)  # it was exit 3
    assert not (tmp_path / "m.safetensors").exists()


def test_counts_merged_twice_are_refused(tmp_path: Path, counts: Path) -> None:
    """Counts files record their shards: overlapping shard sets are refused, naming the shard;
    counts a training loop saved record that they were counted in memory; a file whose shard
    list was emptied cannot be merged at all."""
    torch = pytest.importorskip("torch")
    from neuron_activity.metric import TensorActivity

    metric = TensorActivity(2)
    metric.update(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
    metric.save_counts(tmp_path / "training.safetensors")
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes((tmp_path / "training.safetensors").read_bytes())
    done = nact("merge", tmp_path / "training.safetensors", copy, "-o", tmp_path / "m.safetensors")
    assert_one_line_error(done, "<counted in memory ")
    assert "is counted in both" in done.stderr

    assert_one_line_error(nact("merge", counts, counts, "-o", tmp_path / "m.safetensors"), "is counted in both")
    emptied = edited(counts, tmp_path / "e.safetensors", lambda t, m: _set(m, "shards", "[]"))
    assert_one_line_error(
        nact("merge", emptied, emptied, "-o", tmp_path / "m.safetensors"),
        "e.safetensors: records no shards, so nact cannot tell whether its counts are in the others already",
    )
    assert nact("report", emptied, "-q").exit_code == 0  # alone, it is still read
    assert not (tmp_path / "m.safetensors").exists()


def test_diff_of_counts_with_no_component_in_common(tmp_path: Path, counts: Path) -> None:
    def rename(t: dict[str, np.ndarray], m: dict[str, str]) -> None:
        for key in list(t):
            t[key.replace(KEY, "other")] = t.pop(key)
        m["components"] = json.dumps(["other"])

    other = edited(counts, tmp_path / "other.safetensors", rename)
    done = nact("diff", counts, other)
    assert done.exit_code == 2 and done.stdout == ""
    assert done.stderr == (
        f"Error: the two counts have no component in common: before only '{KEY}'; after only 'other'\n"
    )


def test_a_component_named_by_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    """Its name (undecodable bytes kept as surrogates) is saved losslessly and read back the same."""
    from neuron_activity.counts_file import load_counts

    folder = os.fsencode(str(tmp_path)) + b"/data"
    os.mkdir(folder)
    name = folder + b"/a\xff.npy"
    np.save(os.fsdecode(name), np.eye(4, dtype=np.float32))
    out = tmp_path / "c.safetensors"
    assert nact("scan", os.fsdecode(folder), "--save-counts", out, "-q").exit_code == 0
    saved = load_counts(out)
    assert list(saved.activity.components) == ["a\udcff"]
    assert saved.activity.components["a\udcff"].fire_counts.tolist() == [1, 1, 1, 1]
    assert [os.fsencode(s.path) for s in saved.shards] == [name]  # the same bytes, the same file
    assert nact("merge", out, "-o", tmp_path / "again.safetensors").exit_code == 0
    assert list(load_counts(tmp_path / "again.safetensors").activity.components) == ["a\udcff"]
