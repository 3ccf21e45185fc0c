"""Number formats: how FP32, FP16, BF16, FP8, FP4, NF4 and b-bit integers store a value.

A binary float with `exp_bits` E, `man_bits` M and `bias` B stores a sign bit s, an exponent field e and a
mantissa field m; it means

    normal     (e > 0):   (-1)^s * 2^(e - B) * (1 + m / 2^M)
    subnormal  (e = 0):   (-1)^s * 2^(1 - B) * (0 + m / 2^M)      (evenly spaced near zero, down to 0)

Formats differ in what the all-ones exponent holds. IEEE-style formats (FP32, FP16, BF16, FP8 E5M2) keep it
for inf (m = 0) and NaN (m != 0). FP8 E4M3 "fn" (finite) keeps only S.1111.111 for NaN and uses the rest as
ordinary values, so its largest value is 2^8 * 1.75 = 448. FP4 E2M1 has no inf and no NaN: 0, 0.5, 1, 1.5,
2, 3, 4, 6 and their negatives.

Rounding (`round_to`) is round-to-nearest, ties to the even mantissa, done here from the definition: find the
value's binade 2^e (never below the smallest normal exponent, which is what makes subnormals evenly spaced),
divide by the step 2^(e - M), round to an integer, multiply back. Past the largest value, IEEE-style formats
give inf; formats without inf saturate to +-max (as torch's float8_e4m3fn cast does, even for inf inputs).

Worked example, 0.1 in BF16 (E8M7, bias 127): 0.1 = 2^-4 * 1.6, step = 2^(-4-7) = 2^-11,
0.1 / 2^-11 = 204.8 -> 205, stored 205 * 2^-11 = 0.10009765625; bits 0 01111011 1001101.

>>> round_to(torch.tensor([0.1, 70000.0]), "bf16").tolist()
[0.10009765625, 70144.0]
>>> fields(0.1, "bf16").bits
'0011110111001101'

NF4 (QLoRA) is not a float at all but a table of 16 values in [-1, 1] (weights are divided by their block's
absmax first), and a b-bit integer is a plain two's complement (signed) or binary (unsigned) number.

NaN: formats with a NaN code keep NaN (its bits are a canonical quiet NaN: positive sign, and the top mantissa
bit set, or all ones for E4M3). Formats without one (E2M1, NF4, integers) raise ValueError on NaN input.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

__all__ = [
    "FloatFormat", "IntFormat", "TableFormat", "FORMATS", "NF4_VALUES", "BitFields", "FormatRange",
    "get_format", "round_to", "to_bits", "from_bits", "fields", "representable_values", "range_and_spacing",
    "spacing",
]  # fmt: skip

# QLoRA's NF4 table (Dettmers et al. 2023, Appendix E; bitsandbytes' published constants), index 0..15.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, `exp_bits` exponent bits, `man_bits` mantissa bits."""

    name: str  # registry name, e.g. "fp8_e4m3"
    exp_bits: int  # E: width of the exponent field
    man_bits: int  # M: width of the mantissa (fraction) field; M + 1 significant bits for normals
    bias: int  # B: stored exponent field minus B is the power of two
    has_inf: bool  # IEEE-style: the all-ones exponent holds inf and NaN; overflow gives inf
    has_nan: bool  # a NaN code exists (E4M3fn: only S.1111.111)
    torch_dtype: str | None = None  # the torch dtype with the same bits, when torch has one

    def __post_init__(self):
        if self.exp_bits < 1 or self.man_bits < 1 or self.exp_bits + self.man_bits > 31:
            raise ValueError(f"exp_bits and man_bits must be >= 1 with exp_bits + man_bits <= 31, got {self}")
        if self.has_inf and not self.has_nan:
            raise ValueError("a format with inf (IEEE-style) also has NaN codes")

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def min_exp(self) -> int:
        """Exponent of the smallest normal binade, 1 - bias (subnormals share it)."""
        return 1 - self.bias

    @property
    def max_exp(self) -> int:
        """Exponent of the largest finite binade."""
        return (2**self.exp_bits - (2 if self.has_inf else 1)) - self.bias

    @property
    def max(self) -> float:
        # E4M3fn loses the all-ones mantissa of the top binade to NaN; E2M1 and IEEE formats lose nothing there.
        top_mantissa = 2**self.man_bits - (2 if self.has_nan and not self.has_inf else 1)
        return math.ldexp(1 + top_mantissa / 2**self.man_bits, self.max_exp)


