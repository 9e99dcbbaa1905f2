"""Saved counts, report, merge, diff, incremental audits, time since last fired, and parts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA
from reference import as_float64, fire_counts, greater_than, random_activations, write_shard
from typer.testing import CliRunner

from nact_cli.main import app
from neuron_activity import NactError, scan
from neuron_activity.audit import audit
from neuron_activity.counts_file import SavedCounts, load_counts, save_counts
from neuron_activity.files import locked
from neuron_activity.options import Part

runner = CliRunner()


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def last_fired_reference(values: np.ndarray, fire_above: str = "0") -> list[int]:
    """Index of the last row on which each column fired, -1 if never, by a plain numpy scan."""
    fires = greater_than(values, Fraction(fire_above))
    rows = np.arange(len(values))[:, None]
    return np.where(fires, rows, -1).max(axis=0, initial=-1).tolist()


def make_shards(folder: Path, rows: list[int], seed: int = 0, dtype: str = "BF16") -> np.ndarray:
    rng = np.random.default_rng(seed)
    shards = [random_activations(rng, (n, 2, 9), dtype) for n in rows]
    for i, x in enumerate(shards):
        write_shard(folder / f"shard_{i:03d}.safetensors", {"acts": x})
    return np.concatenate([as_float64(x) for x in shards])


# --- time since last fired ---------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["native", "numpy", "torch"])
def test_last_fired_in_stream_order(tmp_path: Path, kernel: str) -> None:
    values = make_shards(tmp_path, [300, 1, 0, 777, 40])
    write_shard(tmp_path / "shard_999.safetensors", {"acts": torch.zeros(20, 2, 9, dtype=torch.bfloat16)})
    values = np.concatenate([values, np.zeros((20, 2, 9))])  # nothing fires at the end
    for chunk_rows in (1, 7, 256, None):
        for threads in (1, 2):
            activity = scan([tmp_path], track_last=True, chunk_rows=chunk_rows, threads=threads, kernel=kernel).activity
            for c in range(2):
                assert activity.components[f"acts[{c}]"].last_fired.tolist() == last_fired_reference(values[:, c, :])


def test_last_fired_with_folded_narrow_rows() -> None:
    from neuron_activity import count_array

    rng = np.random.default_rng(1)
    for width in (1, 3, 1023, 1024, 1100):
        x = (rng.random((3000, width)) < 0.001).astype(np.float32)
        for kernel in ("native", "numpy", "torch"):
            got = count_array(x, track_last=True, kernel=kernel).components["activations"].last_fired
            assert got.tolist() == last_fired_reference(x.astype(np.float64)), (width, kernel)


def test_vectors_since_fired_and_window() -> None:
    from neuron_activity import count_array

    x = np.zeros((10, 4), np.float32)
    x[9, 0] = 1  # fired on the last vector
    x[2, 1] = 1  # fired 7 vectors before the end
    x[[0, 4], 2] = 1
    c = count_array(x, track_last=True).components["activations"]
    assert c.vectors_since_fired.tolist() == [0, 7, 5, 10]
    assert c.dead_in_window(5).tolist() == [False, True, True, True]
    assert c.dead_in_window(6).tolist() == [False, True, False, True]
    assert c.dead_in_window(1000).tolist() == [False, False, False, True]  # fewer vectors than the window


# --- saved counts, report, merge -------------------------------------------------------------


def test_report_of_saved_counts_equals_scan(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", [100, 50])
    scanned = nact(
        "scan", tmp_path / "data", "-f", "json", "-t", "0", "-t", "0.1", "--save-counts", tmp_path / "c.safetensors"
    )
    reported = nact("report", tmp_path / "c.safetensors", "-f", "json", "-t", "0", "-t", "0.1")
    assert scanned.exit_code == reported.exit_code == 0
    assert json.loads(reported.stdout)["rows"] == json.loads(scanned.stdout)["rows"]
    saved = load_counts(tmp_path / "c.safetensors")
    assert [Path(s.path).name for s in saved.shards] == ["shard_000.safetensors", "shard_001.safetensors"]
    assert saved.activity.components["acts[0]"].last_fired is not None


def test_parts_merge_into_the_whole(tmp_path: Path) -> None:
    values = make_shards(tmp_path / "data", [30, 70, 0, 55, 12], seed=3)
    parts = []
    for i in range(3):
        out = tmp_path / f"part{i}.safetensors"
        assert nact("scan", tmp_path / "data", "--shard", f"{i}/3", "--save-counts", out, "-q").exit_code == 0
        parts.append(out)
    assert nact("merge", *parts, "-o", tmp_path / "all.safetensors").exit_code == 0
    merged = load_counts(tmp_path / "all.safetensors").activity
    for c in range(2):
        comp = merged.components[f"acts[{c}]"]
        assert comp.fire_counts.tolist() == fire_counts(values[:, c, :]).tolist()
        assert comp.num_vectors == len(values)
        assert comp.last_fired.tolist() == last_fired_reference(values[:, c, :])
    assert len(load_counts(tmp_path / "all.safetensors").shards) == 5


def test_part_of_is_a_stable_split() -> None:
    units = [Path(f"{i}") for i in range(10)]
    parts = [Part(i, 3).of_units(units) for i in range(3)]
    assert sum(parts, []) == units
    assert [len(p) for p in parts] == [3, 3, 4]


def test_merge_errors(tmp_path: Path) -> None:
    make_shards(tmp_path / "a", [10])
    make_shards(tmp_path / "b", [10])
    write_shard(tmp_path / "c" / "x.safetensors", {"acts": torch.ones(3, 2, 5)})
    nact("scan", tmp_path / "a", "--save-counts", tmp_path / "a.safetensors", "-q")
    nact("scan", tmp_path / "b", "--save-counts", tmp_path / "b.safetensors", "-q", "--fire-above", "0.5")
    nact("scan", tmp_path / "c", "--save-counts", tmp_path / "c.safetensors", "-q")
    out = tmp_path / "m.safetensors"
    cases = [
        (
            [tmp_path / "a.safetensors", tmp_path / "b.safetensors"],
            "b.safetensors: counted with fire above 0.5, "
            + str(tmp_path / "a.safetensors")
            + " with 0: counts of different fire rules do not add up",
        ),
        (
            [tmp_path / "a.safetensors", tmp_path / "c.safetensors"],
            "component 'acts[0]' has 9 features, cannot add counts for 5",
        ),
        ([tmp_path / "a.safetensors", tmp_path / "a.safetensors"], "is counted in both"),
        ([tmp_path / "a" / "shard_000.safetensors"], "not a nact counts file"),
    ]
    for files, message in cases:
        result = nact("merge", *files, "-o", out)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert not out.exists()


# --- diff ----------------------------------------------------------------------------------


def test_diff_died_revived_stayed(tmp_path: Path) -> None:
    old = torch.zeros(4, 5)
    old[:, 0] = 1  # alive, then dies
    old[:, 1] = 1  # alive in both
    new = torch.zeros(4, 5)
    new[:, 1] = 1
    new[:, 2] = 1  # dead, then revives
    for name, x in (("old", old), ("new", new)):
        write_shard(tmp_path / name / "s.safetensors", {"sae": x})
        nact("scan", tmp_path / name, "--save-counts", tmp_path / f"{name}.safetensors", "-q")
    result = nact("diff", tmp_path / "old.safetensors", tmp_path / "new.safetensors", "--neurons", "-f", "json")
    assert result.exit_code == 0
    (c,) = json.loads(result.stdout)["components"]
    assert c == {
        "component": "sae",
        "died": 1,
        "revived": 1,
        "stayed_dead": 2,
        "dead_old": 3,
        "dead_new": 3,
        "neurons": {"died": [0], "revived": [2], "stayed_dead": [3, 4]},
    }
    failed = nact("diff", tmp_path / "old.safetensors", tmp_path / "new.safetensors", "--fail-on-new-dead")
    assert failed.exit_code == 1 and failed.stderr == "Newly dead neurons: 1 (sae: 1)\n"
    table = nact("diff", tmp_path / "old.safetensors", tmp_path / "new.safetensors", "--neurons")
    assert "sae died: 0" in table.stdout and "sae revived: 2" in table.stdout
    assert nact("diff", tmp_path / "new.safetensors", tmp_path / "new.safetensors", "--fail-on-new-dead").exit_code == 0


# --- incremental audits --------------------------------------------------------------------


def test_incremental_audit_counts_each_shard_once(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "audit.safetensors"
    make_shards(data, [40, 60], seed=5)
    first = audit([data], state)
    assert len(first.new_shards) == 2
    again = audit([data], state)
    assert again.new_shards == [] and again.scan is None
    rng = np.random.default_rng(9)
    write_shard(data / "shard_002.safetensors", {"acts": random_activations(rng, (25, 2, 9), "BF16")})
    third = audit([data], state)
    assert [p.name for p in third.new_shards] == ["shard_002.safetensors"]
    whole = scan([data], track_last=True).activity
    saved = load_counts(state).activity
    for name, c in whole.components.items():
        assert saved.components[name].fire_counts.tolist() == c.fire_counts.tolist()
        assert saved.components[name].num_vectors == c.num_vectors == 125
        assert saved.components[name].last_fired.tolist() == c.last_fired.tolist()


def test_changed_shard_is_an_error_unless_rescan(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "audit.safetensors"
    make_shards(data, [40, 60])
    assert nact("scan", data, "--state", state, "-q").exit_code == 0
    before = state.read_bytes()
    write_shard(data / "shard_000.safetensors", {"acts": torch.ones(41, 2, 9)})
    result = nact("scan", data, "--state", state, "-q")
    assert result.exit_code == 2
    assert f"{data / 'shard_000.safetensors'}: changed since {state} counted it" in result.stderr
    assert state.read_bytes() == before
    result = nact("scan", data, "--state", state, "--rescan", "-f", "json", "-t", "0")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["rows"][0]["num_vectors"] == 101


def test_audit_with_another_fire_above_is_refused(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", [10])
    nact("scan", tmp_path / "data", "--state", tmp_path / "s.safetensors", "-q")
    result = nact("scan", tmp_path / "data", "--state", tmp_path / "s.safetensors", "--fire-above", "0.1")
    assert (
        result.exit_code == 2
        and "counted with fire above 0, not 0.1: use the same --fire-above, or --rescan to start over" in result.stderr
    )


def test_locked_state_is_refused(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", [10])
    state = tmp_path / "s.safetensors"
    with locked(state):
        result = nact("scan", tmp_path / "data", "--state", state)
    assert result.exit_code == 2
    assert result.stderr == f"Error: {state}: another nact audit is using it (lock {state}.lock is held)\n"
    assert not state.exists()


def test_lock_is_held_across_processes(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", [10])
    state = tmp_path / "s.safetensors"
    code = (
        "import sys, time; from neuron_activity.files import locked\n"
        f"with locked({str(state)!r}):\n    print('held', flush=True); time.sleep(3)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = nact("scan", tmp_path / "data", "--state", state)
        assert result.exit_code == 2 and "another nact audit is using it" in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_interrupted_audit_leaves_the_state_intact(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "audit.safetensors"
    make_shards(data, [40])
    audit([data], state)
    before = state.read_bytes()
    make_shards(tmp_path / "more", [30, 30], seed=8)
    for p in (tmp_path / "more").iterdir():
        shutil.move(p, data / f"new_{p.name}")

    def interrupt(path: Path, nbytes: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        audit([data], state, on_progress=interrupt)
    assert state.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.safetensors", "audit.safetensors.lock", "data", "more"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_activity import count_array, counts_file

    path = tmp_path / "counts.safetensors"
    save_counts(path, SavedCounts(count_array(np.ones((3, 2))), []))
    before = path.read_bytes()

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(counts_file, "save_file", half_written)
    with pytest.raises(NactError, match="No space left on device"):
        save_counts(path, SavedCounts(count_array(np.zeros((3, 2))), []))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["counts.safetensors"]


def test_report_errors(tmp_path: Path) -> None:
    result = nact("report", tmp_path / "missing.safetensors")
    assert (result.exit_code, result.stderr) == (2, f"Error: {tmp_path / 'missing.safetensors'}: no such file\n")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    result = nact("report", tmp_path / "junk.safetensors")
    assert (
        result.stderr
        == f"Error: {tmp_path / 'junk.safetensors'}: not a nact counts file (saved with nact scan --save-counts)\n"
    )


# --- torchrun ----------------------------------------------------------------------------------


def torchrun(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    command = [str(exe / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python", str(exe / "nact")]
    return subprocess.run(
        command + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_torchrun_equals_single_process(tmp_path: Path) -> None:
    make_shards(tmp_path / "data", [30, 70, 55, 12, 9], seed=11)
    single = nact("scan", tmp_path / "data", "-f", "json", "--window", "50")
    done = torchrun(
        "scan",
        tmp_path / "data",
        "-f",
        "json",
        "--window",
        "50",
        "--save-counts",
        tmp_path / "d.safetensors",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == json.loads(single.stdout)["rows"]  # printed once, by rank 0
    whole = scan([tmp_path / "data"], track_last=True).activity
    saved = load_counts(tmp_path / "d.safetensors").activity
    for name, c in whole.components.items():
        assert saved.components[name].last_fired.tolist() == c.last_fired.tolist()
        assert saved.components[name].fire_counts.tolist() == c.fire_counts.tolist()


def test_state_kept_beside_the_shards_is_not_a_shard(tmp_path: Path) -> None:
    make_shards(tmp_path, [20])
    state = tmp_path / "audit.safetensors"
    first = nact("scan", tmp_path, "--state", state, "-f", "json", "-t", "0")
    again = nact("scan", tmp_path, "--state", state, "-f", "json", "-t", "0")
    assert first.exit_code == again.exit_code == 0
    assert first.stderr == again.stderr == ""  # no warning about the state's int64 tensors
    assert json.loads(again.stdout)["rows"] == json.loads(first.stdout)["rows"]
    named = nact("scan", state)
    assert (named.exit_code, named.stderr) == (
        2,
        f"Error: {state}: saved counts, not activations: read it with nact report or nact density\n",
    )


def test_the_library_diff_takes_a_plain_threshold(tmp_path: Path) -> None:
    from neuron_activity import saved
    from neuron_activity.activity import NeuronActivity

    old, new = NeuronActivity(), NeuronActivity()
    old.add("a", np.array([5, 1, 0]), 1_000_000)
    new.add("a", np.array([5, 0, 0]), 1_000_000)
    save_counts(tmp_path / "old.safetensors", SavedCounts(old, []))
    save_counts(tmp_path / "new.safetensors", SavedCounts(new, []))
    for threshold in (1e-6, "1e-6", "0.0001%"):  # one fire in a million vectors: dead at it
        changes = saved.diff(tmp_path / "old.safetensors", tmp_path / "new.safetensors", threshold)
        assert changes.threshold.value == Fraction(1, 10**6)
    assert saved.diff(tmp_path / "old.safetensors", tmp_path / "new.safetensors", 0.0).died == 1  # neuron 1


def test_an_audit_survives_a_touch_and_says_when_a_shard_is_gone(tmp_path: Path) -> None:
    """A counted shard whose time moved but whose bytes did not (touch, cp without -p) is as it
    was counted: the audit goes on and refreshes its record. One that is gone is named, its
    counts kept; --fail-on-missing makes that exit 1 for cron."""
    data, state = tmp_path / "data", tmp_path / "state.safetensors"
    rng = np.random.default_rng(12)
    for i in range(3):
        write_shard(data / f"{i}.safetensors", {"acts": random_activations(rng, (40, 5), "F32")})
    first = runner.invoke(app, ["scan", str(data), "--state", str(state), "-f", "json"])
    assert first.exit_code == 0, first.stderr
    digests = {s.path: s.digest for s in load_counts(state).shards}
    assert all(d.startswith("xxh3-128/4MiB:") and len(d) == 14 + 32 for d in digests.values())
    os.utime(data / "1.safetensors", ns=(10**18, 10**18))
    shutil.copy(data / "2.safetensors", tmp_path / "copy")
    shutil.copy(tmp_path / "copy", data / "2.safetensors")  # cp without -p: a new time, the same bytes
    again = runner.invoke(app, ["scan", str(data), "--state", str(state), "-f", "json"])
    assert again.exit_code == 0 and again.stderr == "", again.stderr
    assert json.loads(again.stdout)["rows"] == json.loads(first.stdout)["rows"]
    records = {s.path: s for s in load_counts(state).shards}
    assert records[str((data / "1.safetensors").resolve())].mtime_ns == 10**18  # refreshed, not counted again
    assert {p: r.digest for p, r in records.items()} == digests
    (data / "0.safetensors").unlink()
    gone = runner.invoke(app, ["scan", str(data), "--state", str(state), "-f", "json"])
    assert gone.exit_code == 0 and gone.stderr == (
        f"Warning: 1 shard(s) counted before are gone ({(data / '0.safetensors').resolve()}): their counts stay "
        f"in {state.resolve()}\n"
    )
    assert json.loads(gone.stdout)["rows"] == json.loads(first.stdout)["rows"]
    failed = runner.invoke(app, ["scan", str(data), "--state", str(state), "--fail-on-missing", "-q"])
    assert failed.exit_code == 1 and failed.stderr == f"Counted shard gone: {(data / '0.safetensors').resolve()}\n"
    refused = runner.invoke(app, ["scan", str(data), "--fail-on-missing"])
    assert refused.exit_code == 2 and refused.stderr == "Error: --fail-on-missing goes with --state\n"


@pytest.mark.parametrize("chunk_rows", [None, 977, 100_000])
def test_digests_hashed_while_counting_are_those_of_the_whole_file(tmp_path: Path, chunk_rows: int | None) -> None:
    """Blocks hashed as windows are counted (their edges anywhere, a header and a tensor not
    counted left to read afterwards) give the digest of the file read whole, XXH3-128 of the
    XXH3-128 of its 4 MiB blocks; one byte changed anywhere changes it."""
    import xxhash

    from neuron_activity.digests import BLOCK, Blocks, digest
    from neuron_activity.options import CountOptions
    from neuron_activity.scan import count, plan_for
    from neuron_activity.sources import discover

    rng = np.random.default_rng(13)
    path = tmp_path / "big.safetensors"
    values = torch.from_numpy(rng.standard_normal((9000, 1200)).astype(np.float32))  # 43.2 MB: ten blocks and a bit
    write_shard(path, {"a": values, "ids": torch.zeros(1000, dtype=torch.int64)})
    blocks = Blocks()
    options = CountOptions(device="cpu", chunk_rows=chunk_rows)
    count(plan_for(discover([path]), options), options, "cpu", blocks=blocks)
    data = path.read_bytes()
    whole = xxhash.xxh3_128(
        b"".join(xxhash.xxh3_128(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK))
    ).hexdigest()
    assert blocks.hashed(path) >= (1 if chunk_rows == 977 else 8)  # the blocks no window edge cut
    assert blocks.digest(path) == digest(path) == f"xxh3-128/4MiB:{whole}"
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1
    path.write_bytes(bytes(changed))
    assert digest(path) != f"xxh3-128/4MiB:{whole}"


def test_a_folder_moved_under_an_audit_is_not_counted_twice(tmp_path: Path) -> None:
    """Shards counted before, found under new paths with the same bytes (a folder renamed or
    moved): recognised by their digests, their records moved, nothing counted again."""
    data, state = tmp_path / "data", tmp_path / "state.safetensors"
    rng = np.random.default_rng(14)
    for i in range(3):
        write_shard(data / f"{i}.safetensors", {"acts": random_activations(rng, (50, 4), "F32")})
    first = runner.invoke(app, ["scan", str(data), "--state", str(state), "-f", "json"])
    assert first.exit_code == 0, first.stderr
    data.rename(tmp_path / "moved")
    write_shard(tmp_path / "moved" / "3.safetensors", {"acts": random_activations(rng, (50, 4), "F32")})
    again = runner.invoke(app, ["scan", str(tmp_path / "moved"), "--state", str(state), "-f", "json"])
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["rows"][0]["num_vectors"] == 200  # three moved, one new: 4 x 50
    assert again.stderr.splitlines() == [
        f"Warning: {(data / f'{i}.safetensors')} moved to {(tmp_path / 'moved' / f'{i}.safetensors').resolve()} "
        "(the same bytes): counted before, not counted again"
        for i in range(3)
    ]
    assert sorted(s.path for s in load_counts(state).shards) == sorted(
        str((tmp_path / "moved" / f"{i}.safetensors").resolve()) for i in range(4)
    )
    third = runner.invoke(app, ["scan", str(tmp_path / "moved"), "--state", str(state), "-f", "json"])
    assert third.exit_code == 0 and third.stderr == "" and json.loads(third.stdout)["rows"][0]["num_vectors"] == 200


def test_diff_compares_at_one_threshold_and_says_which(tmp_path: Path) -> None:
    nact("scan", SAMPLE_DATA, "--save-counts", tmp_path / "a.safetensors", "-q")
    twice = nact("diff", tmp_path / "a.safetensors", tmp_path / "a.safetensors", "-t", "1e-4", "-t", "1e-2")
    assert twice.exit_code == 2 and "1e-4, 1e-2: diff compares at one threshold" in twice.stderr
    shown = nact("diff", tmp_path / "a.safetensors", tmp_path / "a.safetensors", "-t", "1e-5", "--neurons")
    assert shown.exit_code == 0 and shown.stdout.startswith("Dead neurons at threshold 1e-5, old -> new")
    assert "blocks.0.hook_sae_acts stayed dead: 0 1 2" in shown.stdout  # as sample_data/ makes them
