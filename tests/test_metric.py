"""The training-time metric: exact counts on the tensor's device, batch by batch equal to the whole
and to an independent numpy reference, DDP over two gloo processes, and saved counts nact reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import TORCH_DTYPES, as_float64, dead_count, fire_counts, random_activations, write_shard
from typer.testing import CliRunner

from nact_cli.main import app
from neuron_activity import scan
from neuron_activity.metric import TensorActivity, count_tensor, exact_portion

torchmetrics = pytest.importorskip("torchmetrics")
from neuron_activity.metric import NeuronActivityMetric  # noqa: E402

runner = CliRunner()
THRESHOLDS = ["0", "1e-5", "1e-6", "0.01", "0.5"]


def test_the_reference_documented_example() -> None:
    metric = NeuronActivityMetric(num_learned_features=3)
    assert metric.forward(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])).tolist() == 1


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("components", [None, 3])
def test_batch_by_batch_equals_the_whole_and_the_reference(dtype: str, components: int | None) -> None:
    rng = np.random.default_rng(len(dtype) + (components or 0))
    tail = (7,) if components is None else (components, 7)
    batches = [random_activations(rng, (n, *tail), dtype) for n in (13, 1, 40, 6)]
    for fire_above in ("0", "1e-5", "-0.5"):
        metric = NeuronActivityMetric(7, components, "1e-5", fire_above=fire_above)
        for b in batches:
            metric.update(b)
        whole = NeuronActivityMetric(7, components, "1e-5", fire_above=fire_above)
        whole.update(torch.cat(batches))
        values = np.concatenate([as_float64(b) for b in batches])
        n = len(values)
        per_component = [values] if components is None else [values[:, c, :] for c in range(components)]
        counts = [fire_counts(v, Fraction(fire_above)) for v in per_component]
        assert metric.fire_counts.reshape(-1, 7).tolist() == [c.tolist() for c in counts]
        for t in THRESHOLDS:
            expected = [dead_count(c, n, t) for c in counts]
            got = metric.dead_counts(t)
            assert got.reshape(-1).tolist() == expected, (fire_above, t)
            assert whole.dead_counts(t).tolist() == got.tolist()
        assert metric.compute().reshape(-1).tolist() == [dead_count(c, n, "1e-5") for c in counts]
        assert metric.compute().dim() == (0 if components is None else 1)


def test_exact_where_float32_counts_are_not() -> None:
    """At N = 16,999,999, 1e-6 x N is 16.999999: 17 fires are alive. The reference computes p x N
    in float32 (17.0) and calls them dead."""
    metric = NeuronActivityMetric(4, threshold_is_dead_portion_fires=1e-6)
    counts = torch.tensor([16, 17, 170, 18], dtype=torch.int64)
    metric.fire_counts = counts.clone()
    metric.num_vectors = torch.tensor(16_999_999, dtype=torch.int64)
    assert metric.compute().tolist() == 1  # 16 <= 16.999999; 17 is alive
    assert metric.dead_counts("1e-5").tolist() == 3  # 16, 17, 18 <= 169.99999; 170 is alive
    for p, wrong in ((1e-6, 2), (1e-5, 4)):  # float32 p x N rounds up to 17.0 and 170.0
        bound = np.float32(p) * np.float32(16_999_999)
        assert int((counts.numpy() <= bound).sum()) == wrong


def test_several_thresholds_and_exact_portions() -> None:
    assert exact_portion(1e-5) == Fraction(1, 100_000)
    assert exact_portion("1e-6") == Fraction(1, 1_000_000)
    with pytest.raises(Exception, match="between 0 and 1"):
        NeuronActivityMetric(3, threshold_is_dead_portion_fires=2.0)


def test_low_precision_fire_rule_matches_the_file_scan(tmp_path: Path) -> None:
    x = torch.tensor([[1e-5, 2e-5, 0.0, -1.0], [1e-5, 0.0, float("nan"), 3.0]], dtype=torch.bfloat16)
    assert float(x[0, 0]) > 1e-5  # bf16 rounds 1e-5 up: it fires above 1e-5
    metric = NeuronActivityMetric(4, fire_above="1e-5")
    metric.update(x)
    write_shard(tmp_path / "x.safetensors", {"acts": x})
    scanned = scan([tmp_path], fire_above="1e-5").activity.components["acts"]
    assert metric.fire_counts.tolist() == scanned.fire_counts.tolist() == [2, 1, 0, 1]
    assert metric.nan_counts.tolist() == scanned.nan_counts.tolist() == [0, 0, 1, 0]


def test_merge_state_and_reset() -> None:
    rng = np.random.default_rng(1)
    a, b = random_activations(rng, (20, 5), "F32"), random_activations(rng, (30, 5), "F32")
    first, second, whole = NeuronActivityMetric(5), NeuronActivityMetric(5), NeuronActivityMetric(5)
    first.update(a)
    second.update(b)
    whole.update(torch.cat([a, b]))
    first.merge_state(second)
    assert first.fire_counts.tolist() == whole.fire_counts.tolist() and int(first.num_vectors) == 50
    first.reset()
    assert int(first.num_vectors) == 0 and first.fire_counts.sum().item() == 0


def test_shapes_are_checked() -> None:
    metric = NeuronActivityMetric(4, 2)
    with pytest.raises(Exception, match=r"activations of shape \[3, 4\] given where \[batch, 2, 4\] is counted"):
        metric.update(torch.zeros(3, 4))


def test_saved_counts_meet_the_cli(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = random_activations(rng, (500, 2, 9), "BF16")
    metric = NeuronActivityMetric(9, 2, name="sae")
    for chunk in torch.split(x, 64):
        metric.update(chunk)
    metric.save_counts(tmp_path / "train.safetensors")
    write_shard(tmp_path / "acts" / "0.safetensors", {"sae": x})
    runner.invoke(app, ["scan", str(tmp_path / "acts"), "--save-counts", str(tmp_path / "scan.safetensors"), "-q"])
    from_training = runner.invoke(app, ["report", str(tmp_path / "train.safetensors"), "-f", "json"])
    from_scan = runner.invoke(app, ["report", str(tmp_path / "scan.safetensors"), "-f", "json"])
    assert from_training.exit_code == 0, from_training.stderr
    assert json.loads(from_training.stdout)["rows"] == json.loads(from_scan.stdout)["rows"]
    diff = runner.invoke(
        app, ["diff", str(tmp_path / "train.safetensors"), str(tmp_path / "scan.safetensors"), "-f", "json"]
    )
    assert [c["died"] for c in json.loads(diff.stdout)["components"]] == [0, 0]


def test_two_saves_of_the_same_running_counts_are_not_merged(tmp_path: Path) -> None:
    """Checkpoints of a training run save cumulative counts: merging step 1000 into step 2000
    would count the first 1000 steps twice. A reset starts counts that merge with the old."""
    metric = NeuronActivityMetric(3, name="sae")
    metric.update(torch.tensor([[1.0, 0.0, 0.0]]))
    metric.save_counts(tmp_path / "step1.safetensors")
    metric.update(torch.tensor([[0.0, 1.0, 0.0]]))
    metric.save_counts(tmp_path / "step2.safetensors")
    steps = [str(tmp_path / "step1.safetensors"), str(tmp_path / "step2.safetensors")]
    twice = runner.invoke(app, ["merge", *steps, "-o", str(tmp_path / "twice.safetensors")])
    assert twice.exit_code == 2 and "counted in memory" in twice.stderr, twice.stderr
    assert not (tmp_path / "twice.safetensors").exists()
    metric.reset()
    metric.update(torch.tensor([[0.0, 0.0, 1.0]]))
    metric.save_counts(tmp_path / "after.safetensors")
    merged = runner.invoke(
        app,
        [
            "merge",
            str(tmp_path / "step2.safetensors"),
            str(tmp_path / "after.safetensors"),
            "-o",
            str(tmp_path / "m.safetensors"),
        ],
    )
    assert merged.exit_code == 0, merged.stderr
    report = runner.invoke(app, ["report", str(tmp_path / "m.safetensors"), "-t", "0", "-f", "json"])
    assert (
        json.loads(report.stdout)["rows"][0]["dead"] == 0 and json.loads(report.stdout)["rows"][0]["num_vectors"] == 3
    )


def test_tensor_activity_without_torchmetrics() -> None:
    rng = np.random.default_rng(3)
    x = random_activations(rng, (64, 6), "F16")
    counter = TensorActivity(6)
    for chunk in torch.split(x, 10):
        counter.update(chunk)
    metric = NeuronActivityMetric(6)
    metric.update(x)
    for t in THRESHOLDS:
        assert counter.dead_counts(t).tolist() == metric.dead_counts(t).tolist()
    fires, nans = count_tensor(x)
    assert fires.tolist() == fire_counts(as_float64(x)).tolist() and nans.sum().item() == 0


DDP_WORKER = r"""
import json, os, sys, torch, torch.distributed as dist
from neuron_activity.metric import NeuronActivityMetric
rank, world, store, out = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
x = torch.load(sys.argv[4], weights_only=True)
metric = NeuronActivityMetric(x.shape[-1], threshold_is_dead_portion_fires="0.01")
half = x.shape[0] // 2
metric.update(x[:half] if rank == 0 else x[half:])
dead = metric.compute().tolist()
with metric.sync_context():  # the states summed over both ranks, as compute saw them
    counts, vectors = metric.fire_counts.tolist(), int(metric.num_vectors)
    mask = metric.dead_mask("1%").tolist()
