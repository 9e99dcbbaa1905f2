"""The training metric's counting paths and what resampling code reads from it.

CPU tensors are counted in place by the C kernel (or numpy), tensors on a device by a fixed few
torch kernels (run here on the cpu device, and on cuda where there is one): every path is
compared with an independent numpy reference, for every dtype, layout and fire bound. Then the
masks, densities and states on the device, torchmetrics' machinery (collections, state dicts,
pickling, reset), and thresholds given as plain numbers. No test here times anything.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reference import TORCH_DTYPES, as_float64, dead_count, greater_than, random_activations
from torch.utils._python_dispatch import TorchDispatchMode
from typer.testing import CliRunner

from nact_cli.main import app
from neuron_activity import ReportOptions, count_array
from neuron_activity.errors import BadOption
from neuron_activity.metric import TensorActivity, count_tensor
from neuron_activity.native import kernels

try:
    import torchmetrics

    from neuron_activity.metric import NeuronActivityMetric
except ImportError:  # an optional extra: the tests of the plain counters run without it
    torchmetrics = None
needs_torchmetrics = pytest.mark.skipif(torchmetrics is None, reason="torchmetrics is not installed")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KERNELS = (["native"] if kernels is not None else []) + ["numpy", "torch"]
INTEGER_DTYPES = {"I8": torch.int8, "U8": torch.uint8, "I32": torch.int32, "BOOL": torch.bool}
NAN_BITS = {  # a NaN with its sign bit set, for each float dtype (they must not fire, and are counted)
    "F64": -0x0007FFFFFFFFFFFF,
    "F32": -0x003FFFFF,
    "F16": -0x01FF,
    "BF16": -0x007F,
    "F8_E4M3": -1,
    "F8_E5M2": -1,
}
SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def activations(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """Random activations of ``dtype`` with zeros, negatives, -0, infinities and NaNs of both signs."""
    if dtype in INTEGER_DTYPES:
        values = rng.integers(-3, 4, size=shape)
        return torch.from_numpy(values).to(INTEGER_DTYPES[dtype])
    x = random_activations(rng, shape, dtype)
    bits = x.view(SIGNED[x.element_size()])
    flat = bits.reshape(-1)
    picks = rng.choice(flat.numel(), size=min(flat.numel(), 12), replace=False)
    specials = [float("inf"), float("-inf"), -0.0, float("nan")]
    for i, at in enumerate(picks[: len(specials)]):
        flat[at] = torch.tensor([specials[i]], dtype=x.dtype).view(bits.dtype)[0]
    if len(picks) > len(specials):
        flat[picks[len(specials)]] = NAN_BITS[dtype]
    return x


def reference_counts(x: torch.Tensor, fire_above: Fraction) -> tuple[np.ndarray, np.ndarray]:
    """Fire and NaN counts of ``x`` over its first axis, in numpy int64 from float64 values."""
    values = as_float64(x.cpu())
    return greater_than(values, fire_above).sum(axis=0).astype(np.int64), np.isnan(values).sum(axis=0)


@needs_torchmetrics
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [*TORCH_DTYPES, *INTEGER_DTYPES])
def test_every_path_counts_exactly(device: str, kernel: str, dtype: str) -> None:
    rng = np.random.default_rng(sum(map(ord, dtype + kernel)))
    for components in (None, 3):
        tail = (9,) if components is None else (components, 9)
        for fire_above in ("0", "1e-5", "-0.5", "2.5"):
            metric = NeuronActivityMetric(9, components, fire_above=fire_above, kernel=kernel).to(device)
            batches = [activations(rng, (n, *tail), dtype).to(device) for n in (0, 1, 37, 300)]
            wide = activations(rng, (50, *tail[:-1], 2 * tail[-1]), dtype).to(device)
            batches.append(wide[..., ::2])  # not contiguous
            for b in batches:
                metric.update(b)
            fires, nans = reference_counts(torch.cat([b.cpu() for b in batches]), Fraction(fire_above))
            assert metric.fire_counts.cpu().numpy().tolist() == fires.tolist(), (components, fire_above)
            assert metric.nan_counts.cpu().numpy().tolist() == nans.tolist(), (components, fire_above)
            assert int(metric.num_vectors) == sum(b.shape[0] for b in batches)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_every_half_precision_value_against_every_bound(device: str, dtype: str) -> None:
    """All 65,536 bit patterns as one row, on the device's comparison and on the CPU kernels, at
    bounds that are values of the format, fall between two, are subnormal, negative, or past
    its range: each column fires exactly when its value is above the bound."""
    patterns = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    x = patterns.view(TORCH_DTYPES[dtype]).reshape(1, -1)
    bounds = ["0", "1e-5", "1e-40", "5.9604644775390625e-08", "2.98e-08", "9.2e-41", "1", "1.0078125", "1.0000001"]
    bounds += ["65504", "65520", "1e6", "3.4e38", "-1e-40", "-0.5", "-1", "-65504", "-1e6", "-3.4e38", "-1e39"]
    bounds += ["1/3", "-1/3"]
    values = as_float64(x)
    for bound in bounds:
        expected = greater_than(values, Fraction(bound))[0]
        for kernel in KERNELS if device == "cpu" else ["torch"]:
            fires, nans = count_tensor(x.to(device), bound, kernel=kernel)
            assert fires.cpu().numpy().astype(bool).tolist() == expected.tolist(), (bound, kernel)
            assert nans.cpu().numpy().astype(bool).tolist() == np.isnan(values[0]).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_float32_and_float64_edges_against_many_bounds(device: str) -> None:
    rng = np.random.default_rng(7)
    x32 = torch.from_numpy(rng.integers(-(1 << 31), 1 << 31, size=(2000, 64), dtype=np.int64).astype(np.int32))
    edges = [0, 1, 0x7F7FFFFF, 0x7F800000, 0x7F800001, 0x7FFFFFFF, -1, -(1 << 31), 0x00800000, 0x007FFFFF]
    x32[: len(edges), 0] = torch.tensor(edges, dtype=torch.int32)
    x64 = torch.from_numpy(rng.integers(-(1 << 62), 1 << 62, size=(500, 64), dtype=np.int64))
    x64[:3, 0] = torch.tensor([0x7FF0000000000000, 1, -1])
    tiny = "1.4e-45"  # the smallest float32 subnormal, rounded down to a decimal
    for bits, dtype in ((x32, torch.float32), (x64, torch.float64)):
        x = bits.view(dtype)
        for bound in ("0", tiny, "1e-38", "1e-5", "1", "3.4028234663852886e38", "-1e-45", "-2", "-1e300", "1e300"):
            for kernel in KERNELS if device == "cpu" else ["torch"]:
                fires, nans = count_tensor(x.to(device), bound, kernel=kernel)
                expected_fires, expected_nans = reference_counts(x, Fraction(bound))
                assert fires.cpu().numpy().tolist() == expected_fires.tolist(), (dtype, bound, kernel)
                assert nans.cpu().numpy().tolist() == expected_nans.tolist()


class Dispatched(TorchDispatchMode):
    """Records every torch operation run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    def kernels(self) -> list[str]:
        return [op for op in self.ops if not op.startswith(("aten.view.", "aten.detach."))]


