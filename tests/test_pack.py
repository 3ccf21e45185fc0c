"""Bit packing: golden words written out by hand, exact round trips, and bad inputs."""

import doctest

import pytest
import torch

import qviz.pack
from qviz.pack import (
    pack_awq,
    pack_bits,
    pack_compressed_tensors,
    pack_gptq,
    unpack_awq,
    unpack_bits,
    unpack_compressed_tensors,
    unpack_gptq,
)
from qviz.quant import QuantizedTensor, QuantSpec, dequantize, quantize


def u32(t: torch.Tensor) -> list[int]:
    """int32 words as the unsigned numbers a reader writes in hex."""
    return [x & 0xFFFFFFFF for x in t.flatten().tolist()]


def codes_qt(codes: list[list[int]], bits=4, symmetric=False) -> QuantizedTensor:
    """A QuantizedTensor with given codes, one group per row, scale 1 and zero point 1 (or 0)."""
    c = torch.tensor(codes, dtype=torch.int32)
    spec = QuantSpec(bits=bits, symmetric=symmetric)
    zp = torch.full((c.shape[0], 1), 0 if symmetric else 1, dtype=torch.int32)
    return QuantizedTensor(c, torch.ones(c.shape[0], 1), zp, spec)


def test_doctests():
    assert doctest.testmod(qviz.pack).failed == 0


# --- golden words -------------------------------------------------------------------------------------------


def test_pack_bits_golden_4bit():
    assert u32(pack_bits(torch.tensor([1, 2, 3, 4, 5, 6, 7, 8]), 4)) == [0x87654321]
    assert u32(pack_bits(torch.tensor([15] * 8), 4)) == [0xFFFFFFFF]


def test_pack_bits_golden_2_and_8bit():
    assert u32(pack_bits(torch.tensor([0x12, 0x34, 0x56, 0x78]), 8)) == [0x78563412]
    assert u32(pack_bits(torch.tensor([1, 2, 3, 0] * 4), 2)) == [0b00111001 * 0x01010101]


def test_pack_bits_golden_3bit_straddles_words():
    # 32 codes -> 3 words. Code 10 (value 7) sits in bits 31..30 of word 0 and bit 0 of word 1; code 21 in
    # bit 31 of word 1 and bits 1..0 of word 2.
    v = torch.zeros(32, dtype=torch.int64)
    v[10], v[21] = 7, 7
    assert u32(pack_bits(v, 3)) == [0xC0000000, 0x80000001, 0x00000003]
    v = torch.arange(32) % 8
    assert u32(pack_bits(v, 3)) == u32(torch.tensor(_stream_words(v.tolist(), 3), dtype=torch.int64))


def _stream_words(values, bits):
    """An independent oracle: concatenate the codes as one big integer, little end first, and cut it."""
    big = sum(v << (i * bits) for i, v in enumerate(values))
    n_words = -(-len(values) * bits // 32)
    return [(big >> (32 * i)) & 0xFFFFFFFF for i in range(n_words)]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_bits_matches_big_integer_oracle(bits):
    g = torch.Generator().manual_seed(bits)
    v = torch.randint(0, 2**bits, (100,), generator=g)
    assert u32(pack_bits(v, bits)) == _stream_words(v.tolist(), bits)


def test_gptq_golden_packs_along_k_with_zero_minus_one():
    # W (N=8, K=8): row n holds codes n, n, ..., so column k of qweight's word n is 0x nnnnnnnn.
    qt = codes_qt([[n] * 8 for n in range(8)])
    t = pack_gptq(qt)
    assert t["qweight"].shape == (1, 8)
    assert u32(t["qweight"]) == [n * 0x11111111 for n in range(8)]
    assert u32(t["qzeros"]) == [0x00000000]  # zero point 1 stored as 1 - 1 = 0 for every column
    assert t["g_idx"].tolist() == [0] * 8 and t["scales"].dtype == torch.float16


def test_gptq_zero_point_zero_wraps():
    qt = codes_qt([[0] * 8] * 8)
    qt = QuantizedTensor(qt.codes, qt.scale, torch.zeros_like(qt.zero_point), qt.spec)
    with pytest.warns(UserWarning, match="zero point of 0"):
        t = pack_gptq(qt)
    assert u32(t["qzeros"]) == [0xFFFFFFFF]
    assert unpack_gptq(t, 4, symmetric=False).zero_point.eq(0).all()


def test_awq_golden_nibble_order():
    # One row of K, N=8 columns with codes 0..7: nibble i holds column (0, 2, 4, 6, 1, 3, 5, 7)[i].
    qt = codes_qt([[j] for j in range(8)])  # W is (N=8, K=1)
    t = pack_awq(qt)
    assert t["qweight"].shape == (1, 1)
    assert u32(t["qweight"]) == [0x75316420]
    assert u32(t["qzeros"]) == [0x11111111]  # raw zero points, no -1


def test_compressed_tensors_golden_signed_offset():
    # Symmetric codes -8..7 are stored as c + 8 = 0..15, packed along K.
    qt = codes_qt([list(range(-8, 0)), list(range(0, 8))], symmetric=True)
    t = pack_compressed_tensors(qt)
    assert u32(t["weight_packed"]) == [0x76543210, 0xFEDCBA98]
    assert t["weight_shape"].tolist() == [2, 8] and "weight_zero_point" not in t


# --- round trips --------------------------------------------------------------------------------------------

SPECS = [
    pytest.param(QuantSpec(bits=b, symmetric=s, group_size=g), id=f"b{b}-{'sym' if s else 'asym'}-g{g}")
    for b in (2, 3, 4, 8)
    for s in (True, False)
    for g in (None, 32)
]


def _qt(spec, shape=(64, 128), seed=0):
    g = torch.Generator().manual_seed(seed)
    return quantize(torch.randn(shape, generator=g), spec)


def _assert_same(a: QuantizedTensor, b: QuantizedTensor):
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.zero_point.expand_as(b.zero_point), b.zero_point)
    assert torch.equal(a.scale.half().float().expand_as(b.scale), b.scale)  # layouts store fp16 scales
    assert a.spec.bits == b.spec.bits and a.spec.symmetric == b.spec.symmetric


