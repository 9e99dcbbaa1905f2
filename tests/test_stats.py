"""--stats: the per-dimension moments of stored activations against float64 numpy on data with
planted outlier dimensions, the same whatever the chunking, threads, kernel, parts, audits and
merges; gamma, outliers and mean L0 in every output; SAE latents' margins to firing against
the float64 formulas of ``sae_checkpoints``."""

from __future__ import annotations

import json
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import TORCH_DTYPES, as_float64, assert_moments, write_shard
from sae_checkpoints import HOOK, ROWS, activations, cache, reach
from test_sae import CASES, make_case
from typer.testing import CliRunner

from nact_cli.main import app
from neuron_activity import CountOptions, ReportOptions, scan, state
from neuron_activity.counts_file import SavedCounts, load_counts, save_counts
from neuron_activity.options import ScanRequest
from neuron_activity.pipeline import run_scan
from neuron_activity.report import make_report
from neuron_activity.sae import load_sae
from neuron_activity.stats import MEAN_CENTERING_GAMMA, chunk_moments, merge_moments, summarize

runner = CliRunner()
RTOL = 1e-9
OUTLIERS = (5, 17, 2)  # planted: far from 0 in standard deviations, in this order


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def planted(rng: np.random.Generator, rows: int, width: int = 24) -> np.ndarray:
    """Activations with a few dimensions far from zero (means 40, -25, 9 against stds near 1),
    the rest centred, a dead dimension and some exact zeros."""
    x = rng.standard_normal((rows, width)) * (0.5 + rng.random(width))
    x[rng.random((rows, width)) < 0.2] = 0.0
    for dim, mean in zip(OUTLIERS, (40.0, -25.0, 9.0)):
        x[:, dim] = mean + rng.standard_normal(rows) * 0.8
    x[:, 3] = 0.0
    return x


def write_planted(folder: Path, dtype: str, sizes: tuple[int, ...] = (300, 1, 517, 90), seed: int = 4) -> np.ndarray:
    """Shards of planted activations in ``dtype``; their values as float64 (after rounding)."""
    rng = np.random.default_rng(seed)
    parts = [torch.from_numpy(planted(rng, n)).to(TORCH_DTYPES[dtype]) for n in sizes]
    for i, x in enumerate(parts):
        write_shard(folder / f"shard_{i:03d}.safetensors", {"acts": x})
    return np.concatenate([as_float64(x) for x in parts])


# --- the moments against float64 numpy -----------------------------------------------------------


@pytest.mark.parametrize("kernel", ["native", "numpy", "torch"])
@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16", "F64", "F8_E4M3"])
def test_moments_equal_numpy_in_float64(tmp_path: Path, kernel: str, dtype: str) -> None:
    values = write_planted(tmp_path, dtype)
    c = scan([tmp_path], stats=True, kernel=kernel).activity.components["acts"]
    assert_moments(c.states, values)
    found = c.activation_stats()
    assert found is not None
    mean, std = values.mean(axis=0), values.std(axis=0)
    assert found.mean_norm == pytest.approx(np.linalg.norm(mean), rel=RTOL)
    assert found.std_norm == pytest.approx(np.linalg.norm(std), rel=RTOL)
    assert found.gamma == pytest.approx(np.linalg.norm(mean) / np.linalg.norm(std), rel=RTOL)
    assert [d.dim for d in found.outlier_dims[:3]] == list(OUTLIERS)
    order = np.argsort(-np.abs(mean) / np.where(std > 0, std, np.nan), kind="stable")
    ranked = [int(i) for i in order if std[i] > 0 or mean[i] != 0][:10]
    assert [d.dim for d in found.outlier_dims] == ranked  # the always-0 dimension 3 is no outlier
    assert found.gamma > MEAN_CENTERING_GAMMA


