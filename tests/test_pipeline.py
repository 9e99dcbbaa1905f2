"""One pipeline: every option and output checked before any work, modes that compose, parts that
merge in stream order, one declaration of the per-neuron state, a kernel that says what it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA
from reference import fire_counts, write_shard
from test_audit import last_fired_reference, make_shards, torchrun
from typer.testing import CliRunner

from nact_cli.main import app
from neuron_activity import state
from neuron_activity.counts_file import SCHEMA_VERSION, SavedCounts, load_counts, save_counts

runner = CliRunner()


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- nothing is read or written before every option is checked ------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top", "0"], "Error: --top 0 must be at least 1"),
        (["--window", "-3"], "Error: --window -3 must be at least 1"),
        (["--dense-above", "5"], "Error: --dense-above '5' is not a density between 0 and 1"),
        (["--ultralow-below", "0"], "Error: --ultralow-below '0' is not a density between 0 and 1"),
        (
            ["-o", "{tmp}/no/such/out.csv"],
            "Error: {tmp}/no/such/out.csv: cannot write: folder {tmp}/no/such does not exist",
        ),
        (["-o", "{tmp}"], "Error: {tmp}: is a folder, not a file"),
        (
            ["-o", "{tmp}/c.safetensors"],
            "Error: --output and --save-counts cannot be used together: they name the same file",
        ),
        (
            ["--save-sparsity", "{tmp}/c.safetensors"],
            "Error: --save-counts and --save-sparsity cannot be used together: they name the same file",
        ),
    ],
)
def test_exit_2_writes_no_counts(tmp_path: Path, args: list[str], message: str) -> None:
    counts = tmp_path / "c.safetensors"
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = nact("scan", SAMPLE_DATA, "--save-counts", counts, *filled)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == message.replace("{tmp}", str(tmp_path)) + "\n"
    assert not counts.exists()


def test_a_refused_audit_leaves_the_state_as_it_was(tmp_path: Path) -> None:
    data, state_file = tmp_path / "data", tmp_path / "audit.safetensors"
    make_shards(data, [20])
    assert nact("scan", data, "--state", state_file, "-q").exit_code == 0
    make_shards(tmp_path / "more", [15], seed=4)
    (tmp_path / "more" / "shard_000.safetensors").rename(data / "shard_001.safetensors")
    before = state_file.read_bytes()
    for args in (["--top", "0"], ["-o", tmp_path / "missing" / "x.json"], ["--dense-above", "2"]):
        result = nact("scan", data, "--state", state_file, *args)
        assert result.exit_code == 2, result.stderr
        assert state_file.read_bytes() == before
    assert len(load_counts(state_file).shards) == 1  # the new shard is still new


def test_outputs_never_overwrite_an_input_shard(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_shards(data, [10, 10])
    shard = data / "shard_001.safetensors"
    before = snapshot(data)
    for option in (("-o", shard, "-f", "json"), ("--save-counts", shard)):
        result = nact("scan", data, *option)
        assert (result.exit_code, result.stderr) == (
            2,
            f"Error: {shard}: is one of the inputs: nact never writes over its input\n",
        )
    link = tmp_path / "link.safetensors"
    link.symlink_to(shard)
    result = nact("scan", data, "-o", link, "-f", "json")
    assert result.exit_code == 2 and "is one of the inputs" in result.stderr
    assert snapshot(data) == before


def test_merge_and_report_refuse_to_overwrite_their_input(tmp_path: Path) -> None:
    nact("scan", SAMPLE_DATA, "--save-counts", tmp_path / "a.safetensors", "-q")
    before = (tmp_path / "a.safetensors").read_bytes()
    result = nact("merge", tmp_path / "a.safetensors", "-o", tmp_path / "a.safetensors")
    assert result.exit_code == 2 and "is one of the inputs" in result.stderr
    result = nact("report", tmp_path / "a.safetensors", "-o", tmp_path / "a.safetensors", "-f", "json")
    assert result.exit_code == 2 and "is one of the inputs" in result.stderr
    assert (tmp_path / "a.safetensors").read_bytes() == before


def test_density_checks_its_options_first(tmp_path: Path) -> None:
    for args, message in (
        (["--dense-above", "5"], "Error: --dense-above '5' is not a density between 0 and 1"),
        (["--bins-per-decade", "0"], "Error: --bins-per-decade 0 must be at least 1"),
        (["--bins-per-decade", "100000000"], "Error: --bins-per-decade 100000000 must be at most 100"),
        (
            ["--plot", tmp_path / "no" / "d.png"],
            f"Error: {tmp_path / 'no' / 'd.png'}: cannot write: folder {tmp_path / 'no'} does not exist",
        ),
    ):
        result = nact("density", SAMPLE_DATA, *args)
        assert (result.exit_code, result.stderr) == (2, message + "\n")


def test_usage_errors_are_one_line() -> None:
    for args in (["scan", SAMPLE_DATA, "--format", "yaml"], ["scan", SAMPLE_DATA, "--no-such-option"], ["frobnicate"]):
        result = nact(*args)
        assert result.exit_code == 2
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("Error: "), result.stderr
    assert nact("scan", SAMPLE_DATA, "-f", "yaml").stderr == (
        "Error: Invalid value for '--format': 'yaml' is not one of table, json, csv, markdown (see nact scan --help)\n"
    )


def test_an_internal_error_is_one_line_and_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    import neuron_activity.pipeline

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(neuron_activity.pipeline, "plan_for", broken)
    result = nact("scan", SAMPLE_DATA)
    assert result.exit_code == 3
    assert result.stderr == (
        "Error: internal error (ZeroDivisionError: a bug); please report it (set NACT_DEBUG=1 for the traceback)\n"
    )


# --- parts of a split scan ---------------------------------------------------------------------


def test_more_parts_than_shards(tmp_path: Path) -> None:
    values = make_shards(tmp_path / "data", [30, 20, 25], seed=2)
    parts = []
    for i in range(8):
        out = tmp_path / f"part-{i}.safetensors"
        result = nact("scan", tmp_path / "data", "--shard", f"{i}/8", "--save-counts", out, "-q")
        assert result.exit_code == 0, result.stderr
        parts.append(out)
    empty = load_counts(parts[0])
    assert empty.shards == [] and all(c.num_vectors == 0 for c in empty.activity.components.values())
    assert (empty.part.index, empty.part.of, empty.part.units, empty.part.total_units) == (0, 8, 0, 3)
    assert nact("merge", *parts, "-o", tmp_path / "all.safetensors").exit_code == 0
    merged = load_counts(tmp_path / "all.safetensors").activity
    for c in range(2):
        comp = merged.components[f"acts[{c}]"]
        assert comp.fire_counts.tolist() == fire_counts(values[:, c, :]).tolist()
        assert comp.last_fired.tolist() == last_fired_reference(values[:, c, :])
    # without somewhere to save it, an empty part is refused and writes nothing
    result = nact("scan", tmp_path / "data", "--shard", "0/8", "-o", tmp_path / "out.json")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: --shard part 0/8 holds no shards (3 in all): nothing to count: "
        "pass --save-counts to save an empty part that merges with the others\n"
    )
    assert not (tmp_path / "out.json").exists()


def test_parts_merge_in_stream_order_whatever_order_given(tmp_path: Path) -> None:
    values = make_shards(tmp_path / "data", [5] * 12, seed=6)
    for i in range(11):
        assert (
            nact(
                "scan",
                tmp_path / "data",
                "--shard",
                f"{i}/11",
                "--save-counts",
                tmp_path / f"part-{i}.safetensors",
                "-q",
            ).exit_code
            == 0
        )
    shuffled = [tmp_path / f"part-{i}.safetensors" for i in (7, 2, 10, 5, 0, 1, 3, 4, 6, 8, 9)]
    assert nact("merge", *shuffled, "-o", tmp_path / "all.safetensors").exit_code == 0
    merged = load_counts(tmp_path / "all.safetensors").activity
    for c in range(2):
        assert merged.components[f"acts[{c}]"].last_fired.tolist() == last_fired_reference(values[:, c, :])
    globbed = sorted(tmp_path.glob("part-*.safetensors"))  # part-10 sorts before part-2
    report = nact("report", *globbed, "--window", "7", "-f", "json", "-t", "0")
    whole = nact("scan", tmp_path / "data", "--window", "7", "-f", "json", "-t", "0")
    assert report.exit_code == whole.exit_code == 0
    assert json.loads(report.stdout)["rows"] == json.loads(whole.stdout)["rows"]
    some = nact("report", tmp_path / "part-3.safetensors", tmp_path / "part-1.safetensors", "-f", "json")
    assert (
        some.exit_code == 0
        and some.stderr == "Note: 2 of 11 parts merged; missing part(s) 0, 2, 4, 5, 6, 7, 8, 9, 10\n"
    )
    twice = nact(
        "merge", tmp_path / "part-1.safetensors", tmp_path / "part-1.safetensors", "-o", tmp_path / "x.safetensors"
    )
    assert twice.exit_code == 2 and "part 1/11 is given twice" in twice.stderr


def test_merge_refuses_different_components_unless_union(tmp_path: Path) -> None:
    write_shard(tmp_path / "a" / "s.safetensors", {"layer0": torch.ones(3, 4)})
    write_shard(tmp_path / "b" / "s.safetensors", {"layer1": torch.ones(3, 4)})
    for name in ("a", "b"):
        nact("scan", tmp_path / name, "--save-counts", tmp_path / f"{name}.safetensors", "-q")
    out = tmp_path / "m.safetensors"
    result = nact("merge", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "-o", out)
    assert result.exit_code == 2 and not out.exists()
    assert result.stderr == (
        f"Error: the counts hold different components (only {tmp_path / 'a.safetensors'} has 'layer0'; "
        f"only {tmp_path / 'b.safetensors'} has 'layer1'): pass --union to merge them anyway\n"
    )
    assert nact("merge", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "-o", out, "--union").exit_code == 0
    assert list(load_counts(out).activity.components) == ["layer0", "layer1"]


def test_a_window_over_counts_that_never_tracked_last_fired_names_the_flags(tmp_path: Path) -> None:
    from neuron_activity import count_array

    path = tmp_path / "c.safetensors"
    save_counts(path, SavedCounts(count_array(np.ones((3, 2)), "acts")))  # no last_fired: a metric's counts
    result = nact("report", path, "--window", "2")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: component 'acts' has no record of when neurons last fired: "
        "--window needs counts saved with --save-counts or --state\n"
    )


def test_diff_refuses_counts_of_different_fire_rules(tmp_path: Path) -> None:
    nact("scan", SAMPLE_DATA, "--save-counts", tmp_path / "a.safetensors", "-q")
    nact("scan", SAMPLE_DATA, "--save-counts", tmp_path / "b.safetensors", "-q", "--fire-above", "0.5")
    result = nact("diff", tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "Error: the counts were made with different fire rules (fire above 0 before, 0.5 after): "
        "compare counts made with the same fire rule\n"
    )


# --- torchrun ------------------------------------------------------------------------------------


def test_torchrun_with_a_part_and_its_saved_shards(tmp_path: Path) -> None:
    values = make_shards(tmp_path / "data", [30, 70, 55, 12, 9, 40], seed=12)
    for i in range(2):
        done = torchrun(
            "scan",
            tmp_path / "data",
            "--shard",
            f"{i}/2",
            "--save-counts",
            tmp_path / f"p{i}.safetensors",
            "-q",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        saved = load_counts(tmp_path / f"p{i}.safetensors")
        assert [Path(s.path).name for s in saved.shards] == [
            f"shard_{j:03d}.safetensors" for j in range(3 * i, 3 * i + 3)
        ]
    assert (
        nact(
            "merge", tmp_path / "p1.safetensors", tmp_path / "p0.safetensors", "-o", tmp_path / "all.safetensors"
        ).exit_code
        == 0
    )
    merged = load_counts(tmp_path / "all.safetensors").activity
    for c in range(2):
        assert merged.components[f"acts[{c}]"].fire_counts.tolist() == fire_counts(values[:, c, :]).tolist()
        assert merged.components[f"acts[{c}]"].last_fired.tolist() == last_fired_reference(values[:, c, :])
    # counts of the same shards made another way do not merge in silently
    nact("scan", tmp_path / "data", "--shard", "0/2", "--save-counts", tmp_path / "again.safetensors", "-q")
    result = nact(
        "merge", tmp_path / "p0.safetensors", tmp_path / "again.safetensors", "-o", tmp_path / "x.safetensors"
    )
    assert result.exit_code == 2 and "is given twice" in result.stderr
    done = torchrun("scan", tmp_path / "data", "--state", tmp_path / "s.safetensors", cwd=tmp_path)
    assert done.returncode != 0  # torchrun itself exits 1 when a rank fails; each rank exits 2
    assert "Error: torchrun and --state cannot be used together" in done.stderr
    assert not (tmp_path / "s.safetensors").exists()  # (the traceback in stderr is torchrun's own report)


# --- saved counts of the first release ------------------------------------------------------------


def test_schema_version_1_counts_still_load(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "v1.safetensors"
    tensors = {
        "sae/fire_counts": np.array([3, 0, 1], np.int64),
        "sae/nan_counts": np.zeros(3, np.int64),
        "sae/num_vectors": np.array([4], np.int64),
        "sae/last_fired": np.array([3, -1, 0], np.int64),
    }
    metadata = {
        "format": "nact-counts",
        "schema_version": "1",
        "nact_version": "0.1.0",
        "fire_above": "0",
        "components": '["sae"]',
        "shards": '[{"path": "/x/0.safetensors", "size": 10, "mtime_ns": 5}]',
        "order": "shards in the order counted (natural path order), rows in file order",
    }
    save_file(tensors, str(path), metadata=metadata)
    saved = load_counts(path)
    c = saved.activity.components["sae"]
    assert (c.fire_counts.tolist(), c.num_vectors, c.last_fired.tolist()) == ([3, 0, 1], 4, [3, -1, 0])
    assert saved.part is None and saved.shards[0].path == "/x/0.safetensors"
    result = nact("report", path, "-t", "0", "-f", "csv")
    assert result.stdout.splitlines()[1] == "sae,0.0,1,2,3,4,0.3333333333333333"
    assert SCHEMA_VERSION == 2


@pytest.mark.parametrize(
    ("name", "values", "problem"),
    [
        ("fire_counts", [5, 0, 1], "sae/fire_counts[0] = 5 cannot be with 4 vectors"),
        ("fire_counts", [-1, 0, 1], "sae/fire_counts[0] = -1 cannot be with 4 vectors"),
        ("last_fired", [3, 2, 0], "sae/last_fired[1] = 2 cannot be with 4 vectors"),
        ("nan_counts", [0, 0], "sae/nan_counts has shape [2], not [3]"),
    ],
)
def test_edited_counts_are_refused(tmp_path: Path, name: str, values: list[int], problem: str) -> None:
    from neuron_activity import NeuronActivity

    activity = NeuronActivity()
    activity.add("sae", np.array([3, 0, 1]), 4, np.zeros(3, np.int64), np.array([3, -1, 0]))
    activity.components["sae"].states[name] = np.array(values, np.int64)
    save_counts(tmp_path / "c.safetensors", SavedCounts(activity))
    result = nact("report", tmp_path / "c.safetensors")
    assert (result.exit_code, result.stderr) == (
        2,
        f"Error: {tmp_path / 'c.safetensors'}: corrupt counts file: {problem}\n",
    )


# --- one declaration of the per-neuron state ----------------------------------------------------


def test_a_new_state_field_is_declared_in_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statistic added to state.FIELDS is combined, saved, loaded and merged with no other change."""
    from neuron_activity import NeuronActivity
    from neuron_activity.counts_file import merge_counts

    field = state.Field("max_seen", state.MAX, 0)
    monkeypatch.setattr(state, "FIELDS", (*state.FIELDS, field))
    monkeypatch.setattr(state, "BY_NAME", {f.name: f for f in state.FIELDS})
    parts = []
    for i, (counts, seen) in enumerate((([1, 0], [7, 0]), ([0, 2], [3, 9]))):
        activity = NeuronActivity()
        activity.add_states(
            "c", {"fire_counts": np.array(counts), "nan_counts": np.zeros(2), "max_seen": np.array(seen)}, 2
        )
        save_counts(tmp_path / f"{i}.safetensors", SavedCounts(activity))
        parts.append((tmp_path / f"{i}.safetensors", load_counts(tmp_path / f"{i}.safetensors")))
    merged, _ = merge_counts(parts)
    c = merged.activity.components["c"]
    assert c.states["max_seen"].tolist() == [7, 9] and c.fire_counts.tolist() == [1, 2]