HOST_SYNCS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_to_copy", "copy_")


@needs_torchmetrics
@pytest.mark.parametrize("dtype", [*TORCH_DTYPES, "I8"])
def test_a_device_update_runs_the_same_few_kernels_whatever_the_batch(dtype: str) -> None:
    """On the device path (run on the cpu device), every batch of a dtype runs the same short
    list of operations, none of which reads a value back to the host."""
    rng = np.random.default_rng(8)
    metric = NeuronActivityMetric(16, 2, "1e-6", kernel="torch")
    seen = []
    for rows in (1, 64, 1000):
        x = activations(rng, (rows, 2, 16), dtype)
        with Dispatched() as dispatched:
            metric.update(x)
        seen.append(dispatched.kernels())
    assert seen[0] == seen[1] == seen[2]
    assert len(seen[0]) <= (7 if dtype in ("F64", "F32", "F16", "BF16") else 10), seen[0]
    assert not [op for op in seen[0] if any(sync in op for sync in HOST_SYNCS)]
    for threshold in (None, "1e-6", "0.1%", 0.0, 1.0, 1e-5):
        with Dispatched() as dispatched:
            metric.dead_mask(threshold)
            metric.dead_counts(threshold)
            metric.density()
        assert not [op for op in dispatched.ops if "_local_scalar_dense" in op], threshold
    with Dispatched() as dispatched:  # a threshold of many digits reads the vector count once
        metric.dead_mask("0.123456789012345678901234567890")
    assert [op for op in dispatched.ops if "_local_scalar_dense" in op] == ["aten._local_scalar_dense.default"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", ["F32", "BF16", "F8_E4M3"])
def test_a_cuda_update_and_mask_never_wait_for_the_gpu(dtype: str) -> None:
    rng = np.random.default_rng(9)
    counters: list[Any] = [TensorActivity(64, 2)]
    if torchmetrics is not None:
        counters.append(NeuronActivityMetric(64, 2, "1e-6").to("cuda"))
    batches = [activations(rng, (rows, 2, 64), dtype).to("cuda") for rows in (10, 1000)]
    counters[0].update(batches[0][:0])  # its counts are made on the device of the first batch
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        for counter in counters:
            for b in batches:
                counter.update(b)
        masks = [(c.dead_mask(), c.dead_mask("0.1%"), c.density()) for c in counters]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    fires, nans = reference_counts(torch.cat([b.cpu() for b in batches]), Fraction(0))
    for counter, (dead, dead_at_01, density) in zip(counters, masks):
        assert counter.fire_counts.cpu().numpy().tolist() == fires.tolist()
        assert counter.nan_counts.cpu().numpy().tolist() == nans.tolist()
        assert dead.device.type == dead_at_01.device.type == density.device.type == "cuda"
        assert dead.cpu().numpy().tolist() == (fires == 0).tolist()
        assert dead_at_01.cpu().numpy().tolist() == (fires <= 1).tolist()  # 0.1% of 1010 is 1.01


@needs_torchmetrics
@pytest.mark.parametrize("device", DEVICES)
def test_dead_mask_is_exact_on_the_device(device: str) -> None:
    """At N = 16,999,999, 1e-6 x N is 16.999999: 16 fires are dead, 17 alive (float32 says 17.0)."""
    metric = NeuronActivityMetric(4, 2, threshold_is_dead_portion_fires="0.0001%").to(device)
    metric.fire_counts = torch.tensor([[16, 17, 170, 0], [169, 18, 1, 17_000_000]], device=device)
    metric.num_vectors = torch.tensor(16_999_999, device=device)
    counts = metric.fire_counts.cpu().numpy()
    for threshold in (None, 1e-6, "1e-6", "0.0001%", 1e-5, "0.001%", 0, 0.0, "0", 1, "100%", "0.123456789012345678"):
        p = Fraction("1e-6") if threshold is None else _exact(threshold)
        mask = metric.dead_mask(threshold)
        assert mask.device.type == device and mask.dtype == torch.bool and mask.shape == (2, 4)
        assert mask.cpu().numpy().tolist() == [[Fraction(int(c)) <= p * 16_999_999 for c in row] for row in counts]
        expected = [dead_count(row, 16_999_999, str(p)) for row in counts]
        assert metric.dead_counts(threshold).cpu().tolist() == expected, threshold
    assert metric.compute().cpu().tolist() == [2, 1]
    density = metric.density()
    assert density.device.type == device and density.dtype == torch.float64
    assert density.cpu().tolist() == (counts / 16_999_999).tolist()
    with pytest.raises(BadOption, match="between 0 and 1"):
        metric.dead_mask("150%")


def _exact(threshold: object) -> Fraction:
    """The reference's reading of a threshold: a float as it prints, a percentage of 100."""
    text = repr(threshold) if isinstance(threshold, float) else str(threshold)
    return Fraction(text[:-1]) / 100 if text.endswith("%") else Fraction(text)


@needs_torchmetrics
@pytest.mark.parametrize("kernel", KERNELS)
def test_counts_stay_exact_past_float32_and_int32(kernel: str) -> None:
    """2^24 + 1 fires: float32 counts (the reference's) stop at 2^24; int64 counts go on, past 2^31 too."""
    ones = torch.ones((1 << 24, 1), dtype=torch.bfloat16)
    metric = NeuronActivityMetric(1, kernel=kernel)
    reference = torch.zeros(1)
    for batch in (ones, ones[:1]):
        metric.update(batch)
        reference += torch.gt(batch, 0).sum(dim=0, dtype=torch.float)
    assert metric.fire_counts.tolist() == [(1 << 24) + 1] and int(metric.num_vectors) == (1 << 24) + 1
    assert reference.tolist() == [1 << 24]
    metric.fire_counts += (1 << 31) - 1
    metric.update(ones[:3])
    assert metric.fire_counts.tolist() == [(1 << 24) + (1 << 31) + 3]


@needs_torchmetrics
def test_a_collection_shares_one_count_between_thresholds() -> None:
    rng = np.random.default_rng(10)
    thresholds = ["0", "1e-2", "0.5"]
    collection = torchmetrics.MetricCollection(
        {f"dead_{i}": NeuronActivityMetric(8, threshold_is_dead_portion_fires=t) for i, t in enumerate(thresholds)},
        compute_groups=True,
    )
    batches = [activations(rng, (n, 8), "F32") for n in (50, 70, 30)]
    for b in batches:
        collection.update(b)
    assert collection.compute_groups == {0: ["dead_0", "dead_1", "dead_2"]}
    fires, _ = reference_counts(torch.cat(batches), Fraction(0))
    got = collection.compute()
    assert {k: int(v) for k, v in got.items()} == {
        f"dead_{i}": dead_count(fires, 150, t) for i, t in enumerate(thresholds)
    }
    for metric in collection.values():
        assert metric.fire_counts.tolist() == fires.tolist()


@needs_torchmetrics
def test_state_dict_reset_clone_and_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    a, b = activations(rng, (40, 2, 6), "BF16"), activations(rng, (25, 2, 6), "BF16")
    metric = NeuronActivityMetric(6, 2, "0.3")
    metric.update(a)
    saved = metric.state_dict()
    assert sorted(saved) == ["fire_counts", "nan_counts", "num_vectors"]
    resumed = NeuronActivityMetric(6, 2, "0.3")
    resumed.load_state_dict({k: v.t().contiguous().t() if v.dim() == 2 else v for k, v in saved.items()})
    resumed.update(b)  # counted in place into states that were loaded not contiguous
    whole = NeuronActivityMetric(6, 2, "0.3")
    whole.update(torch.cat([a, b]))
    assert resumed.fire_counts.tolist() == whole.fire_counts.tolist()
    assert resumed.nan_counts.tolist() == whole.nan_counts.tolist()
    assert int(resumed.num_vectors) == 65
    assert saved["fire_counts"].tolist() == metric.fire_counts.tolist()  # the saved copy is untouched

    copy = pickle.loads(pickle.dumps(resumed))
    assert (
        copy.fire_counts.tolist() == whole.fire_counts.tolist() and copy.compute().tolist() == whole.compute().tolist()
    )
    copy.update(a)
    assert int(copy.num_vectors) == 105 and int(resumed.num_vectors) == 65
    clone = resumed.clone()
    clone.reset()
    assert int(clone.num_vectors) == 0 and int(clone.fire_counts.sum()) == 0 and int(resumed.num_vectors) == 65

    (tmp_path / "metric.pkl").write_bytes(pickle.dumps(resumed))
    code = (
        "import pickle, sys; m = pickle.load(open(sys.argv[1], 'rb')); "
        "print(type(m).__module__, type(m).__qualname__, m.fire_counts.sum().item(), m.compute().tolist())"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "metric.pkl")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    total = int(whole.fire_counts.sum())
    assert done.stdout.strip().split(maxsplit=3) == [
        "neuron_activity.metric",
        "NeuronActivityMetric",
        str(total),
        str(whole.compute().tolist()),
    ]

    metric.persistent(False)
    assert metric.state_dict() == {}
    metric.set_dtype(torch.float64)  # torchmetrics' cast of every state: counting goes on in int64
    metric.update(b)
    assert metric.fire_counts.dtype == metric.num_vectors.dtype == torch.int64
    assert metric.fire_counts.tolist() == whole.fire_counts.tolist() and int(metric.num_vectors) == 65


@needs_torchmetrics
@pytest.mark.parametrize("device", DEVICES)
def test_moved_metrics_count_where_their_states_are(device: str) -> None:
    rng = np.random.default_rng(12)
    x = activations(rng, (30, 5), "F16")
    metric = NeuronActivityMetric(5).to(device)
    metric.update(x.to(device))
    assert {metric.fire_counts.device.type, metric.num_vectors.device.type, metric.dead_mask().device.type} == {device}
    moved = metric.to("cpu")
    moved.update(x)
    fires, _ = reference_counts(torch.cat([x, x]), Fraction(0))
    assert moved.fire_counts.tolist() == fires.tolist()
    if device == "cpu":
        with pytest.raises(BadOption, match="move the metric there"):
            NeuronActivityMetric(5).update(x.to("meta"))


@needs_torchmetrics
def test_tensor_activity_gives_the_same_masks_and_densities() -> None:
    rng = np.random.default_rng(13)
    x = activations(rng, (200, 3, 7), "F32")
    counter, metric = TensorActivity(7, 3), NeuronActivityMetric(7, 3)
    for chunk in torch.split(x, 33):
        counter.update(chunk)
        metric.update(chunk)
    for threshold in (0, 1e-2, "5%", "0.1"):
        assert counter.dead_mask(threshold).tolist() == metric.dead_mask(threshold).tolist()
        assert counter.dead_counts(threshold).tolist() == metric.dead_counts(threshold).tolist()
    assert counter.density().tolist() == metric.density().tolist()
    assert counter.fire_counts.tolist() == metric.fire_counts.tolist()


def test_the_library_takes_thresholds_as_numbers_and_percentages() -> None:
    activity = count_array(np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]] * 50))
    component = activity.components["activations"]
    assert component.dead(0.0).tolist() == component.dead("0").tolist() == [False, True, False, True]
    assert component.dead(0.5).tolist() == component.dead("50%").tolist() == [True, True, False, True]
    rows = activity.rows([1e-6, 0.0, "50%", 0.5])
    assert [(r.threshold.text, r.threshold.value, r.dead) for r in rows] == [
        ("1e-06", Fraction(1, 10**6), 2),
        ("0.0", 0, 2),
        ("50%", Fraction(1, 2), 3),
        ("0.5", Fraction(1, 2), 3),
    ]
    assert [t.value for t in ReportOptions(thresholds=(1e-5, "0", 0.0)).thresholds] == [Fraction(1, 100_000), 0]
    assert (
        ReportOptions.parse(fail_above="5%").fail_above == ReportOptions(fail_above=0.05).fail_above == Fraction(1, 20)
    )
    for bad in ("150%", 1.5, True, "nan"):
        with pytest.raises(BadOption):
            component.dead(bad)


def test_fail_above_takes_a_percentage_as_threshold_does() -> None:
    runner = CliRunner()
    sample = str(Path(__file__).resolve().parent.parent / "sample_data")
    breached = runner.invoke(app, ["scan", sample, "--fail-above", "5%", "-t", "0", "-q"])
    assert breached.exit_code == 1
    assert breached.stderr.splitlines()[0] == (
        "Dead neurons above limit: blocks.0.hook_sae_acts at threshold 0: 2/8 dead (25.00% > 5.00%)"
    )
    assert runner.invoke(app, ["scan", sample, "--fail-above", "25%", "-t", "0", "-q"]).exit_code == 0
    refused = runner.invoke(app, ["scan", sample, "--fail-above", "150%"])
    assert (refused.exit_code, refused.stderr) == (2, "Error: --fail-above '150%' is not a portion between 0 and 1\n")