@dataclass(frozen=True)
class IntFormat:
    """A b-bit integer: signed two's complement [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""

    bits: int  # width, 2..16
    signed: bool = True  # two's complement if True

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise ValueError(f"IntFormat bits must be an integer from 2 to 16, got {self.bits!r}")

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}"

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1


@dataclass(frozen=True)
class TableFormat:
    """A lookup-table format: the code is an index into a sorted tuple of values (NF4)."""

    name: str
    values: tuple  # sorted ascending; len must be 2**bits

    def __post_init__(self):
        n = len(self.values)
        if n < 2 or n & (n - 1) or list(self.values) != sorted(self.values):
            raise ValueError(f"table values must be sorted and 2**bits of them, got {n}")

    @property
    def bits(self) -> int:
        return len(self.values).bit_length() - 1


FORMATS = {
    f.name: f
    for f in (
        FloatFormat("fp32", 8, 23, 127, True, True, "float32"),
        FloatFormat("fp16", 5, 10, 15, True, True, "float16"),
        FloatFormat("bf16", 8, 7, 127, True, True, "bfloat16"),
        FloatFormat("fp8_e4m3", 4, 3, 7, False, True, "float8_e4m3fn"),
        FloatFormat("fp8_e5m2", 5, 2, 15, True, True, "float8_e5m2"),
        FloatFormat("fp4_e2m1", 2, 1, 1, False, False, None),  # torch.float4_e2m1fn_x2 is storage only
        TableFormat("nf4", NF4_VALUES),
        *(IntFormat(b, s) for b in (8, 4) for s in (True, False)),
    )
}
Format = FloatFormat | IntFormat | TableFormat


def get_format(fmt: str | Format) -> Format:
    """A format object from its name ("bf16", "int4", "uint3", ...) or the object itself."""
    if isinstance(fmt, (FloatFormat, IntFormat, TableFormat)):
        return fmt
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    match = re.fullmatch(r"(u?)int(\d+)", fmt) if isinstance(fmt, str) else None
    if match and 2 <= int(match[2]) <= 16:
        return IntFormat(int(match[2]), signed=not match[1])
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)} (or intB / uintB for B in 2..16)")


def _as_float64(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.is_complex():
        raise ValueError("round_to takes real numbers, got a complex tensor")
    return x.to(torch.float64)


def _check_nan(x: torch.Tensor, fmt: Format) -> None:
    if not getattr(fmt, "has_nan", False) and bool(torch.isnan(x).any()):
        raise ValueError(f"{fmt.name} has no NaN encoding; remove NaNs before rounding to it")


def _binade(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) for a > 0, exactly (frexp writes a = f * 2^k with f in [0.5, 1)); very low for 0."""
    return torch.where(a > 0, torch.frexp(a).exponent.to(torch.int64) - 1, -(2**20))


def _table_index(x: torch.Tensor, fmt: TableFormat) -> torch.Tensor:
    """Index of the nearest table value; a tie (x exactly on a midpoint) goes to the smaller value."""
    table = torch.tensor(fmt.values, dtype=torch.float64)
    return torch.searchsorted((table[1:] + table[:-1]) / 2, x.contiguous())


def round_to(x, fmt: str | Format) -> torch.Tensor:
    """Round `x` (tensor or numbers) to the nearest value of `fmt`; returns float32, same shape.

    Ties go to the even mantissa (float), the even integer (int) or the smaller table value (NF4).
    The exact value of `x` is rounded once; note torch casts float64 to fp16/bf16/fp8 through float32
    (a second rounding), so compare with torch from float32 inputs.
    """
    fmt = get_format(fmt)
    x = _as_float64(x)
    _check_nan(x, fmt)
    if isinstance(fmt, IntFormat):
        return torch.round(x).clamp(fmt.qmin, fmt.qmax).float()
    if isinstance(fmt, TableFormat):
        return torch.tensor(fmt.values, dtype=torch.float64)[_table_index(x, fmt)].float()
    a = x.abs()
    e = _binade(a).clamp(min=fmt.min_exp)
    step = torch.exp2((e - fmt.man_bits).to(torch.float64))  # gap between neighbours in this binade
    r = torch.round(a / step) * step  # round half to even on the integer significand
    r = torch.where(r > fmt.max, math.inf if fmt.has_inf else fmt.max, r)
    r = torch.where(torch.isinf(a), math.inf if fmt.has_inf else fmt.max, r)
    return torch.copysign(r, x).where(~torch.isnan(x), math.nan).float()


