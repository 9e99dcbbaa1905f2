"""The fire rule on raw bits agrees with an exact comparison for every bit pattern."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from reference import TORCH_DTYPES, greater_than

from neuron_activity import count_array
from neuron_activity.counting import NumpyCounter, TorchCounter
from neuron_activity.dtypes import FLOAT_FORMATS, fire_rule

THRESHOLDS = ["0", "1e-5", "1e-6", "0.1", "1", "-0.5", "-1e-6", "448", "500", "65504", "1e30", "-1e30", "6e-8"]
NARROW = ["F16", "BF16", "F8_E4M3", "F8_E5M2"]


def every_pattern(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """All bit patterns of a narrow dtype as one column, and their float64 values."""
    bits = FLOAT_FORMATS[dtype].itemsize * 8
    unsigned = np.arange(1 << bits, dtype=np.uint64).astype(f"u{bits // 8}")
    signed = torch.from_numpy(unsigned.view(f"i{bits // 8}"))
    values = signed.view(TORCH_DTYPES[dtype]).to(torch.float64).numpy()
    return unsigned.reshape(-1, 1), values


@pytest.mark.parametrize("dtype", NARROW)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_every_bit_pattern_fires_exactly_when_above(dtype: str, threshold: str) -> None:
    bits, values = every_pattern(dtype)
    t = Fraction(threshold)
    counter = NumpyCounter(fire_rule(dtype, t), width=1)
    counter.update(bits)
    fire_counts, nan_counts = counter.result()
    assert fire_counts.tolist() == [int(greater_than(values, t).sum())]
    assert nan_counts.tolist() == [int(np.isnan(values).sum())]


@pytest.mark.parametrize("dtype", NARROW)
@pytest.mark.parametrize("threshold", ["0", "1e-5", "-0.5", "65504"])
def test_torch_counter_agrees_on_every_bit_pattern(dtype: str, threshold: str) -> None:
    bits, values = every_pattern(dtype)
    t = Fraction(threshold)
    counter = TorchCounter(fire_rule(dtype, t), width=1, device="cpu")
    counter.update(bits)
    fire_counts, nan_counts = counter.result()
    assert fire_counts.tolist() == [int(greater_than(values, t).sum())]
    assert nan_counts.tolist() == [int(np.isnan(values).sum())]


@pytest.mark.parametrize("dtype", ["F32", "F64"])
def test_wide_floats_at_the_edges_of_a_threshold(dtype: str) -> None:
    np_dtype = np.float32 if dtype == "F32" else np.float64
    for threshold in ["0", "1e-5", "1e-6", "0.1", "-1e-5", "3.4e38"]:
        t = np_dtype(float(threshold))
        near = [np.nextafter(t, np_dtype(-np.inf)), t, np.nextafter(t, np_dtype(np.inf))]
        specials = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45]
        column = np.array(near + specials, dtype=np_dtype).reshape(-1, 1)
        c = count_array(column, fire_above=threshold).components["activations"]
        expected = greater_than(column.astype(np.float64), Fraction(threshold)).sum()
        assert int(c.fire_counts[0]) == int(expected), threshold
        assert int(c.nan_counts[0]) == 2


def test_rounding_the_threshold_to_the_dtype_would_be_wrong() -> None:
    # 1e-5 rounds to 1.00136e-5 in bf16: a bf16 value equal to that is above 1e-5 and fires.
    x = torch.tensor([[1e-5]], dtype=torch.bfloat16)
    assert float(x) > 1e-5
    assert not bool((x > 1e-5).item())  # the naive comparison misses it
    assert count_array(x, fire_above="1e-5").components["activations"].fire_counts.tolist() == [1]


@pytest.mark.parametrize(
    ("dtype", "values", "fire_above", "expected"),
    [
        ("I8", [-128, -3, -2, 0, 5, 127], "-2.5", 4),
        ("I64", [-(2**63), 0, 2**62, 2**63 - 1], "0", 2),
        ("U8", [0, 1, 200, 255], "1", 2),
        ("BOOL", [True, False, True], "0", 2),
        ("I32", [1, 2, 3], "0.5", 3),
        ("U64", [0, 2**64 - 1], "1e30", 0),
    ],
)
def test_integer_rules(dtype: str, values: list, fire_above: str, expected: int) -> None:
    np_type = {"I8": np.int8, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_, "I32": np.int32, "U64": np.uint64}
    column = np.array(values, dtype=np_type[dtype]).reshape(-1, 1)
    c = count_array(column, fire_above=fire_above).components["activations"]
    assert c.fire_counts.tolist() == [expected]