@pytest.mark.parametrize("kernel", ["native", "numpy", "torch"])
def test_nan_and_infinite_values(tmp_path: Path, kernel: str) -> None:
    x = np.random.default_rng(1).standard_normal((200, 5)).astype(np.float32)
    x[[0, 7, 150], 1] = np.nan  # NaNs are left out, the first value of a chunk too
    x[:, 2] = np.nan  # a dimension with no value
    x[9, 3] = np.inf
    x[[3, 4], 4] = [np.inf, -np.inf]
    write_shard(tmp_path / "a.safetensors", {"acts": torch.from_numpy(x)})
    for chunk_rows in (None, 1, 13):
        c = scan([tmp_path], stats=True, kernel=kernel, chunk_rows=chunk_rows).activity.components["acts"]
        counts, means, m2 = (c.states[n] for n in state.MOMENTS)
        assert counts.tolist() == [200, 197, 0, 200, 200]
        for d in (0, 1):
            kept = x[:, d][~np.isnan(x[:, d])].astype(np.float64)
            assert means[d] == pytest.approx(kept.mean(), rel=RTOL, abs=1e-15)
            assert m2[d] == pytest.approx(((kept - kept.mean()) ** 2).sum(), rel=RTOL)
        for d in (3, 4):  # an infinite value leaves no finite mean or spread
            assert not (np.isfinite(means[d]) and np.isfinite(m2[d]))
        summary = c.activation_stats()
        assert summary is not None and np.isnan(summary.gamma)  # an infinity: not a finite ratio


# --- the same whatever the cutting ----------------------------------------------------------------


def moments_of(c) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(c.states[n] for n in state.MOMENTS)


def assert_same(a, b) -> None:
    (na, ma, va), (nb, mb, vb) = moments_of(a), moments_of(b)
    assert na.tolist() == nb.tolist()
    spread = np.sqrt(va / np.maximum(na, 1))
    assert (np.abs(ma - mb) <= RTOL * (np.abs(ma) + spread)).all()
    np.testing.assert_allclose(va, vb, rtol=RTOL)


def test_the_same_moments_whatever_the_chunks_threads_and_kernel(tmp_path: Path) -> None:
    write_planted(tmp_path, "F32")
    whole = scan([tmp_path], stats=True).activity.components["acts"]
    for kernel in ("native", "numpy", "torch"):
        for chunk_rows in (1, 2, 7, 64, None):
            for threads in (1, 2, 3):
                got = scan([tmp_path], stats=True, kernel=kernel, chunk_rows=chunk_rows, threads=threads)
                assert_same(got.activity.components["acts"], whole)


def test_parts_merges_and_audits_keep_the_same_moments(tmp_path: Path) -> None:
    data = tmp_path / "data"
    values = write_planted(data, "BF16", sizes=(40, 300, 7, 128, 61))
    whole = scan([data], stats=True).activity.components["acts"]
    parts = []
    for i in range(3):
        out = tmp_path / f"part{i}.safetensors"
        assert nact("scan", data, "--stats", "--shard", f"{i}/3", "--save-counts", out, "-q").exit_code == 0
        parts.append(out)
    assert nact("merge", *reversed(parts), "-o", tmp_path / "merged.safetensors").exit_code == 0
    merged = load_counts(tmp_path / "merged.safetensors").activity.components["acts"]
    assert_same(merged, whole)
    assert_moments(merged.states, values)
    # an audit that counts the shards as they come
    audit_state = tmp_path / "audit.safetensors"
    for n in range(1, 6):
        (tmp_path / "grow").mkdir(exist_ok=True)
        shard = data / f"shard_{n - 1:03d}.safetensors"
        (tmp_path / "grow" / shard.name).write_bytes(shard.read_bytes())
        assert nact("scan", tmp_path / "grow", "--stats", "--state", audit_state, "-q").exit_code == 0
    assert_same(load_counts(audit_state).activity.components["acts"], whole)
    # the report of saved counts shows what the scan showed
    scanned = json.loads(nact("scan", data, "--stats", "-f", "json").stdout)
    reported = json.loads(nact("report", tmp_path / "merged.safetensors", "--stats", "-f", "json").stdout)
    a, b = scanned["components"][0]["stats"], reported["components"][0]["stats"]
    assert a["mean_l0"] == b["mean_l0"] and [d["dim"] for d in a["outlier_dims"]] == [
        d["dim"] for d in b["outlier_dims"]
    ]
    assert b["gamma"] == pytest.approx(a["gamma"], rel=RTOL)


