"""The fire rule on raw bits agrees with an exact comparison for every bit pattern."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from reference import TORCH_DTYPES, assert_moments, greater_than

from neuron_activity import count_array
from neuron_activity.counting import make_counter
from neuron_activity.dtypes import FLOAT_FORMATS, fire_rule
from neuron_activity.native import CPU_KERNELS

KERNELS = ["native", "numpy", "torch"]


def counter(kernel: str, rule, width: int):
    if kernel not in (*CPU_KERNELS, "torch"):
        pytest.fail("the C kernel is not built: install with a C compiler (pip install -e .)")
    return make_counter(rule, width, "cpu", kernel)


THRESHOLDS = ["0", "1e-5", "1e-6", "0.1", "1", "-0.5", "-1e-6", "448", "500", "65504", "1e30", "-1e30", "6e-8"]
NARROW = ["F16", "BF16", "F8_E4M3", "F8_E5M2"]


def every_pattern(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """All bit patterns of a narrow dtype as one column, and their float64 values."""
    bits = FLOAT_FORMATS[dtype].itemsize * 8
    unsigned = np.arange(1 << bits, dtype=np.uint64).astype(f"u{bits // 8}")
    signed = torch.from_numpy(unsigned.view(f"i{bits // 8}"))
    values = signed.view(TORCH_DTYPES[dtype]).to(torch.float64).numpy()
    return unsigned.reshape(-1, 1), values


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", NARROW)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_every_bit_pattern_fires_exactly_when_above(kernel: str, dtype: str, threshold: str) -> None:
    bits, values = every_pattern(dtype)
    t = Fraction(threshold)
    for width in (1, 4):  # one column, and the same patterns spread over a few columns
        c = counter(kernel, fire_rule(dtype, t), width)
        c.update(bits.reshape(-1, width))
        result = c.result()
        fire_counts, nan_counts = result["fire_counts"], result["nan_counts"]
        by_column = values.reshape(-1, width)
        assert fire_counts.tolist() == greater_than(by_column, t).sum(axis=0).tolist()
        assert nan_counts.tolist() == np.isnan(by_column).sum(axis=0).tolist()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["F32", "F64"])
def test_wide_floats_at_the_edges_of_a_threshold(kernel: str, dtype: str) -> None:
    np_dtype = np.float32 if dtype == "F32" else np.float64
    for threshold in ["0", "1e-5", "1e-6", "0.1", "-1e-5", "3.4e38"]:
        t = np_dtype(float(threshold))
        near = [np.nextafter(t, np_dtype(-np.inf)), t, np.nextafter(t, np_dtype(np.inf))]
        specials = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45]
        column = np.array(near + specials, dtype=np_dtype).reshape(-1, 1)
        c = count_array(column, fire_above=threshold, kernel=kernel).components["activations"]
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
@pytest.mark.parametrize("kernel", KERNELS)
def test_integer_rules(kernel: str, dtype: str, values: list, fire_above: str, expected: int) -> None:
    np_type = {"I8": np.int8, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_, "I32": np.int32, "U64": np.uint64}
    column = np.array(values, dtype=np_type[dtype]).reshape(-1, 1)
    c = count_array(column, fire_above=fire_above, kernel=kernel).components["activations"]
    assert c.fire_counts.tolist() == [expected]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("dtype", "width", "rows"),
    [
        ("F8_E5M2", 1, 300_000),  # narrow rows folded 1024 at a time; 8-bit counters flushed at 255
        ("F8_E5M2", 2000, 600),
        ("BF16", 1024, 65_545),  # 16-bit counters flushed before 65,535 fires wrap them
    ],
)
def test_counts_past_the_width_of_the_accumulators(kernel: str, dtype: str, width: int, rows: int) -> None:
    one = {"F8_E5M2": 0x3C, "BF16": 0x3F80}[dtype]  # 1.0
    bits = np.full((rows, width), one, dtype=np.uint8 if dtype == "F8_E5M2" else np.uint16)
    bits[::7, 0] = 0
    c = counter(kernel, fire_rule(dtype, Fraction(0)), width)
    c.update(bits)
    fire_counts = c.result()["fire_counts"]
    assert fire_counts[0] == rows - len(range(0, rows, 7))
    assert (fire_counts[1:] == rows).all()


# --- moments (--stats), kept by the same kernels in the same pass ---------------------------------


def stats_counter(kernel: str, rule, width: int, track_last: bool = False):
    if kernel not in (*CPU_KERNELS, "torch"):
        pytest.fail("the C kernel is not built: install with a C compiler (pip install -e .)")
    return make_counter(rule, width, "cpu", kernel, track_last, stats=True)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_every_half_precision_value_is_read_exactly_for_the_moments(kernel: str, dtype: str) -> None:
    bits, values = every_pattern(dtype)
    finite = np.isfinite(values)
    n = finite.sum() // 8 * 8
    c = stats_counter(kernel, fire_rule(dtype, Fraction(0)), 8)
    c.update(np.ascontiguousarray(bits[finite][:n].reshape(-1, 8)))
    assert_moments(c.result(), values[finite][:n].reshape(-1, 8))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["F32", "F64"])
def test_moments_of_wide_floats_with_nan_and_infinities(kernel: str, dtype: str) -> None:
    np_dtype = np.float32 if dtype == "F32" else np.float64
    x = np.random.default_rng(0).standard_normal((300, 6)).astype(np_dtype) * 1e3 + 1e4
    x[0, 1] = np.nan  # the first value of a column: the shift is the first finite one
    x[[5, 6], 2] = np.nan
    x[:, 3] = np.nan
    x[7, 4], x[8, 5] = np.inf, -np.inf
    c = stats_counter(kernel, fire_rule(dtype, Fraction(0)), 6)
    c.update(x.view(f"u{x.itemsize}"))
    got = c.result()
    assert got["value_counts"].tolist() == [300, 299, 298, 0, 300, 300]
    finite = {n: v[:3] for n, v in got.items() if n.startswith("value")}
    assert_moments(finite, x[:, :3].astype(np.float64))
    assert not np.isfinite(got["value_means"][4]) and not np.isfinite(got["value_means"][5])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("dtype", "width", "rows"),
    [
        ("F32", 1024, 300),  # tiles of 128 rows: the moments summed while each tile is in cache
        ("F32", 3, 5000),  # folded 342 rows at a time, and the rows left over
        ("F64", 2000, 70),
        ("BF16", 1024, 65_545),  # tiles inside a flush of the 16-bit counters
        ("F16", 1, 3000),
    ],
)
def test_moments_leave_the_counts_and_last_fired_as_they_were(kernel: str, dtype: str, width: int, rows: int) -> None:
    rng = np.random.default_rng(width)
    values = (rng.standard_normal((rows, width)) * (rng.random((rows, width)) < 0.3)).astype(np.float32)
    values[rng.random((rows, width)) < 0.001] = np.nan
    x = torch.from_numpy(values).to(TORCH_DTYPES[dtype])
    bits = x.view(getattr(torch, {2: "int16", 4: "int32", 8: "int64"}[x.element_size()])).numpy()
    bits = bits.view(f"u{x.element_size()}")
    rule = fire_rule(dtype, Fraction(0))
    plain = make_counter(rule, width, "cpu", kernel, True)
    plain.update(bits, 5)
    both = stats_counter(kernel, rule, width, track_last=True)
    both.update(bits, 5)
    a, b = plain.result(), both.result()
    for name in ("fire_counts", "nan_counts", "last_fired"):
        assert a[name].tolist() == b[name].tolist(), name
    assert_moments(b, x.double().numpy())