def to_bits(x, fmt: str | Format) -> torch.Tensor:
    """The bit pattern (as a non-negative int64 code) that stores round_to(x, fmt)."""
    fmt = get_format(fmt)
    if isinstance(fmt, TableFormat):
        x = _as_float64(x)
        _check_nan(x, fmt)
        return _table_index(x, fmt)
    r = round_to(x, fmt).double()
    if isinstance(fmt, IntFormat):
        return r.long() & (2**fmt.bits - 1)
    E, M = fmt.exp_bits, fmt.man_bits
    a = r.abs()
    e = _binade(a).clamp(min=fmt.min_exp)
    normal = a >= 2.0**fmt.min_exp
    significand = a / torch.exp2(e.double()) * 2**M  # 2^M..2^(M+1)-1 for normals, 0..2^M-1 for subnormals
    exp_field = torch.where(normal, e + fmt.bias, 0)
    man_field = (significand - torch.where(normal, 2**M, 0)).long()
    code = (torch.signbit(r).long() << (E + M)) | (exp_field << M) | man_field
    code = torch.where(torch.isinf(r), ((2**E - 1) << M) | (torch.signbit(r).long() << (E + M)), code)
    nan_code = ((2**E - 1) << M) | (1 << (M - 1) if fmt.has_inf else 2**M - 1)
    return torch.where(torch.isnan(r), nan_code, code)


def from_bits(codes, fmt: str | Format) -> torch.Tensor:
    """Decode integer codes (0 .. 2^bits - 1) to their float64 values."""
    fmt = get_format(fmt)
    codes = torch.as_tensor(codes, dtype=torch.int64)
    if bool(((codes < 0) | (codes >= 2**fmt.bits)).any()):
        raise ValueError(f"{fmt.name} codes must be in 0..{2**fmt.bits - 1}")
    if isinstance(fmt, IntFormat):
        return (codes - ((codes >> (fmt.bits - 1)) << fmt.bits) if fmt.signed else codes).double()
    if isinstance(fmt, TableFormat):
        return torch.tensor(fmt.values, dtype=torch.float64)[codes]
    E, M = fmt.exp_bits, fmt.man_bits
    sign = torch.where((codes >> (E + M)) & 1 == 1, -1.0, 1.0).double()
    exp_field, man_field = (codes >> M) & (2**E - 1), codes & (2**M - 1)
    normal = exp_field > 0
    significand = man_field.double() / 2**M + normal.double()
    value = sign * significand * torch.exp2(torch.where(normal, exp_field - fmt.bias, fmt.min_exp).double())
    top = exp_field == 2**E - 1
    if fmt.has_inf:
        value = torch.where(top & (man_field == 0), sign * math.inf, value)
        value = torch.where(top & (man_field != 0), math.nan, value)
    elif fmt.has_nan:
        value = torch.where(top & (man_field == 2**M - 1), math.nan, value)
    return value


@dataclass(frozen=True)
class BitFields:
    """One value as `fmt` stores it: the bit strings and what they mean.

    Floats fill sign / exponent / mantissa. Integers put all their bits (two's complement when signed) in
    `mantissa`, and NF4 its 4-bit table index; their `sign` and `exponent` are "".
    """

    format: str  # format name
    value: float  # the value asked for
    stored: float  # the value the bits hold, round_to(value, fmt)
    code: int  # the bit pattern as an unsigned integer
    sign: str  # sign bit ("0" positive, "1" negative) or ""
    exponent: str  # exponent field bits or ""
    mantissa: str  # mantissa field bits (integer bits, table index bits)
    kind: str  # "normal", "subnormal", "zero", "inf", "nan", "integer" or "table"
    exponent_value: int | None  # the power of two: exponent field - bias (1 - bias for subnormals)
    significand: float | None  # 1.f for normals, 0.f for subnormals

    @property
    def bits(self) -> str:
        return self.sign + self.exponent + self.mantissa

    @property
    def error(self) -> float:
        """Rounding error stored - value (nan when either is not finite)."""
        diff = self.stored - self.value
        return diff if math.isfinite(diff) else math.nan

    def explain(self) -> str:
        """A one-line reading of the bits, e.g. '+1 × 2^-4 × 1.6015625 = 0.10009765625'."""
        if self.kind in ("normal", "subnormal"):
            sign = "-1" if self.sign == "1" else "+1"
            return f"{sign} × 2^{self.exponent_value} × {self.significand!r} = {self.stored!r}"
        if self.kind == "table":
            return f"table[{int(self.mantissa, 2)}] = {self.stored!r}"
        if self.kind == "inf":
            return f"exponent all ones, mantissa 0: {self.stored!r}"
        if self.kind == "nan":
            return f"a NaN code ({self.bits}): not a number"
        return f"{self.kind}: {self.stored!r}"