def test_combining_states_is_associative_in_stream_order() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((90, 5)) < 0.1).astype(np.float32)
    from neuron_activity import count_array

    whole = count_array(x, track_last=True).components["activations"]
    pieces = [count_array(x[a:b], track_last=True).components["activations"] for a, b in ((0, 20), (20, 21), (21, 90))]
    states, n = state.empty(5, state.TRACK_LAST), 0
    for p in pieces:
        states = state.combined(states, n, p.states, p.num_vectors)
        n += p.num_vectors
    assert {k: v.tolist() for k, v in states.items()} == {k: v.tolist() for k, v in whole.states.items()}


# --- a kernel you can trust ---------------------------------------------------------------------


def test_the_c_kernel_is_built_from_this_source() -> None:
    """The build is current: the extension carries the SHA-256 of the source it was built from
    (checked here and where it is built, not at every run)."""
    import hashlib

    from neuron_activity import native

    assert native.kernels is not None, f"the C kernel is {native.NATIVE_PROBLEM}"
    source = Path(native.__file__).with_name("_kernels.c").read_bytes()
    assert native.kernels.SOURCE_SHA256 == hashlib.sha256(source).hexdigest(), "rebuild it: pip install ."


def test_json_and_version_name_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = json.loads(nact("scan", SAMPLE_DATA, "-f", "json").stdout)
    assert (doc["device"], doc["kernel"]) == ("cpu", "native")
    monkeypatch.setenv("NACT_KERNEL", "numpy")
    doc = json.loads(nact("scan", SAMPLE_DATA, "-f", "json").stdout)
    assert doc["kernel"] == "numpy"
    monkeypatch.setenv("NACT_KERNEL", "fortran")
    assert (
        nact("scan", SAMPLE_DATA).stderr == "Error: NACT_KERNEL 'fortran' is not a kernel: use native, numpy, torch\n"
    )
    monkeypatch.delenv("NACT_KERNEL")
    version = nact("--version").stdout.splitlines()
    assert version[0].startswith("nact 0.2.0") and version[1].startswith("cpu kernel: native (C extension")


