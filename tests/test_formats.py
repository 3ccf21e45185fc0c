"""qviz.formats against torch's own dtypes (an independent implementation of the same rounding), golden
values from the format definitions, and brute-force nearest-value search where torch has no dtype."""

import math

import pytest
import torch

from qviz import formats as F

TORCH_FLOATS = ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]
SAME_WIDTH_INT = {8: torch.int8, 16: torch.int16, 32: torch.int32}


def torch_dtype(name):
    return getattr(torch, F.FORMATS[name].torch_dtype)


def torch_bits(x32, name):
    """Bit patterns torch stores for float32 values cast to the format, as non-negative int64."""
    fmt = F.FORMATS[name]
    stored = x32.to(torch_dtype(name))
    return stored.view(SAME_WIDTH_INT[fmt.bits]).long() & (2**fmt.bits - 1)


def probe_values(name, n=20000, seed=0):
    """float32 values that exercise every rounding path of a format: random magnitudes across (and past)
    the range, subnormals, exact representable values, midpoints (ties) and their float32 neighbours,
    overflow boundaries, zeros of both signs and infinities."""
    fmt = F.FORMATS[name]
    g = torch.Generator().manual_seed(seed)
    lo, hi = fmt.min_exp - fmt.man_bits - 3, fmt.max_exp + 3
    log2 = torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    random = (sign * torch.exp2(log2)).float()
    # representable values and the ties between neighbours, from the decoded codes (not from round_to)
    if fmt.bits <= 16:
        grid = F.representable_values(fmt)
    else:  # fp32: a slice of the grid around 1 and around the smallest normal
        grid = torch.cat([1 + torch.arange(-50, 50) * 2.0**-23, torch.arange(0, 50) * 2.0**-149]).double()
    ties = ((grid[1:] + grid[:-1]) / 2).float()
    neighbours = torch.cat([torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1)])
    top = torch.tensor([fmt.max, fmt.max * (1 + 2.0 ** -(fmt.man_bits + 1)), fmt.max * 2, 3e38])
    special = torch.tensor(
        [0.0, -0.0, math.inf, -math.inf, 2.0**fmt.min_exp, 2.0 ** (fmt.min_exp - fmt.man_bits)]
    )
    return torch.cat([random, grid.float(), ties, neighbours, top, -top, special])


@pytest.mark.parametrize("name", TORCH_FLOATS)
def test_round_to_matches_torch_cast(name):
    x = probe_values(name)
    ours = F.round_to(x, name)
    ref = x.to(torch_dtype(name)).float()
    assert torch.equal(ours, ref), x[(ours != ref)][:5]
    assert torch.equal(torch.signbit(ours), torch.signbit(ref))  # -0.0 stays -0.0


@pytest.mark.parametrize("name", TORCH_FLOATS)
def test_bits_match_torch_view(name):
    x = probe_values(name, seed=1)
    assert torch.equal(F.to_bits(x, name), torch_bits(x, name))


def test_fp32_from_float64_matches_torch():
    g = torch.Generator().manual_seed(2)
    x = torch.exp2(torch.rand(20000, generator=g, dtype=torch.float64) * 300 - 160) * torch.randn(
        20000, generator=g, dtype=torch.float64
    )
    x = torch.cat([x, torch.tensor([3.5e38, -1e39, 1e-46, 7.1e-46, 0.0], dtype=torch.float64)])
    assert torch.equal(F.round_to(x, "fp32"), x.float())
    assert torch.equal(F.to_bits(x, "fp32"), torch_bits(x.float(), "fp32"))


@pytest.mark.parametrize("name", TORCH_FLOATS + ["fp32"])
def test_decode_every_code_matches_torch(name):
    fmt = F.FORMATS[name]
    codes = torch.arange(2**16) if fmt.bits >= 16 else torch.arange(2**fmt.bits)
    if fmt.bits == 32:  # a strided sample of all 2^32 codes, plus the extremes
        codes = torch.cat([torch.arange(0, 2**32, 65537), torch.tensor([2**32 - 1, 0x7F7FFFFF, 1])])
    as_signed = (codes - (codes >= 2 ** (fmt.bits - 1)) * 2**fmt.bits).to(SAME_WIDTH_INT[fmt.bits])
    expected = as_signed.view(torch_dtype(name)).double()
    ours = F.from_bits(codes, name)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(ours), nan)
    assert torch.equal(ours[~nan], expected[~nan])