@pytest.mark.parametrize("spec", SPECS)
def test_gptq_round_trip(spec):
    qt = _qt(spec)
    back = unpack_gptq(pack_gptq(qt), spec.bits, spec.symmetric)
    g_idx = back.g_idx
    _assert_same(qt, back)
    assert g_idx is None and back.spec.group_size == spec.group_size


@pytest.mark.parametrize("spec", SPECS)
def test_compressed_tensors_round_trip(spec):
    qt = _qt(spec, shape=(40, 96))  # 40 rows: 3-bit zero points do not fill whole words
    _assert_same(qt, unpack_compressed_tensors(pack_compressed_tensors(qt), spec.bits, spec.symmetric))


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("group_size", [None, 32])
def test_awq_round_trip(symmetric, group_size):
    qt = _qt(QuantSpec(bits=4, symmetric=symmetric, group_size=group_size))
    _assert_same(qt, unpack_awq(pack_awq(qt), symmetric))


def test_tensor_granularity_is_stored_per_row():
    qt = _qt(QuantSpec(bits=4, granularity="tensor"))
    back = unpack_gptq(pack_gptq(qt), 4, True)
    assert back.scale.shape == (64, 1)
    assert torch.equal(
        dequantize(back),
        dequantize(QuantizedTensor(qt.codes, qt.scale.half().float(), qt.zero_point, qt.spec)),
    )