def test_chan_merge_of_pieces_equals_the_whole() -> None:
    rng = np.random.default_rng(3)
    x = planted(rng, 1000)
    n, mean, m2 = chunk_moments(x[:0])
    for a, b in ((0, 1), (1, 250), (250, 251), (251, 1000)):
        n_b, mean_b, m2_b = chunk_moments(x[a:b])
        merge_moments(n, mean, m2, n_b, mean_b, m2_b)
        n = n + n_b
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(m2, ((x - x.mean(axis=0)) ** 2).sum(axis=0), rtol=RTOL)
    # combined as saved counts combine, in either grouping
    pieces = [dict(zip(state.MOMENTS, chunk_moments(x[a:b]))) for a, b in ((0, 10), (10, 600), (600, 1000))]
    left = state.combined(state.combined(pieces[0], 10, pieces[1], 590), 600, pieces[2], 400)
    right = state.combined(pieces[0], 10, state.combined(pieces[1], 590, pieces[2], 400), 990)
    for name in ("value_means", "value_m2"):
        np.testing.assert_allclose(left[name], right[name], rtol=RTOL, atol=1e-15)


def test_positions_skipped_are_left_out_of_the_moments(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((6, 10, 4)).astype(np.float32)
    x[:, 0, :] += 100.0  # the BOS token
    write_shard(tmp_path / "a.safetensors", {"acts": torch.from_numpy(x)})
    c = scan([tmp_path], stats=True, flatten=True, skip_positions=(0,)).activity.components["acts"]
    assert_moments(c.states, x[:, 1:, :].reshape(-1, 4).astype(np.float64))


# --- what is shown --------------------------------------------------------------------------------


def test_json_table_csv_and_markdown_show_the_stats(tmp_path: Path) -> None:
    values = write_planted(tmp_path, "F32")
    doc = json.loads(nact("scan", tmp_path, "--stats", "-f", "json").stdout)
    stats = doc["components"][0]["stats"]
    fires = (values > 0).sum()
    assert stats["mean_l0"] == float(Fraction(int(fires), len(values)))
    assert set(stats) == {"mean_l0", "mean_norm", "std_norm", "gamma", "outlier_dims"}
    assert stats["outlier_dims"][0] == {
        "dim": 5,
        "mean": pytest.approx(values[:, 5].mean(), rel=RTOL),
        "std": pytest.approx(values[:, 5].std(), rel=RTOL),
    }
    assert len(stats["outlier_dims"]) == 10
    table = nact("scan", tmp_path, "--stats").stdout
    assert "Activation statistics" in table and f"{stats['gamma']:.3g}" in table
    note = f"Note: acts: gamma {stats['gamma']:.3g} >= 1: its mean outweighs its spread"
    assert note in table.replace("\n", " ").replace("  ", " ") or note in table
    csv_lines = nact("scan", tmp_path, "--stats", "-f", "csv").stdout.splitlines()
    assert csv_lines[0].endswith(",mean_l0,gamma") and csv_lines[1].endswith(f",{stats['mean_l0']},{stats['gamma']}")
    assert "| component | mean_l0 | gamma |" in nact("scan", tmp_path, "--stats", "-f", "markdown").stdout


def test_without_stats_nothing_changes(tmp_path: Path) -> None:
    write_planted(tmp_path, "F32")
    plain = nact("scan", tmp_path, "-f", "json").stdout
    assert "stats" not in json.loads(plain)["components"][0]
    nact("scan", tmp_path, "--save-counts", tmp_path.parent / "plain.safetensors", "-q")
    saved = load_counts(tmp_path.parent / "plain.safetensors").activity.components["acts"]
    assert not any(n in saved.states for n in state.MOMENTS + state.MARGINS)
    assert "Activation statistics" not in nact("scan", tmp_path).stdout


def test_counts_saved_without_stats_report_mean_l0_and_say_why(tmp_path: Path) -> None:
    write_planted(tmp_path / "data", "F32")
    saved = tmp_path / "c.safetensors"
    nact("scan", tmp_path / "data", "--save-counts", saved, "-q")
    done = nact("report", saved, "--stats", "-f", "json")
    assert done.exit_code == 0
    assert set(json.loads(done.stdout)["components"][0]["stats"]) == {"mean_l0"}
    assert done.stderr == (
        "Warning: component 'acts': no mean or standard deviation kept (its counts were made without stats, or "
        "read from a sparse cache): its stats are mean_l0 only\n"
    )
    # merged with counts that have them: the merge cannot know them for the whole
    nact("scan", tmp_path / "data", "--stats", "--save-counts", tmp_path / "s.safetensors", "-q")
    merged = load_counts(saved).activity.merge(load_counts(tmp_path / "s.safetensors").activity)
    assert "value_means" not in merged.components["acts"].states


def test_corrupt_moments_are_refused(tmp_path: Path) -> None:
    write_planted(tmp_path / "data", "F32")
    result = scan([tmp_path / "data"], stats=True)
    result.activity.components["acts"].states["value_counts"][4] = 10**6
    save_counts(tmp_path / "c.safetensors", SavedCounts(result.activity))
    done = nact("report", tmp_path / "c.safetensors")
    assert done.exit_code == 2
    assert "corrupt counts file: acts/value_counts[4] = 1000000 cannot be with 908 vectors" in done.stderr


def test_the_library_reports_stats_as_the_cli(tmp_path: Path) -> None:
    write_planted(tmp_path, "F32")
    outcome = run_scan(ScanRequest(paths=(tmp_path,), count=CountOptions(device="cpu", stats=True)))
    assert outcome.report is not None and outcome.report.options.stats  # asked once, counted and shown
    summary = outcome.report.stats()[0]
    c = outcome.report.activity.components["acts"]
    assert summary.mean_l0 == Fraction(int(c.fire_counts.sum()), c.num_vectors)
    counts, means, m2 = moments_of(c)
    assert summary.activations == summarize(counts, means, m2)
    again = make_report(outcome.report.activity, ReportOptions(stats=True), [])
    assert again.to_json()["components"][0]["stats"] == outcome.report.to_json()["components"][0]["stats"]


# --- SAE latents: how close each came to firing ---------------------------------------------------

MARGIN_CASES = sorted(c for c in CASES if not c.startswith(("dl-backup", "dl-checkpoint")))


@pytest.mark.parametrize("case", MARGIN_CASES)
def test_margins_equal_the_float64_formulas(tmp_path: Path, case: str) -> None:
    folder, arch, asked = make_case(tmp_path, case)
    x = activations(seed=zlib.crc32(case.encode()) % 1000)
    data = cache(tmp_path / "cache", x)
    c = next(iter(scan([data], saes=(asked,), chunk_rows=400, stats=True).activity.components.values()))
    pre_max, margins = reach(arch, x)
    np.testing.assert_allclose(c.states["pre_max"], pre_max, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(c.states["margins"], margins, rtol=1e-4, atol=2e-4)
    never = c.fire_counts == 0
    assert (c.states["margins"][never] > -2e-4).all()  # a latent that never fired stayed at or below its boundary
    assert (c.states["margins"][~never] <= 2e-4).all()  # one that fired reached it


@pytest.mark.parametrize("case", ["saelens-topk-rescaled", "saelens-gated", "sparsify-groupmax", "gemma-scope"])
def test_the_torch_encoder_keeps_the_same_margins(tmp_path: Path, case: str) -> None:
    folder, arch, asked = make_case(tmp_path, case)
    x = activations(seed=5)
    x[[4, 900]] = np.nan  # vectors with a NaN input are left out
    data = cache(tmp_path / "cache", x)
    on_device = scan([data], saes=(asked,), kernel="torch", chunk_rows=700, stats=True)
    c = next(iter(on_device.activity.components.values()))
    pre_max, margins = reach(arch, x[~np.isnan(x).any(axis=1)])
    np.testing.assert_allclose(c.states["pre_max"], pre_max, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(c.states["margins"], margins, rtol=1e-4, atol=2e-4)
    on_cpu = next(iter(scan([data], saes=(asked,), stats=True).activity.components.values()))
    np.testing.assert_allclose(on_cpu.states["margins"], c.states["margins"], rtol=1e-5, atol=1e-5)


def test_dead_latents_are_listed_with_their_margins(tmp_path: Path) -> None:
    folder, arch, asked = make_case(tmp_path, "saelens-standard")
    x = activations()
    data = cache(tmp_path / "cache", x)
    saved = tmp_path / "c.safetensors"
    done = nact("scan", data, "--sae", asked, "--stats", "--neurons", "-t", "0", "-f", "json", "--save-counts", saved)
    doc = json.loads(done.stdout)
    row, component = doc["rows"][0], doc["components"][0]
    pre_max, margins = reach(arch, x)
    assert row["dead_neurons"][:3] == [0, 1, 2]  # the latents whose bias keeps them from firing
    assert row["dead_neuron_margins"] == pytest.approx(margins[row["dead_neurons"]].tolist(), rel=1e-4, abs=2e-4)
    assert min(row["dead_neuron_margins"][:3]) > 10  # far from firing
    stats = component["stats"]
    assert len(stats["max_pre_activations"]) == component["num_features"]  # alive latents too
    np.testing.assert_allclose(stats["max_pre_activations"], pre_max, rtol=1e-4, atol=2e-4)
    c = load_counts(saved).activity.components[component["component"]]
    assert stats["mean_l0"] == float(Fraction(int(c.fire_counts.sum()), ROWS))
    never = margins[c.fire_counts == 0]
    assert stats["never_fired_margins"]["median"] == pytest.approx(float(np.median(never)), rel=1e-4)
    # the margins are saved and reported again
    again = json.loads(nact("report", saved, "--stats", "--neurons", "-t", "0", "-f", "json").stdout)
    assert again["rows"][0]["dead_neuron_margins"] == row["dead_neuron_margins"]
    top = json.loads(nact("scan", data, "--sae", asked, "--stats", "--top", "2", "-f", "json").stdout)["top"]
    least = next(iter(top.values()))["least_active"][0]
    assert least["margin"] == pytest.approx(float(margins[least["neuron"]]), rel=1e-4, abs=2e-4)
    assert load_sae(folder).name in component["component"] and HOOK in component["component"]


def test_the_worked_example_of_the_docs(tmp_path: Path) -> None:
    """docs/stats.md's example, as the page shows it: gamma 4.39, and 94 of 512 latents dead
    without centring, none with."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "stats_example", Path(__file__).parent.parent / "docs" / "stats_example.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(tmp_path)
    doc = json.loads(nact("scan", tmp_path / "cache", "--stats", "-f", "json").stdout)
    assert f"{doc['components'][0]['stats']['gamma']:.3g}" == "4.39"
    saes = ("--sae", tmp_path / "sae_raw", "--sae", tmp_path / "sae_centred")
    rows = json.loads(nact("scan", tmp_path / "cache", *saes, "--stats", "-t", "0", "-f", "json").stdout)["rows"]
    assert [r["dead"] for r in rows] == [94, 0]


def test_count_array_keeps_the_moments_of_each_component() -> None:
    from neuron_activity import count_array

    x = np.random.default_rng(9).standard_normal((500, 3, 7)) + np.arange(7)
    activity = count_array(x.astype(np.float32), stats=True)
    for c in range(3):
        assert_moments(
            activity.components[f"activations[{c}]"].states, x[:, c, :].astype(np.float32).astype(np.float64)
        )
    assert "value_means" not in count_array(x).components["activations[0]"].states


def test_a_sparse_cache_keeps_no_moments_and_says_so(tmp_path: Path) -> None:
    from test_formats import write_delphi_module

    dense = np.maximum(np.random.default_rng(7).standard_normal((6, 16, 40)) - 1.0, 0).astype(np.float16)
    write_delphi_module(tmp_path / "layers.3.mlp", dense, [(0, 19), (20, 39)])
    done = nact("scan", tmp_path, "--stats", "-f", "json")
    stats = json.loads(done.stdout)["components"][0]["stats"]
    assert stats == {"mean_l0": float(Fraction(int((dense > 0).sum()), 96))}
    assert "component 'layers.3.mlp': no mean or standard deviation kept" in done.stderr


def test_torchrun_ranks_merge_their_moments(tmp_path: Path) -> None:
    from test_audit import torchrun

    values = write_planted(tmp_path / "data", "BF16", sizes=(40, 300, 7, 128, 61))
    done = torchrun(
        "scan", tmp_path / "data", "--stats", "--save-counts", tmp_path / "d.safetensors", "-q", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    saved = load_counts(tmp_path / "d.safetensors").activity.components["acts"]
    assert_moments(saved.states, values)
    assert_same(saved, scan([tmp_path / "data"], stats=True).activity.components["acts"])
