"""The nact command through Typer's CliRunner: exact outputs, exit codes and error messages."""

from __future__ import annotations

import csv
import inspect
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import pytest
import torch
import typer
from conftest import SAMPLE_DATA, SAMPLE_ROWS
from reference import write_shard
from typer.testing import CliRunner

from nact_cli.main import app
from nact_cli.options import sharing

runner = CliRunner()

ROW_KEYS = ["component", "threshold", "dead", "alive", "num_features", "num_vectors", "dead_fraction"]


def nact(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_json_rows_on_sample_data() -> None:
    result = nact("scan", SAMPLE_DATA, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1
    assert [list(r) for r in doc["rows"]] == [ROW_KEYS] * 6
    assert [(r["component"], r["threshold"], r["dead"]) for r in doc["rows"]] == SAMPLE_ROWS
    first = doc["rows"][0]
    assert (first["alive"], first["num_features"], first["num_vectors"], first["dead_fraction"]) == (6, 8, 100000, 0.25)
    assert result.stderr == ""


def test_csv_has_exactly_the_row_columns() -> None:
    result = nact("scan", SAMPLE_DATA, "-f", "csv", "-t", "1e-5")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        ",".join(ROW_KEYS),
        "blocks.0.hook_sae_acts,1e-05,3,5,8,100000,0.375",
        "blocks.1.hook_sae_acts,1e-05,2,4,6,100000,0.3333333333333333",
    ]


def test_markdown() -> None:
    result = nact("scan", SAMPLE_DATA, "-f", "markdown", "-t", "0")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "Dead neurons (fire = activation > 0; thresholds in the order given: 0)",
        "",
        "| component | threshold | dead | alive | num_features | num_vectors | dead_fraction |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| blocks.0.hook_sae_acts | 0 | 2 | 6 | 8 | 100000 | 25.00% |",
        "| blocks.1.hook_sae_acts | 0 | 1 | 5 | 6 | 100000 | 16.67% |",
        "",
        "Feature density (dense: > 0.01; ultralow: alive and < 0.0001)",
        "",
        "| component | never_fired | dense | log10_density q05 q50 q95 | ultralow | ultralow/alive |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        # layer 0: neurons 0, 1 never fire; 2 and 3 fire once and twice (1e-5, 2e-5: ultralow);
        # 4-7 fire on about 5% (dense). q05 of log10 [1e-5, 2e-5, 4 x ~0.025] is -5 + 0.25 log10(2).
        "| blocks.0.hook_sae_acts | 2 | 4 | -4.92 -1.60 -1.59 | 2 | 33.3% |",
        "| blocks.1.hook_sae_acts | 1 | 4 | -4.26 -1.31 -1.29 | 1 | 20.0% |",
        "",
        f"blocks.0.hook_sae_acts, blocks.1.hook_sae_acts: read from 4 files, {SAMPLE_DATA}/shard_000.safetensors"
        f" ... {SAMPLE_DATA}/shard_003.safetensors",
    ]


def test_table_is_the_default_and_plain_without_color() -> None:
    result = nact("scan", SAMPLE_DATA, "-t", "1e-5", "-t", "0")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].strip() == "Dead neurons (fire = activation > 0; thresholds in the order given: 1e-5, 0)"
    dead_table = lines[: lines.index(next(line for line in lines if line.startswith("Feature density")))]
    body = [line for line in dead_table if "hook_sae_acts" in line]
    assert [[cell.strip() for cell in line.split("│")[1:8]] for line in body] == [
        ["blocks.0.hook_sae_acts", "1e-5", "3", "5", "8", "100000", "37.50%"],
        ["blocks.0.hook_sae_acts", "0", "2", "6", "8", "100000", "25.00%"],
        ["blocks.1.hook_sae_acts", "1e-5", "2", "4", "6", "100000", "33.33%"],
        ["blocks.1.hook_sae_acts", "0", "1", "5", "6", "100000", "16.67%"],
    ]
    assert "\x1b[" not in result.stdout