def test_gptq_act_order_g_idx_round_trip():
    plain = _qt(QuantSpec(bits=4, symmetric=False, group_size=32))
    g_idx = (torch.randperm(128, generator=torch.Generator().manual_seed(1)) // 32).int()
    qt = QuantizedTensor(plain.codes, plain.scale, plain.zero_point, plain.spec, plain.dtype, g_idx)
    back = unpack_gptq(pack_gptq(qt), 4, False)
    assert torch.equal(back.g_idx, g_idx)
    expected = (qt.codes - qt.zero_point[:, g_idx.long()]) * qt.scale.half().float()[:, g_idx.long()]
    assert torch.equal(dequantize(back), expected.half())  # dtype: fp16 by default
    for pack in (pack_compressed_tensors, pack_awq):  # layouts with contiguous groups only
        with pytest.raises(ValueError, match="g_idx"):
            pack(qt)


def test_unpack_bits_round_trip_any_dim():
    v = torch.randint(0, 8, (3, 64, 5))
    assert torch.equal(unpack_bits(pack_bits(v, 3, dim=1), 3, 64, dim=1), v)


# --- bad inputs ---------------------------------------------------------------------------------------------


def test_codes_out_of_range():
    with pytest.raises(ValueError, match=r"values in \[0, 15\]"):
        pack_bits(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match=r"values in \[0, 15\]"):
        pack_bits(torch.tensor([-1]), 4)
    bad = QuantizedTensor(
        torch.full((8, 8), 9, dtype=torch.int32),
        torch.ones(8, 1),
        torch.zeros(8, 1, dtype=torch.int32),
        QuantSpec(bits=4),
    )
    with pytest.raises(ValueError, match=r"codes must lie in \[-8, 7\]"):
        pack_gptq(bad)


def test_shapes_not_divisible():
    with pytest.raises(ValueError, match="divisible by 8"):
        pack_gptq(_qt(QuantSpec(bits=4), shape=(8, 12)))
    with pytest.raises(ValueError, match="divisible by 32"):
        pack_gptq(_qt(QuantSpec(bits=3), shape=(32, 48)))
    with pytest.raises(ValueError, match="divisible by 8"):
        pack_awq(_qt(QuantSpec(bits=4), shape=(12, 8)))
    with pytest.raises(ValueError, match="need 2 words"):
        unpack_bits(torch.zeros(3, dtype=torch.int32), 4, 16)


def test_unsupported_bit_widths():
    with pytest.raises(ValueError, match=r"awq layout stores \(4,\)-bit codes"):
        pack_awq(_qt(QuantSpec(bits=8)))
    with pytest.raises(ValueError, match="gptq layout stores"):
        pack_gptq(_qt(QuantSpec(bits=5)))
    with pytest.raises(ValueError, match="1- to 8-bit"):
        pack_bits(torch.tensor([1]), 16)
    with pytest.raises(ValueError, match="integer tensor"):
        pack_bits(torch.tensor([1.0]), 4)


def test_symmetric_flag_must_match_zero_points():
    t = pack_gptq(_qt(QuantSpec(bits=4, symmetric=False)))
    with pytest.raises(ValueError, match="not all 8"):
        unpack_gptq(t, 4, symmetric=True)


@pytest.mark.parametrize(
    "pack", [pack_gptq, pack_awq, pack_compressed_tensors], ids=["gptq", "awq", "compressed-tensors"]
)
def test_zero_points_outside_the_code_range_are_refused_not_wrapped(pack):
    """A zero point of 300 for 4-bit codes: masked to 4 bits (GPTQ's zero - 1) or packed as garbage before."""
    qt = _qt(QuantSpec(bits=4, symmetric=False, group_size=32))
    bad = QuantizedTensor(qt.codes, qt.scale, torch.full_like(qt.zero_point, 300), qt.spec)
    with pytest.raises(ValueError, match=r"zero_point must lie in the code range \[0, 15\] .* \[300, 300\]"):
        pack(bad)


@pytest.mark.parametrize("scale", [1e5, 1e-9], ids=["past-max", "below-subnormal"])
@pytest.mark.parametrize(
    "pack", [pack_gptq, pack_awq, pack_compressed_tensors], ids=["gptq", "awq", "compressed-tensors"]
)
def test_scales_that_do_not_fit_float16_are_refused(pack, scale):
    """Stored in float16, a scale of 1e5 became inf and one of 1e-9 became 0: every weight of its group lost."""
    qt = _qt(QuantSpec(bits=4, symmetric=False, group_size=32))
    big = QuantizedTensor(qt.codes, torch.full_like(qt.scale, scale), qt.zero_point, qt.spec)
    with pytest.raises(ValueError, match=r"do not fit torch.float16 .* scale_dtype=torch.float32"):
        pack(big)
    if pack is pack_compressed_tensors:  # float32 keeps them
        back = unpack_compressed_tensors(pack(big, torch.float32), 4, False)
        assert torch.equal(back.scale, big.scale)


@pytest.mark.parametrize(
    "pack, unpack, drop, message",
    [
        (pack_gptq, lambda t: unpack_gptq(t, 4, False), "scales", r"GPTQ needs .* missing \['scales'\]"),
        (pack_awq, lambda t: unpack_awq(t), "qzeros", r"AWQ GEMM needs .* missing \['qzeros'\]"),
        (pack_compressed_tensors, lambda t: unpack_compressed_tensors(t, 4, False), "weight_zero_point",
         r"compressed-tensors \(asymmetric\) needs .* missing \['weight_zero_point'\]"),
    ],
    ids=["gptq", "awq", "compressed-tensors"],
)  # fmt: skip
def test_missing_tensors_are_named(pack, unpack, drop, message):
    tensors = pack(_qt(QuantSpec(bits=4, symmetric=False, group_size=32)))
    del tensors[drop]
    with pytest.raises(ValueError, match=message):
        unpack(tensors)


def test_tensors_that_disagree_are_refused():
    tensors = pack_compressed_tensors(_qt(QuantSpec(bits=4, group_size=32)))
    lying = {**tensors, "weight_shape": torch.tensor([32, 128])}  # the weight is 64 x 128
    with pytest.raises(ValueError, match="weight_shape says 32 output rows, but weight_packed holds 64"):
        unpack_compressed_tensors(lying, 4, True)
    short = {**tensors, "weight_scale": tensors["weight_scale"][:10]}
    with pytest.raises(ValueError, match=r"scale must have shape \(64, 4\) .* got \(10, 4\)"):
        unpack_compressed_tensors(short, 4, True)
    gptq = pack_gptq(_qt(QuantSpec(bits=4, group_size=32)))
    with pytest.raises(ValueError, match="scale must be positive and finite"):
        unpack_gptq({**gptq, "scales": gptq["scales"] * 0}, 4, True)