@pytest.mark.parametrize("name", TORCH_FLOATS)
def test_nan_stays_nan(name):
    x = torch.tensor([math.nan, -math.nan, 1.0])
    assert torch.isnan(F.round_to(x, name)[:2]).all()
    assert torch.isnan(F.from_bits(F.to_bits(x, name), name)[:2]).all()
    assert F.fields(math.nan, name).kind == "nan"


def test_overflow_rules_follow_torch():
    big = torch.tensor([70000.0, 1e6, math.inf])
    assert F.round_to(big, "fp16").tolist() == [math.inf] * 3  # IEEE: overflow to inf
    assert F.round_to(big, "bf16").tolist() == [70144.0, 999424.0, math.inf]  # 8 exponent bits: fits
    assert F.round_to(big, "fp8_e4m3").tolist() == [448.0] * 3  # no inf: saturate, like torch
    assert F.round_to(-big, "fp4_e2m1").tolist() == [-6.0] * 3
    assert F.round_to(torch.tensor([65519.0, 65520.0]), "fp16").tolist() == [65504.0, math.inf]  # tie -> even


@pytest.mark.parametrize(
    "name, count, top",
    [
        ("fp8_e4m3", 253, 448.0),  # 256 codes - 2 NaN; +0 and -0 are one value
        ("fp8_e5m2", 247, 57344.0),  # 256 - 6 NaN - 2 inf - duplicate zero
        ("fp4_e2m1", 15, 6.0),
        ("nf4", 16, 1.0),
        ("int8", 256, 127.0),
        ("uint4", 16, 15.0),
        ("int3", 8, 3.0),
        ("fp16", 2 * (31 * 1024) - 1, 65504.0),
    ],
)
def test_representable_value_counts(name, count, top):
    v = F.representable_values(name)
    assert len(v) == count and v.max().item() == top
    assert torch.all(v[1:] > v[:-1])


def test_fp4_e2m1_values_and_rounding_against_brute_force():
    v = F.representable_values("fp4_e2m1")
    assert v.tolist() == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]
    x = torch.cat([torch.linspace(-8, 8, 4001), (v[1:] + v[:-1]) / 2]).float()
    # oracle: nearest value by exhaustive search; on a tie, the one with the even code (mantissa bit 0)
    codes = torch.arange(16)
    values = F.from_bits(codes, "fp4_e2m1")
    dist = (x.double()[:, None] - values[None, :]).abs()
    best = dist == dist.min(dim=1, keepdim=True).values
    best_even = best & (codes % 2 == 0)
    pick = torch.where(best_even.any(1, keepdim=True), best_even, best).double().argmax(1)
    expected = values[pick].clamp(-6, 6).float()
    assert torch.equal(F.round_to(x, "fp4_e2m1").abs(), expected.abs())


def test_nf4_table_and_rounding():
    v = F.representable_values("nf4")
    assert len(F.NF4_VALUES) == 16 and v[0] == -1 and v[7] == 0 and v[-1] == 1
    assert F.NF4_VALUES[8] == 0.07958029955625534 and F.NF4_VALUES[1] == -0.6961928009986877
    assert all(float(torch.tensor(c, dtype=torch.float32)) == c for c in F.NF4_VALUES)  # float32 constants
    x = torch.linspace(-1.2, 1.2, 2001)
    nearest = v[(x.double()[:, None] - v[None, :]).abs().argmin(1)].float()
    assert torch.equal(F.round_to(x, "nf4"), nearest)
    assert F.fields(0.3, "nf4").mantissa == "1011" and F.fields(0.3, "nf4").kind == "table"