def test_output_file_is_written_and_stdout_is_empty(tmp_path: Path) -> None:
    out = tmp_path / "dead.csv"
    result = nact("scan", SAMPLE_DATA, "--format", "csv", "-o", out)
    assert result.exit_code == 0
    assert result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["component"], float(r["threshold"]), int(r["dead"])) for r in rows] == SAMPLE_ROWS
    assert [p.name for p in tmp_path.iterdir()] == ["dead.csv"]  # no temporary file left


def test_output_to_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    result = nact("scan", SAMPLE_DATA, "-o", tmp_path / "no" / "such" / "out.json")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {tmp_path / 'no' / 'such' / 'out.json'}: cannot write:")


def test_fail_above_breached_exits_1_and_names_the_rows() -> None:
    result = nact("scan", SAMPLE_DATA, "--fail-above", "0.3", "-q")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Dead neurons above limit: blocks.0.hook_sae_acts at threshold 1e-5: 3/8 dead (37.50% > 30.00%)",
        "Dead neurons above limit: blocks.1.hook_sae_acts at threshold 1e-5: 2/6 dead (33.33% > 30.00%)",
    ]


def test_fail_above_not_breached_is_silent_with_quiet() -> None:
    result = nact("scan", SAMPLE_DATA, "--fail-above", "0.375", "-q")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_fail_above_only_counts_the_thresholds_shown() -> None:
    result = nact("scan", SAMPLE_DATA, "--fail-above", "0.3", "-t", "0", "-f", "json")
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)["rows"]) == 2


def test_fail_above_without_quiet_prints_the_result_too() -> None:
    result = nact("scan", SAMPLE_DATA, "--fail-above", "0", "-f", "csv", "-t", "0")
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 3
    assert len(result.stderr.splitlines()) == 2


def test_key_restricts_components() -> None:
    result = nact("scan", SAMPLE_DATA, "-k", "blocks.1.hook_sae_acts", "-f", "json")
    assert result.exit_code == 0
    assert {r["component"] for r in json.loads(result.stdout)["rows"]} == {"blocks.1.hook_sae_acts"}


def test_fire_above_changes_what_fires() -> None:
    result = nact("scan", SAMPLE_DATA, "--fire-above", "1e-7", "-t", "0", "-f", "json", "-k", "blocks.1.hook_sae_acts")
    doc = json.loads(result.stdout)
    assert doc["fire_above"] == 1e-7
    assert doc["rows"][0]["dead"] == 2  # the neuron that fired once, on 6e-8, no longer fires