if rank == 0:
    json.dump({"dead": dead, "counts": counts, "vectors": vectors, "mask": mask}, open(out, "w"))
dist.destroy_process_group()
"""


def test_ddp_over_two_gloo_processes(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = random_activations(rng, (301, 12), "F32")
    torch.save(x, tmp_path / "x.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                DDP_WORKER,
                str(rank),
                str(tmp_path / "store"),
                str(tmp_path / "out.json"),
                str(tmp_path / "x.pt"),
            ],
            env=env,
            cwd=tmp_path,
        )
        for rank in range(2)
    ]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    got = json.loads((tmp_path / "out.json").read_text())
    counts = fire_counts(as_float64(x))
    mask = (counts <= 3).tolist()  # 1% of 301 vectors: 3.01
    assert got == {"dead": dead_count(counts, 301, "0.01"), "counts": counts.tolist(), "vectors": 301, "mask": mask}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_counts_stay_on_the_gpu() -> None:
    rng = np.random.default_rng(5)
    x = random_activations(rng, (1000, 3, 16), "BF16")
    metric = NeuronActivityMetric(16, 3, fire_above="1e-5").to("cuda")
    metric.update(x.to("cuda"))
    assert metric.fire_counts.device.type == "cuda"
    values = as_float64(x)
    assert metric.fire_counts.cpu().tolist() == [
        fire_counts(values[:, c, :], Fraction("1e-5")).tolist() for c in range(3)
    ]
