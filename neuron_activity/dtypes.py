"""Element types nact reads, and the exact rule that says which raw bit patterns fire.

Every comparison is made on raw bits viewed as unsigned integers, never by converting the
threshold to the tensor's dtype (which rounds it: 1e-5 in bf16 is 1.00136e-5). For a float
format, positive values are ordered like their bit patterns, so ``x > t`` (for ``t >= 0``)
holds exactly when ``bits(r) < bits(x) <= bits(+inf)``, where ``r`` is the largest value of
the format that is ``<= t``; negative values and NaNs have larger patterns and fall out.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, TypeGuard

import numpy as np

from .decimals import as_fraction as as_fraction
from .decimals import decimal_text as decimal_text
from .decimals import (
    parse_decimal as parse_decimal,  # the "x as x" imports: names moved elsewhere, still importable here
)

if TYPE_CHECKING:
    import torch

UNSIGNED_VIEW: dict[int, type] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
TORCH_SIGNED: dict[int, str] = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}  # torch has few unsigned types


def signed_bits(tensor: torch.Tensor) -> torch.Tensor:
    """A torch tensor's raw bits: the same memory viewed as signed integers of its item size."""
    import torch  # loaded already: the caller holds a tensor (this module never loads torch itself)

    signed: torch.dtype = getattr(torch, TORCH_SIGNED[tensor.element_size()])
    return tensor.view(signed)


def is_tensor(value: object) -> TypeGuard[torch.Tensor]:
    """Whether ``value`` is a torch tensor, asked without importing torch: a process that never
    imported torch holds none."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: sign, exponent and mantissa bits."""

    name: str
    itemsize: int
    exponent_bits: int
    mantissa_bits: int
    has_infinity: bool = True  # F8_E4M3 (the "fn" variant) has none: S.1111.111 is NaN

    @property
    def sign_bit(self) -> int:
        return 1 << (8 * self.itemsize - 1)

    @property
    def max_bits(self) -> int:
        """Pattern of the largest non-NaN value: +inf, or the largest finite value without one."""
        all_ones_exponent = ((1 << self.exponent_bits) - 1) << self.mantissa_bits
        if self.has_infinity:
            return all_ones_exponent
        return all_ones_exponent | ((1 << self.mantissa_bits) - 2)

    def value(self, bits: int) -> Fraction | float:
        """The exact value of a non-negative, non-NaN pattern (``0 <= bits <= max_bits``)."""
        if self.has_infinity and bits == self.max_bits:
            return math.inf
        exponent = bits >> self.mantissa_bits
        mantissa = bits & ((1 << self.mantissa_bits) - 1)
        bias = (1 << (self.exponent_bits - 1)) - 1
        if exponent == 0:
            return mantissa * Fraction(2) ** (1 - bias - self.mantissa_bits)
        significand = (1 << self.mantissa_bits) | mantissa
        return significand * Fraction(2) ** (exponent - bias - self.mantissa_bits)

    def largest_at_most(self, t: Fraction) -> int:
        """Pattern of the largest non-negative value ``<= t`` (``t >= 0``)."""
        lo, hi = 0, self.max_bits  # value(lo) <= t always holds
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.value(mid) <= t:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def smallest_at_least(self, t: Fraction) -> int:
        """Pattern of the smallest non-negative value ``>= t``, or ``max_bits + 1`` if none."""
        lo, hi = 0, self.max_bits + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.value(mid) >= t:
                hi = mid
            else:
                lo = mid + 1
        return lo


# safetensors dtype names; the same names are used for every format nact reads.
FLOAT_FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("F64", 8, 11, 52),
        FloatFormat("F32", 4, 8, 23),
        FloatFormat("F16", 2, 5, 10),
        FloatFormat("BF16", 2, 8, 7),
        FloatFormat("F8_E4M3", 1, 4, 3, has_infinity=False),
        FloatFormat("F8_E5M2", 1, 5, 2),
    )
}

INTEGER_FORMATS: dict[str, type] = {
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "U8": np.uint8,
    "U16": np.uint16,
    "U32": np.uint32,
    "U64": np.uint64,
    "BOOL": np.bool_,
}

ITEMSIZE: dict[str, int] = {
    **{name: f.itemsize for name, f in FLOAT_FORMATS.items()},
    **{name: np.dtype(t).itemsize for name, t in INTEGER_FORMATS.items()},
}

# numpy dtypes of the formats numpy holds natively, for readers of numpy-native files.
NUMPY_NAMES: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    **{np.dtype(t).name: name for name, t in INTEGER_FORMATS.items()},
}

# Arrow's names of the float types of SAELens caches' values.
ARROW_NAMES = {"double": "F64", "float": "F32", "halffloat": "F16"}

