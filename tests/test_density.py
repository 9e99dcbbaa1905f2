"""Feature density: summaries, histograms, --neurons and --top, the terminal and the figure."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA, invoke_without
from reference import write_shard
from typer.testing import CliRunner

from nact_cli.density import render_histograms
from nact_cli.main import app
from neuron_activity import NeuronActivity
from neuron_activity.counts_file import SavedCounts, save_counts
from neuron_activity.density import histogram, summarize

runner = CliRunner()


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def synthetic(num_vectors: int = 1_000_000, features: int = 3000, seed: int = 0) -> np.ndarray:
    """Fire counts of an SAE-like component: a main mode, an ultralow cluster, some dead."""
    rng = np.random.default_rng(seed)
    logd = rng.normal(-2.5, 0.5, features)
    logd[:300] = rng.normal(-5.3, 0.2, 300)
    counts = rng.binomial(num_vectors, np.clip(10**logd, 0, 1))
    counts[300:330] = 0
    return counts


def test_summary_against_numpy() -> None:
    n = 1_000_000
    counts = synthetic(n)
    activity = NeuronActivity()
    activity.add("sae", counts, n)
    s = summarize(activity.components["sae"])
    density = counts / n
    alive = counts > 0
    logs = np.log10(density[alive])
    assert s.never_fired == int((~alive).sum())
    assert s.dense == int((density > 0.01).sum())
    assert s.ultralow == int((alive & (density < 1e-4)).sum())
    assert s.ultralow_present and s.ultralow >= 300
    assert s.log10_quantiles == pytest.approx(
        dict(zip((0.05, 0.25, 0.5, 0.75, 0.95), np.quantile(logs, [0.05, 0.25, 0.5, 0.75, 0.95])))
    )


def test_dense_bound_is_exact() -> None:
    activity = NeuronActivity()
    activity.add("c", np.array([10, 11, 9, 0]), 1000)  # density 0.01 exactly is not above 0.01
    assert summarize(activity.components["c"]).dense == 1


def test_no_cluster_without_an_ultralow_mode() -> None:
    activity = NeuronActivity()
    activity.add("c", np.full(100, 5000), 100_000)
    s = summarize(activity.components["c"])
    assert (s.ultralow, s.ultralow_present) == (0, False)


def test_histogram_against_numpy() -> None:
    n = 1_000_000
    counts = synthetic(n, seed=1)
    activity = NeuronActivity()
    activity.add("sae", counts, n)
    h = histogram(activity.components["sae"], bins_per_decade=4)
    assert h.edges[0] == -6.0 and h.edges[-1] == 0.0
    assert np.allclose(np.diff(h.edges), 0.25)
    alive = counts[counts > 0]
    expected, _ = np.histogram(np.log10(alive / n), bins=np.linspace(-6, 0, 25))
    assert h.counts.tolist() == expected.tolist()
    assert h.dead == int((counts == 0).sum())
    assert int(h.counts.sum()) + h.dead == len(counts)


def test_terminal_histogram_in_a_fixed_width_console() -> None:
    activity = NeuronActivity()
    activity.add("sae", np.array([0, 1, 1, 10, 100, 100, 100, 1000]), 1000)
    text = render_histograms([histogram(activity.components["sae"], 1)], [1e-3], 0.01, width=80)
    assert text.splitlines() == [
        "sae: 8 neurons, 1,000 vectors",
        "  log10 density     neurons",
        "  never fired             1 " + "█" * 13,  # bars scaled to the tallest: 4 -> 50
        "   -3.00 .. -2.00         2 " + "█" * 25 + " <- 0.001",
        "   -2.00 .. -1.00         1 " + "█" * 13 + " <- dense > 0.01",
        "   -1.00 ..  0.00         4 " + "█" * 50,  # densities 0.1 (x3) and 1.0: the last bin is closed
        "",
    ]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_png_and_svg(tmp_path: Path) -> None:
    activity = NeuronActivity()
    activity.add("a", synthetic(seed=2), 1_000_000)
    activity.add("b", synthetic(seed=3), 1_000_000)
    save_counts(tmp_path / "c.safetensors", SavedCounts(activity, []))
    result = nact("density", tmp_path / "c.safetensors", "--plot", tmp_path / "d.png")
    assert result.exit_code == 0, result.stderr
    assert png_size(tmp_path / "d.png") == (1800, 1040)  # 9 x 2.6 inches per panel at 200 dpi
    assert (
        nact("density", tmp_path / "c.safetensors", "--plot", tmp_path / "low.png", "--dpi", "100", "--log-y").exit_code
        == 0
    )
    assert png_size(tmp_path / "low.png") == (900, 520)
    assert nact("density", tmp_path / "c.safetensors", "--plot", tmp_path / "x.png", "--dpi", "5").exit_code == 2
    assert nact("density", tmp_path / "c.safetensors", "--plot", tmp_path / "d.svg").exit_code == 0
    assert b"<svg" in (tmp_path / "d.svg").read_bytes()[:1000]
    bad = nact("density", tmp_path / "c.safetensors", "--plot", tmp_path / "d.gif")
    assert (
        bad.exit_code == 2
        and bad.stderr == f"Error: {tmp_path / 'd.gif'}: a figure is written as a .png, .svg or .pdf file\n"
    )


def test_a_figure_as_pdf_of_its_size_and_fonts_with_panels_side_by_side(tmp_path: Path) -> None:
    activity = NeuronActivity()
    for i, name in enumerate("abc"):
        activity.add(name, synthetic(seed=10 + i), 1_000_000)
    save_counts(tmp_path / "c.safetensors", SavedCounts(activity, []))
    drawn = nact("density", tmp_path / "c.safetensors", "--plot", tmp_path / "d.pdf")
    assert drawn.exit_code == 0, drawn.stderr
    assert (tmp_path / "d.pdf").read_bytes()[:5] == b"%PDF-"
    args = ("--figsize", "6,3", "--font-size", "14", "--dpi", "100")
    side = nact("density", tmp_path / "c.safetensors", "--plot", tmp_path / "s.png", "--columns", "2", *args)
    assert side.exit_code == 0, side.stderr
    assert png_size(tmp_path / "s.png") == (1200, 600)  # 2 columns of 6 x 3 inches, 2 rows, at 100 dpi
    row = nact("density", tmp_path / "c.safetensors", "--plot", tmp_path / "r.png", "--columns", "3", *args)
    assert png_size(tmp_path / "r.png") == (1800, 300) and row.exit_code == 0
    for bad, message in (
        (("--figsize", "6"), "--figsize '6' must be WIDTH,HEIGHT in inches, such as 9,2.6"),
        (("--figsize", "60,3"), "--figsize '60,3' must be WIDTH,HEIGHT inches, each from 1 to 40"),
        (("--figsize", "a,b"), "--figsize 'a,b' must be WIDTH,HEIGHT in inches, such as 9,2.6"),
        (("--font-size", "100"), "--font-size '100' must be from 4 to 40 points"),
        (("--columns", "0"), "--columns 0 must be from 1 to 16"),
    ):
        refused = nact("density", tmp_path / "c.safetensors", "--plot", tmp_path / "x.png", *bad)
        assert refused.exit_code == 2 and refused.stderr == f"Error: {message}\n", refused.stderr
        assert not (tmp_path / "x.png").exists()


def test_plot_without_matplotlib_says_which_extra(tmp_path: Path) -> None:
    code, stderr = invoke_without("matplotlib", ["density", str(SAMPLE_DATA), "--plot", str(tmp_path / "x.png")])
    assert (code, stderr) == (2, "Error: drawing a figure needs matplotlib: pip install 'nact[plot]'\n")


def test_density_of_counts_equals_density_of_activations(tmp_path: Path) -> None:
    from_data = nact("density", SAMPLE_DATA, "-f", "json")
    nact("scan", SAMPLE_DATA, "--save-counts", tmp_path / "c.safetensors", "-q")
    from_counts = nact("density", tmp_path / "c.safetensors", "-f", "json")
    assert from_data.exit_code == from_counts.exit_code == 0
    assert json.loads(from_data.stdout) == json.loads(from_counts.stdout)
    first = json.loads(from_data.stdout)["components"][0]
    assert (first["never_fired"], first["dense"], first["ultralow"]) == (2, 4, 2)
    assert sum(first["alive_per_bin"]) == 6


def test_scan_json_has_density_summaries() -> None:
    doc = json.loads(nact("scan", SAMPLE_DATA, "-f", "json", "--dense-above", "0.03").stdout)
    assert [(d["component"], d["never_fired"], d["dense"], d["dense_above"]) for d in doc["density"]] == [
        ("blocks.0.hook_sae_acts", 2, 0, 0.03),
        ("blocks.1.hook_sae_acts", 1, 4, 0.03),
    ]
    bad = nact("scan", SAMPLE_DATA, "--dense-above", "0")
    assert bad.exit_code == 2 and bad.stderr == "Error: --dense-above '0' is not a density between 0 and 1\n"


def test_neurons_and_top(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = np.maximum(rng.standard_normal((5000, 30)) - 1.5, 0).astype(np.float32)
    x[:, [3, 17]] = 0
    x[:, 5] = 0
    x[:4, 5] = 1  # fires 4 times: dead at 1e-3 (5 allowed), alive at 0
    write_shard(tmp_path / "s.safetensors", {"acts": torch.from_numpy(x)})
    result = nact("scan", tmp_path, "-f", "json", "-t", "0", "-t", "1e-3", "--neurons", "--top", "3")
    doc = json.loads(result.stdout)
    counts = (x > 0).sum(axis=0)
    for row, bound in zip(doc["rows"], (0, 5)):
        assert row["dead_neurons"] == np.flatnonzero(counts <= bound).tolist()
        assert row["dead_neuron_fire_counts"] == counts[counts <= bound].tolist()
    top = doc["top"]["acts"]
    order = sorted(range(30), key=lambda i: (-counts[i], i))
    assert [e["neuron"] for e in top["most_active"]] == order[:3]
    assert [e["fire_count"] for e in top["most_active"]] == [int(counts[i]) for i in order[:3]]
    assert [e["neuron"] for e in top["least_active"]] == sorted(range(30), key=lambda i: (counts[i], i))[:3]
    csv_out = nact("scan", tmp_path, "-f", "csv", "-t", "1e-3", "--neurons").stdout.splitlines()
    assert csv_out[0].endswith(",dead_neurons,dead_neuron_fire_counts")
    assert csv_out[1].endswith(",3 5 17,0 4 0")
    table = nact("scan", tmp_path, "-t", "1e-3", "--neurons", "--top", "1").stdout
    assert "acts dead at 1e-3: 3 5 17" in table


def test_every_new_command_has_examples() -> None:
    for name in ("inspect", "report", "merge", "diff", "density"):
        result = nact(name, "--help")
        assert result.exit_code == 0 and "Examples" in result.stdout


def test_compare_two_checkpoints_in_one_figure(tmp_path: Path) -> None:
    old, new = NeuronActivity(), NeuronActivity()
    old.add("sae", synthetic(seed=5), 1_000_000)
    new.add("sae", synthetic(seed=6), 1_000_000)
    save_counts(tmp_path / "old.safetensors", SavedCounts(old, []))
    save_counts(tmp_path / "new.safetensors", SavedCounts(new, []))
    result = nact(
        "density",
        tmp_path / "old.safetensors",
        "--compare",
        tmp_path / "new.safetensors",
        "--plot",
        tmp_path / "c.png",
        "-f",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    expected = histogram(new.components["sae"], 4)
    assert doc["compare"][0]["alive_per_bin"] == expected.counts.tolist()
    assert doc["compare"][0]["never_fired"] == expected.dead
    assert png_size(tmp_path / "c.png") == (1800, 520)


def test_compare_binds_a_sparsity_file_away_from_its_sae_by_name(tmp_path: Path) -> None:
    """A sparsity file without the SAE's cfg.json beside it is named by its file: --compare
    says how to bind it, and COMPONENT=FILE does."""
    from neuron_activity.sparsity import save_sparsity

    ours, theirs = NeuronActivity(), NeuronActivity()
    ours.add("blocks.0.hook_resid_post:sae", synthetic(seed=9), 1_000_000)
    theirs.add("x", synthetic(seed=9), 1_000_000)
    save_counts(tmp_path / "ours.safetensors", SavedCounts(ours, []))
    save_sparsity(tmp_path / "sparsity.safetensors", theirs)
    unbound = nact("density", tmp_path / "ours.safetensors", "--compare", tmp_path / "sparsity.safetensors")
    assert unbound.exit_code == 2 and unbound.stderr == (
        f"Error: --compare '{tmp_path / 'sparsity.safetensors'}' has no component of blocks.0.hook_resid_post:sae "
        "(it has sparsity): name the component it is of, COMPONENT=PATH\n"
    )
    bound = nact(
        "density",
        tmp_path / "ours.safetensors",
        "--compare",
        f"blocks.0.hook_resid_post:sae={tmp_path / 'sparsity.safetensors'}",
        "-f",
        "json",
    )
    assert bound.exit_code == 0, bound.stderr
    doc = json.loads(bound.stdout)
    assert doc["compare"][0]["component"] == "blocks.0.hook_resid_post:sae"
    assert doc["compare"][0]["never_fired"] == doc["components"][0]["never_fired"]


def test_text_histogram_starts_at_one_fire_and_notes_low_thresholds() -> None:
    activity = NeuronActivity()
    activity.add("sae", np.array([0, 100, 100]), 1000)  # nothing fires once: bins below are empty but shown
    text = render_histograms([histogram(activity.components["sae"], 1)], [1e-5], 0.01, width=80)
    lines = text.splitlines()
    assert lines[3].split()[:3] == ["-3.00", "..", "-2.00"] and lines[3].split()[3] == "0"
    assert lines[-2].strip() == "(threshold 1e-05 is below one fire in 1,000 vectors: dead at it means never fired)"


def test_the_figure_is_drawn_in_its_colours(tmp_path: Path) -> None:
    """A rendered check: the compared counts' orange outline and the never-fired red are there."""
    import matplotlib.image

    old, new = NeuronActivity(), NeuronActivity()
    old.add("sae", synthetic(seed=7), 1_000_000)
    new.add("sae", synthetic(seed=8), 1_000_000)
    save_counts(tmp_path / "old.safetensors", SavedCounts(old, []))
    save_counts(tmp_path / "new.safetensors", SavedCounts(new, []))
    assert (
        nact(
            "density",
            tmp_path / "old.safetensors",
            "--compare",
            tmp_path / "new.safetensors",
            "--plot",
            tmp_path / "c.png",
            "--dpi",
            "100",
        ).exit_code
        == 0
    )
    pixels = (matplotlib.image.imread(tmp_path / "c.png")[..., :3] * 255).round().astype(int)

    def share(rgb: tuple[int, int, int]) -> float:
        return float((np.abs(pixels - np.array(rgb)).sum(axis=-1) < 30).mean())

    assert share((0xDD, 0x84, 0x52)) > 0.001  # the compared histogram's outline
    assert share((0xC4, 0x4E, 0x52)) > 0.001  # never-fired bar
    alive = tuple(round(0.85 * c + 0.15 * 255) for c in (0x4C, 0x72, 0xB0))  # drawn at alpha 0.85 over white
    assert share(alive) > 0.005  # alive neurons
    assert share((255, 255, 255)) > 0.5  # and a figure, not a smear


def test_density_draws_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess

    from test_end_to_end import nact_executable, read_terminal

    master, slave = pty.openpty()
    done = subprocess.run(
        [nact_executable(), "density", str(SAMPLE_DATA), "-f", "json"],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120"},
        timeout=120,
    )
    os.close(slave)
    drawn = read_terminal(master)
    assert done.returncode == 0 and json.loads(done.stdout)["components"]
    assert b"scanning" in drawn and b"4/4 shards" in drawn