def test_integers():
    x = torch.tensor([-9.0, -8.5, -2.5, -0.5, 0.5, 1.5, 2.5, 7.4, 7.6, 300.0])
    assert F.round_to(x, "int4").tolist() == [-8, -8, -2, -0, 0, 2, 2, 7, 7, 7]
    assert F.round_to(x, "uint4").tolist() == [0, 0, 0, 0, 0, 2, 2, 7, 8, 15]
    assert F.fields(-3, "int4").mantissa == "1101" and F.fields(5, "uint3").bits == "101"
    codes = torch.arange(256)
    assert torch.equal(F.from_bits(codes, "int8"), codes.to(torch.uint8).view(torch.int8).double())


def test_fields_golden():
    f = F.fields(0.1, "bf16")
    assert (f.sign, f.exponent, f.mantissa) == ("0", "01111011", "1001101")
    assert f.stored == 0.10009765625 and f.exponent_value == -4 and f.significand == 1.6015625
    assert f.kind == "normal" and f.error == pytest.approx(0.10009765625 - 0.1)
    assert F.fields(-2.0, "fp32").bits == "1" + "10000000" + "0" * 23
    sub = F.fields(2.0**-9, "fp8_e4m3")  # smallest E4M3 subnormal: 2^(1-7) * 1/8
    assert (sub.bits, sub.kind, sub.exponent_value, sub.significand) == ("00000001", "subnormal", -6, 0.125)
    assert F.fields(500, "fp8_e4m3").bits == "01111110" and F.fields(1e6, "fp16").kind == "inf"
    assert F.fields(-0.0, "fp16").bits == "1" + "0" * 15 and F.fields(-0.0, "fp16").kind == "zero"
    assert F.fields(0.1, "bf16").explain() == "+1 × 2^-4 × 1.6015625 = 0.10009765625"


@pytest.mark.parametrize("name", TORCH_FLOATS + ["fp32"])
def test_range_matches_torch_finfo(name):
    info, r = torch.finfo(torch_dtype(name)), F.range_and_spacing(name)
    assert (r.max, r.min_normal, r.eps) == (info.max, info.tiny, info.eps)
    assert r.min_subnormal == F.from_bits(1, name).item()


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int8", "nf4"])
def test_spacing_is_gap_between_neighbours(name):
    v = F.representable_values(name)
    v = v[v >= 0] if name not in ("nf4",) else v
    gaps = F.range_and_spacing(name, at=v[:-1]).spacing
    assert torch.equal(gaps, v[1:] - v[:-1])


def test_bad_input_errors():
    with pytest.raises(ValueError, match="known: fp32, fp16, bf16"):
        F.round_to(torch.ones(2), "fp6")
    with pytest.raises(ValueError, match="no NaN encoding"):
        F.round_to(torch.tensor([math.nan]), "int8")
    with pytest.raises(ValueError, match="no NaN encoding"):
        F.fields(math.nan, "nf4")
    with pytest.raises(ValueError, match="range_and_spacing"):
        F.representable_values("fp32")
    with pytest.raises(ValueError, match="from 2 to 16"):
        F.IntFormat(1)
    with pytest.raises(ValueError, match="codes must be in"):
        F.from_bits([16], "int4")
    assert F.get_format("uint5") == F.IntFormat(5, signed=False)


def test_nb01_checks_accept_right_answers_and_explain_wrong_ones(capsys):
    from qviz.exercises import nb01

    assert nb01.check_model_gb(140) and nb01.check_model_gb(35, bits=4)
    assert nb01.check_model_gb(0.134, n_params=268e6, bits=4)
    assert not nb01.check_model_gb(1120) and "bits, not bytes" in capsys.readouterr().out
    assert not nb01.check_model_gb("a lot") and "give a number" in capsys.readouterr().out
    assert nb01.check_e4m3_max(torch.tensor(448.0)) and not nb01.check_e4m3_max(480)
    assert "NaN" in capsys.readouterr().out
    assert nb01.check_bf16_of_0_1(torch.tensor(0.1).bfloat16()) and not nb01.check_bf16_of_0_1(0.1)
    assert nb01.check_fp16_overflow(torch.tensor(70000.0).half()) and nb01.check_fp16_overflow("inf")
    assert not nb01.check_fp16_overflow(65504) and not nb01.check_fp16_overflow(None)