def test_a_c_kernel_that_is_not_built_is_named_as_it_was_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused when the options are made (before any read), by the name it was asked for by."""
    from neuron_activity import BadOption, CountOptions, native

    problem = "not built (no C compiler when nact was installed)"
    monkeypatch.setattr(native, "kernels", None)
    monkeypatch.setattr(native, "NATIVE_PROBLEM", problem)
    monkeypatch.setenv("NACT_KERNEL", "native")
    done = nact("scan", SAMPLE_DATA)
    assert done.exit_code == 2
    assert done.stderr == f"Error: NACT_KERNEL 'native' is not available: the C kernel is {problem}\n"
    monkeypatch.delenv("NACT_KERNEL")
    with pytest.raises(BadOption) as caught:
        CountOptions(kernel="native")
    assert str(caught.value) == f"kernel 'native' is not available: the C kernel is {problem}"
    assert CountOptions(kernel="numpy").kernel == "numpy"


def test_the_version_has_one_source() -> None:
    from importlib.metadata import version

    import neuron_activity

    assert version("nact") == neuron_activity.__version__


def test_the_library_does_not_import_the_cli_or_its_package_root_from_below() -> None:
    root = Path(__file__).resolve().parent.parent / "neuron_activity"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "nact_cli" not in text and "typer" not in text and "rich" not in text.replace("enrich", ""), path
        assert "from . import __version__" not in text and "from .. import __version__" not in text, path


def test_library_messages_name_no_flags() -> None:
    import re

    root = Path(__file__).resolve().parent.parent / "neuron_activity"
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            if "raise " in line or "Error(" in line:
                assert not re.search(r"--[a-z]", line), f"{path}: {line.strip()}"


def test_shapes_of_state_files_are_int64_per_field(tmp_path: Path) -> None:
    nact("scan", SAMPLE_DATA, "--save-counts", tmp_path / "c.safetensors", "-q")
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "c.safetensors"))
    names = {k.split("/")[1] for k in tensors}
    kept = {f.name for f in state.FIELDS if f.dtype == "int64" and f.name not in state.MOMENTS}  # MOMENTS: --stats
    assert names == kept | {"num_vectors"}  # the others: SAE latents
    assert all(v.dtype == np.int64 for v in tensors.values())


def test_an_output_url_is_refused_before_any_work(tmp_path: Path) -> None:
    done = nact("scan", SAMPLE_DATA, "-o", "s3://bucket/out.json")
    assert (
        done.exit_code == 2
        and done.stderr == "Error: s3://bucket/out.json: outputs are local files: nact does not write to a URL\n"
    )
