"""The installed ``nact`` command, run as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA, SAMPLE_ROWS


def nact_executable() -> str:
    beside_python = Path(sys.executable).parent / "nact"
    found = str(beside_python) if beside_python.exists() else shutil.which("nact")
    if found is None:
        pytest.fail("the nact command is not installed: pip install -e '.[test]'")
    return found


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([nact_executable(), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_scan_sample_data_json() -> None:
    done = run("scan", str(SAMPLE_DATA), "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [(r["component"], r["threshold"], r["dead"]) for r in rows] == SAMPLE_ROWS
    assert done.stderr == ""  # no progress bar off a terminal


def test_readme_table_is_what_scan_prints() -> None:
    root = SAMPLE_DATA.parent
    done = run("scan", "sample_data", cwd=root)
    assert done.returncode == 0
    readme = [line.rstrip() for line in (root / "README.md").read_text().splitlines()]
    table = [line.rstrip() for line in done.stdout.strip().splitlines()]
    assert any(readme[i : i + len(table)] == table for i in range(len(readme))), "\n".join(table)


def test_cron_exit_codes() -> None:
    assert run("scan", str(SAMPLE_DATA), "--fail-above", "0.5", "-q").returncode == 0
    breached = run("scan", str(SAMPLE_DATA), "--fail-above", "0.05", "-q")
    assert (breached.returncode, breached.stdout) == (1, "")
    bad = run("scan", str(SAMPLE_DATA / "nope.safetensors"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_help_does_not_import_torch_or_numpy() -> None:
    code = "import sys; from nact_cli.main import app; print('torch' in sys.modules, 'numpy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_a_machine_readable_scan_loads_only_what_it_uses() -> None:
    """A CPU scan of safetensors to CSV runs one command: no torch, no rich (tables and progress
    only), no pyarrow, no zip reader, no training metric, no audit code, and no other command's
    module."""
    unused = [
        "torch",
        "rich",
        "pyarrow",
        "zipfile",
        "fsspec",
        "s3fs",
        "neuron_activity.sae",
        "neuron_activity.metric",
        "neuron_activity.audit",
        "nact_cli.counts",
        "nact_cli.density",
        "nact_cli.inspect",
    ]
    code = (
        "import sys; from typer.testing import CliRunner; from nact_cli.main import app; "
        f"r = CliRunner().invoke(app, ['scan', {str(SAMPLE_DATA)!r}, '-f', 'csv']); "
        f"print(r.exit_code, *[m for m in {unused!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0"]


def test_help_imports_neither_numpy_nor_the_library() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from nact_cli.main import app; "
        "r = CliRunner().invoke(app, ['--help']); "
        "print(r.exit_code, *[m for m in ('numpy', 'neuron_activity') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0"]


def test_a_url_without_the_remote_extra_is_one_line() -> None:
    from conftest import invoke_without

    code, stderr = invoke_without("fsspec", ["scan", "s3://bucket/acts/"])
    assert code == 2 and stderr == (
        "Error: s3://bucket/acts: reading remote caches needs fsspec: pip install 'nact[remote]'\n"
    )


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_memory_does_not_grow_with_shard_size(tmp_path: Path) -> None:
    """A 640 MiB shard scans in far less resident memory than its size."""
    rows, features = 80 * 1024, 4096  # bf16: 640 MiB
    path = tmp_path / "big.safetensors"
    header = json.dumps(
        {"acts": {"dtype": "BF16", "shape": [rows, features], "data_offsets": [0, rows * features * 2]}}
    )
    header_bytes = header.encode() + b" " * (-len(header) % 8)
    block = bytes.fromhex("803f") * (features * 1024)  # 1024 rows of bf16 1.0
    with open(path, "wb") as f:
        f.write(len(header_bytes).to_bytes(8, "little") + header_bytes)
        for _ in range(rows // 1024):
            f.write(block)
    # Resident pages, mapped file pages included, sampled by a thread while the scan runs:
    # ru_maxrss would miss pages mapped and then unmapped, and so a reader mapping whole shards.
    code = (
        "import os, threading, time; from neuron_activity import scan\n"
        "peak, done = [0], threading.Event()\n"
        "def sample():\n"
        "    while not done.is_set():\n"
        "        rss = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGESIZE')\n"
        "        peak[0] = max(peak[0], rss)\n"
        "        time.sleep(0.001)\n"
        "sampler = threading.Thread(target=sample); sampler.start()\n"
        f"c = scan([{str(path)!r}]).activity.components['acts']\n"
        "done.set(); sampler.join()\n"
        "print(int(c.fire_counts.min()), peak[0])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    fired, peak = map(int, done.stdout.split())
    assert fired == rows
    assert peak < 250 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB for a 640 MiB shard"


def read_terminal(master: int) -> bytes:
    """Everything written to a pseudo-terminal whose other end is closed; closes ``master``."""
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return out


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bar_only_on_a_terminal() -> None:
    """With stderr on a terminal a progress bar of bytes and shards is drawn there; stdout stays clean."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    done = subprocess.run(
        [nact_executable(), "scan", str(SAMPLE_DATA), "-f", "json", "--chunk-rows", "100"],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        timeout=120,
    )
    os.close(slave)
    drawn = read_terminal(master)
    assert done.returncode == 0
    assert json.loads(done.stdout)["rows"]  # stdout is only the result
    assert b"scanning" in drawn and b"4/4 shards" in drawn