# torch dtypes (without the "torch." prefix) nact reads, for torch.save files and tensors.
TORCH_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "bool": "BOOL",
}


@dataclass(frozen=True)
class FireRule:
    """Which raw bit patterns of one dtype fire, and which are NaN.

    ``fire_ranges`` are inclusive ranges of the unsigned integer that has the element's bits.
    An element is NaN when its bits without the sign bit exceed ``nan_above`` (floats only).
    """

    dtype: str
    fire_above: Fraction
    fire_ranges: tuple[tuple[int, int], ...]
    nan_above: int | None

    @property
    def unsigned(self) -> type:
        return UNSIGNED_VIEW[ITEMSIZE[self.dtype]]

    @property
    def bits(self) -> int:
        return 8 * ITEMSIZE[self.dtype]

    @property
    def magnitude_mask(self) -> int:
        """Every bit but the sign: ``(x & magnitude_mask) > nan_above`` is the NaN test."""
        return (1 << (self.bits - 1)) - 1

    def signed_fire_ranges(self) -> tuple[tuple[int, int], ...]:
        """``fire_ranges`` on the bits viewed as signed integers (for backends without uints)."""
        half, full = 1 << (self.bits - 1), 1 << self.bits
        out: list[tuple[int, int]] = []
        for a, b in self.fire_ranges:
            if a < half <= b:
                out += [(a, half - 1), (half - full, b - full)]
            elif a >= half:
                out.append((a - full, b - full))
            else:
                out.append((a, b))
        return tuple(out)


def fire_rule(dtype: str, fire_above: Fraction) -> FireRule:
    """The exact rule for ``x > fire_above`` on elements of ``dtype``."""
    if dtype in FLOAT_FORMATS:
        f = FLOAT_FORMATS[dtype]
        sign = f.sign_bit
        if fire_above >= 0:
            r = f.largest_at_most(fire_above)
            fires: tuple[tuple[int, int], ...] = ((r + 1, f.max_bits),) if r < f.max_bits else ()
        else:
            # Every non-negative value (and -0) fires, and negatives with |x| < |fire_above|.
            s = f.smallest_at_least(-fire_above)
            fires = ((0, f.max_bits), (sign, sign + s - 1))
        return FireRule(dtype, fire_above, fires, f.max_bits)
    if dtype in INTEGER_FORMATS:
        info = np.iinfo(np.uint8) if dtype == "BOOL" else np.iinfo(INTEGER_FORMATS[dtype])
        lowest_firing = max(math.floor(fire_above) + 1, int(info.min))
        bits = 8 * ITEMSIZE[dtype]
        if lowest_firing > info.max:
            ranges: tuple[tuple[int, int], ...] = ()
        elif lowest_firing >= 0:
            ranges = ((lowest_firing, int(info.max)),)
        else:  # a negative bound on a signed type: negatives wrap to the top half
            ranges = ((0, int(info.max)), (lowest_firing + (1 << bits), (1 << bits) - 1))
        return FireRule(dtype, fire_above, ranges, None)
    raise KeyError(dtype)


FLOAT_INPUTS = ("F32", "BF16", "F16", "F64")  # the float formats an SAE encodes (to_float32 reads)


def to_float32(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Rows of raw bits (the dtype's unsigned view) as float32, as the libraries cast their input."""
    if dtype == "F32":
        return bits.view(np.float32)
    if dtype == "BF16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return bits.view(np.float16).astype(np.float32)
    if dtype == "F64":
        return bits.view(np.float64).astype(np.float32)
    raise KeyError(dtype)


MOMENT_KINDS = {"F64": "d", "F32": "f", "F16": "h", "BF16": "b"}  # the formats the C kernel sums (see _kernels.c)


@functools.lru_cache(maxsize=8)
def _byte_values(f: FloatFormat) -> np.ndarray:
    """The float64 value of every pattern of a one-byte float format (NaN where it is NaN)."""
    magnitude = np.arange(256) & 0x7F
    values = np.array([float(f.value(b)) if b <= f.max_bits else math.nan for b in magnitude.tolist()])
    return np.where(np.arange(256) >= 0x80, -values, values)


def to_float64(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Rows of raw bits (the dtype's unsigned view) as float64, exactly: every format nact reads."""
    if dtype in ("F32", "BF16", "F16"):
        return to_float32(bits, dtype).astype(np.float64)
    if dtype == "F64":
        return bits.view(np.float64)
    if dtype in FLOAT_FORMATS:  # one-byte floats: a table of their 256 values
        values: np.ndarray = _byte_values(FLOAT_FORMATS[dtype])[bits]
        return values
    return bits.view(np.uint8 if dtype == "BOOL" else INTEGER_FORMATS[dtype]).astype(np.float64)