def test_nan_warning_goes_to_stderr(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"acts": torch.tensor([[float("nan"), 1.0]])})
    result = nact("scan", tmp_path, "-f", "json")
    assert result.exit_code == 0
    assert result.stderr == "Warning: component 'acts': 1 NaN value(s) in 1 neuron(s) (0), counted as not firing\n"
    assert json.loads(result.stdout)["components"][0]["nan_count"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "2"], "Error: --threshold '2' is not a portion of vectors between 0 and 1"),
        (["-t", "abc"], "Error: --threshold 'abc' is not a number"),
        (["--fail-above", "1.5"], "Error: --fail-above '1.5' is not a portion between 0 and 1"),
        (["--fire-above", "nan"], "Error: --fire-above 'nan' is not a number"),
        (["--device", "tpu"], "Error: --device 'tpu' is not a device: use auto, cpu, cuda, cuda:N or mps"),
        (["--chunk-rows", "0"], "Error: --chunk-rows 0 must be at least 1"),
        (["--threads", "0"], "Error: --threads 0 must be at least 1"),
        (["--threads", "1000000000000"], "Error: --threads 1000000000000 must be at most 256"),
        (["--fire-above", "-inf"], "Error: --fire-above '-inf' must be finite"),
        (
            ["--fire-above", "1e99999999"],
            "Error: --fire-above '1e99999999' is out of range (at most 400 digits and exponents within +-400)",
        ),
        (
            ["-t", "1e-99999999"],
            "Error: --threshold '1e-99999999' is out of range (at most 400 digits and exponents within +-400)",
        ),
        (["--top", "0"], "Error: --top 0 must be at least 1"),
        (["--window", "0"], "Error: --window 0 must be at least 1"),
        (["--rescan"], "Error: --rescan goes with --state"),
        (["--shard", "3/2"], "Error: --shard '3/2' needs I from 0 to N-1"),
        (
            ["-k", "nope"],
            "Error: --key 'nope' not found in any shard (keys seen: blocks.0.hook_sae_acts, blocks.1.hook_sae_acts)",
        ),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = nact("scan", SAMPLE_DATA, *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == message + "\n"


def test_unknown_format_is_a_usage_error() -> None:
    result = nact("scan", SAMPLE_DATA, "-f", "xml")
    assert result.exit_code == 2
    assert "'xml' is not one of table, json, csv, markdown" in result.stderr


def test_missing_cuda_is_a_clear_usage_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    result = nact("scan", SAMPLE_DATA, "--device", "cuda")
    assert result.exit_code == 2
    assert result.stderr == "Error: device 'cuda' is not available: PyTorch sees no CUDA GPU\n"


def bad_inputs(tmp_path: Path) -> list[tuple[Path, str]]:
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    truncated = tmp_path / "truncated.safetensors"
    write_shard(truncated, {"acts": torch.ones(10, 4)})
    full = truncated.read_bytes()
    truncated.write_bytes(full[:-1])
    ints = tmp_path / "ints.safetensors"
    write_shard(ints, {"tokens": torch.ones(2, 2, dtype=torch.int64)})
    empty_rows = tmp_path / "empty_rows.safetensors"
    write_shard(empty_rows, {"acts": torch.ones(0, 4)})
    return [
        (tmp_path / "missing", f"Error: {tmp_path / 'missing'}: no such file or directory"),
        (empty, f"Error: {empty}: not a safetensors file: 0 bytes, too short for a header"),
        (garbage, f"Error: {garbage}: corrupt safetensors header: Expecting value: line 1 column 1 (char 0)"),
        (
            truncated,
            (
                f"Error: {truncated}: truncated: tensor 'acts' ends at byte {len(full)} "
                f"but the file has {len(full) - 1} bytes"
            ),
        ),
        (
            ints,
            "Error: nothing to count in 1 shard(s): skipped tensor 'tokens' (I64) in 1 shard(s): "
            "integer and bool tensors are counted only when --key names them",
        ),
        (empty_rows, "Error: no vectors were counted (components: 'acts'): every tensor read is empty"),
    ]


def test_each_bad_input_exits_2_with_a_one_line_message(tmp_path: Path) -> None:
    for path, message in bad_inputs(tmp_path):
        result = nact("scan", path)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", message + "\n"), path


def test_shape_mismatch_message(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", {"acts": torch.zeros(2, 8)})
    write_shard(tmp_path / "b.safetensors", {"acts": torch.zeros(2, 4, 8)})
    result = nact("scan", tmp_path)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: tensor 'acts' has shape [2, 8] in {tmp_path / 'a.safetensors'} but [2, 4, 8] in "
        f"{tmp_path / 'b.safetensors'}: every shard must give a component the same number of features "
        "(and components)\n"
    )


def test_every_command_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help and "Examples" in command.help, name
        result = nact(name, "--help")
        assert result.exit_code == 0 and "Usage: nact " + name in result.stdout


def test_top_level_help_and_version() -> None:
    result = nact("--help")
    assert result.exit_code == 0 and "scan" in result.stdout and "Exit codes" in result.stdout
    result = nact("--version")
    assert result.exit_code == 0 and result.stdout.startswith("nact ")


def test_a_library_error_outside_a_commands_run_exits_2_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised by an option's callback (here --version's), before any command runs."""
    from neuron_activity import DeviceUnavailable, devices

    def unavailable() -> str:
        raise DeviceUnavailable("device 'cuda' is not available:\n  the driver is gone")

    monkeypatch.setattr(devices, "describe_devices", unavailable)
    result = nact("--version")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == "Error: device 'cuda' is not available: the driver is gone\n"


def test_the_collector_is_frozen_only_by_the_first_command_of_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Freezing again in a long-lived process (this one) would keep what it holds for good."""
    import gc
    import subprocess
    import sys

    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    assert nact("scan", SAMPLE_DATA, "-f", "json").exit_code == 0
    assert frozen == [] and gc.isenabled()
    first = "import gc, sys; from nact_cli.main import app; app(sys.argv[1:], standalone_mode=False); print(gc.get_freeze_count() > 0, gc.isenabled())"
    done = subprocess.run(
        [sys.executable, "-c", first, "scan", str(SAMPLE_DATA), "-f", "csv", "-o", "/dev/null"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "True True\n"


@dataclass(frozen=True)
class Shared:
    """Options that commands share, one with a default made by a factory."""

    names: Annotated[list[str], typer.Option("--name")] = field(default_factory=list)
    loud: Annotated[bool, typer.Option("--loud")] = False


def takes_shared(paths: list[str], shared: Shared, last: int = 0) -> tuple[list[str], Shared, int]:
    return paths, shared, last


def names_twice(names: list[str], shared: Shared) -> None: ...


def test_shared_options_stand_where_their_group_did_and_a_name_taken_twice_is_refused() -> None:
    command = sharing(Shared)(takes_shared)
    assert list(inspect.signature(command).parameters) == ["paths", "names", "loud", "last"]
    assert inspect.signature(command).parameters["names"].default == []  # the factory's value
    assert command(["a"], names=["x"], loud=True, last=2) == (["a"], Shared(["x"], True), 2)
    with pytest.raises(AssertionError, match="names_twice: parameter.s. names are options of Shared already"):
        sharing(Shared)(names_twice)


def test_thresholds_repeated_or_as_percentages() -> None:
    doc = json.loads(nact("scan", SAMPLE_DATA, "-f", "json", "-t", "1e-5", "-t", "0.00001", "-t", "0.001%").stdout)
    assert doc["thresholds"] == [1e-05]  # one threshold, typed three ways
    assert [r["dead"] for r in doc["rows"]] == [3, 2]


def test_top_and_neurons_in_csv_and_markdown() -> None:
    rows = nact("scan", SAMPLE_DATA, "-f", "csv", "-t", "0", "--top", "1").stdout.splitlines()
    assert rows[0].endswith(",most_active,least_active")
    assert rows[1].endswith(",4:2563,0:0")
    md = nact("scan", SAMPLE_DATA, "-f", "markdown", "-t", "0", "--top", "1", "--neurons").stdout
    assert "blocks.0.hook_sae_acts dead at 0: 0 1" in md
    assert "blocks.1.hook_sae_acts least active (neuron:fires): 5:0" in md


def test_completion_is_offered() -> None:
    assert "--install-completion" in nact("--help").stdout


def test_messages_say_what_was_found_and_what_changed(tmp_path: Path) -> None:
    write_shard(tmp_path / "data" / "a.safetensors", {"acts": torch.ones(3, 2)})
    result = nact("scan", tmp_path / "data", "--input-format", "npy")
    assert result.stderr == f"Error: {tmp_path / 'data'}: no npy shards found (it holds safetensors files)\n"
    state = tmp_path / "s.safetensors"
    assert nact("scan", tmp_path / "data", "--state", state, "-q").exit_code == 0
    write_shard(tmp_path / "data" / "a.safetensors", {"acts": torch.zeros(3, 2)})  # the same size, other bytes
    import os

    os.utime(tmp_path / "data" / "a.safetensors", ns=(1, 1))
    result = nact("scan", tmp_path / "data", "--state", state)
    assert result.stderr.startswith(
        f"Error: {tmp_path / 'data' / 'a.safetensors'}: changed since {state} counted it (same size, modified "
    )
    assert result.stderr.endswith("-> 1970-01-01 00:00:00 UTC, other bytes): use --rescan to count every shard again\n")