def cron_line(readme: str, nact_path: str, data: Path, state_dir: Path) -> str:
    """The README's crontab command, with this machine's paths in it."""
    line = next(line for line in readme.splitlines() if line.startswith("0 * * * *"))
    command = line.split(None, 5)[5]
    return (
        command.replace("/opt/nact/bin/nact", nact_path)
        .replace("/var/lib/nact", str(state_dir))
        .replace("/data/acts", str(data))
    )


def test_the_readme_cron_line_works_verbatim_under_cron(tmp_path: Path) -> None:
    """Run through sh -c with cron's minimal environment: exit 0 and silent when fine, 1 when
    too many neurons are dead, and the state folder is made."""
    import shutil as sh

    readme = (SAMPLE_DATA.parent / "README.md").read_text()
    data = tmp_path / "acts"
    sh.copytree(SAMPLE_DATA, data, ignore=sh.ignore_patterns("*.py"))
    state_dir = tmp_path / "var" / "lib" / "nact"
    command = cron_line(readme, nact_executable(), data, state_dir)
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "LOGNAME": "root"}
    fine = subprocess.run(
        ["sh", "-c", command.replace("0.05", "0.5")], capture_output=True, text=True, env=cron_env, cwd=tmp_path
    )
    assert (fine.returncode, fine.stdout, fine.stderr) == (0, "", "")
    assert (state_dir / "audit.safetensors").is_file()
    breached = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=cron_env, cwd=tmp_path)
    assert breached.returncode == 1 and breached.stdout == ""
    assert breached.stderr.splitlines()[0].startswith("Dead neurons above limit: blocks.0.hook_sae_acts")


def test_no_color_empty_keeps_colour_and_set_turns_it_off() -> None:
    """no-color.org: only a non-empty NO_COLOR turns colour off (a terminal is needed to see it)."""
    import pty

    def scan_on_a_terminal(no_color: str | None) -> bytes:
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        if no_color is not None:
            env["NO_COLOR"] = no_color
        env["COLUMNS"] = "200"
        subprocess.run(
            [nact_executable(), "scan", str(SAMPLE_DATA), "-t", "0"],
            stdout=slave,
            stderr=subprocess.DEVNULL,
            env=env,
            timeout=120,
        )
        os.close(slave)
        return read_terminal(master)

    assert b"\x1b[" in scan_on_a_terminal("")
    assert b"\x1b[" not in scan_on_a_terminal("1")


def test_wide_names_are_never_cut_in_a_pipe(tmp_path: Path) -> None:
    import torch
    from reference import write_shard

    name = "blocks.8.hook_sae_acts_post_with_a_very_long_name_that_would_fold_at_one_hundred_columns"
    write_shard(tmp_path / "a.safetensors", {name: torch.ones(3, 2)})
    done = run("scan", str(tmp_path), "-t", "0")
    assert done.returncode == 0
    row = next(line for line in done.stdout.splitlines() if name in line)
    assert "num_features" in done.stdout and "num_featur…" not in done.stdout
    assert row.count("│") == 8


def test_output_format_from_the_extension(tmp_path: Path) -> None:
    for suffix, check in (
        (".csv", lambda t: t.startswith("component,threshold")),
        (".json", lambda t: json.loads(t)["rows"]),
        (".md", lambda t: "| component |" in t),
        (".txt", lambda t: "┃ component" in t),
    ):
        out = tmp_path / f"dead{suffix}"
        assert run("scan", str(SAMPLE_DATA), "-o", str(out)).returncode == 0
        assert check(out.read_text()), suffix
    refused = run("scan", str(SAMPLE_DATA), "-o", str(tmp_path / "x.csv"), "-f", "json")
    assert refused.returncode == 2 and "its extension .csv says csv, --format says json" in refused.stderr
    assert not (tmp_path / "x.csv").exists()


def test_usage_line_and_examples() -> None:
    done = run("scan", "--help")
    assert "Usage: nact scan [OPTIONS] PATH..." in done.stdout
    done = run("density", "--help")
    assert "pip install 'nact[plot]'" in done.stdout