def fields(value: float, fmt: str | Format) -> BitFields:
    """Split the stored form of one number into its fields. `value` is a Python float (or 0-d tensor)."""
    fmt = get_format(fmt)
    value = float(value)
    code = int(to_bits(torch.tensor(value, dtype=torch.float64), fmt))
    stored = float(from_bits(code, fmt))
    bits = format(code, f"0{fmt.bits}b")
    if not isinstance(fmt, FloatFormat):
        kind = "integer" if isinstance(fmt, IntFormat) else "table"
        return BitFields(fmt.name, value, stored, code, "", "", bits, kind, None, None)
    E, M = fmt.exp_bits, fmt.man_bits
    exp_field, man_field = int(bits[1 : 1 + E], 2), int(bits[1 + E :], 2)
    if math.isnan(stored) or math.isinf(stored):
        kind, exponent_value, significand = ("nan" if math.isnan(stored) else "inf"), None, None
    else:
        kind = "normal" if exp_field > 0 else ("subnormal" if man_field else "zero")
        exponent_value = exp_field - fmt.bias if exp_field > 0 else fmt.min_exp
        significand = (exp_field > 0) + man_field / 2**M
    return BitFields(fmt.name, value, stored, code, bits[0], bits[1 : 1 + E], bits[1 + E :], kind,
                     exponent_value, significand)  # fmt: skip


def representable_values(fmt: str | Format) -> torch.Tensor:
    """Every finite value of a format of at most 16 bits, sorted, float64 (+0 and -0 count once).

    E4M3 has 256 codes - 2 NaNs = 254 finite codes = 253 values; E5M2 256 - 6 NaNs - 2 infs - one
    duplicate zero = 247; E2M1 15; NF4 16; INT8 256.
    """
    fmt = get_format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"{fmt.name} has 2^{fmt.bits} codes; use range_and_spacing() for wide formats")
    v = from_bits(torch.arange(2**fmt.bits), fmt)
    return torch.unique(v[torch.isfinite(v)])  # unique sorts, and -0.0 == 0.0


@dataclass(frozen=True)
class FormatRange:
    """Range and precision of a format. `eps` is the step at 1.0 for integers, the top gap for tables."""

    max: float  # largest finite value
    min_normal: float  # smallest positive normal (floats); smallest positive value otherwise
    min_subnormal: float  # smallest positive value
    eps: float  # machine epsilon: gap between 1.0 and the next value up
    significant_bits: int  # M + 1 for floats; magnitude bits for integers; index bits for tables
    dynamic_range_binades: float  # log2(max / min_subnormal): how many powers of two the format spans
    spacing: torch.Tensor | None = None  # gap to the next value at the magnitudes asked for, if any


def spacing(x, fmt: str | Format) -> torch.Tensor:
    """Gap between neighbouring values of `fmt` around each x (float64; float formats use |x|).

    For a float with |x| in the binade [2^e, 2^(e+1)) the gap is 2^(e - M), and 2^(min_exp - M) below the
    smallest normal (the subnormal step). For integers it is 1; for a table the width of the cell holding x.
    """
    fmt = get_format(fmt)
    x = _as_float64(x)
    if isinstance(fmt, FloatFormat):
        e = _binade(x.abs()).clamp(fmt.min_exp, fmt.max_exp)
        return torch.exp2((e - fmt.man_bits).double())
    if isinstance(fmt, IntFormat):
        return torch.ones_like(x)
    v = torch.tensor(fmt.values, dtype=torch.float64)
    i = (torch.searchsorted(v, x.contiguous(), right=True) - 1).clamp(0, len(v) - 2)
    return v[i + 1] - v[i]


def range_and_spacing(fmt: str | Format, at=None) -> FormatRange:
    """Max, smallest normal and subnormal, machine epsilon, and the spacing at the magnitudes `at`.

    >>> r = range_and_spacing("fp16", at=[1.0, 1000.0])
    >>> r.max, r.min_normal, r.min_subnormal, r.eps, r.spacing.tolist()
    (65504.0, 6.103515625e-05, 5.960464477539063e-08, 0.0009765625, [0.0009765625, 0.5])
    """
    fmt = get_format(fmt)
    gaps = None if at is None else spacing(at, fmt)
    if isinstance(fmt, FloatFormat):
        tiny, smallest = 2.0**fmt.min_exp, 2.0 ** (fmt.min_exp - fmt.man_bits)
        top, eps, sig = fmt.max, 2.0**-fmt.man_bits, fmt.man_bits + 1
    else:
        v = representable_values(fmt)
        top, smallest = float(v.max()), float(v[v > 0].min())
        tiny, eps = smallest, float(spacing(1.0, fmt)) if isinstance(fmt, IntFormat) else float(v[-1] - v[-2])
        sig = fmt.bits - 1 if getattr(fmt, "signed", False) else fmt.bits
    return FormatRange(top, tiny, smallest, eps, sig, math.log2(top / smallest), gaps)
