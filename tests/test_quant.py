import math

import pytest
import torch

from qviz.quant import (
    QuantSpec,
    bits_per_weight,
    check_quantized,
    choose_qparams,
    dequantize,
    fake_quantize,
    max_abs_error,
    mse,
    quantize,
    sqnr_db,
    storage_bytes,
)

SPECS = [
    QuantSpec(bits=b, symmetric=sym, granularity=gran, group_size=gs, restricted_range=restricted)
    for b in (2, 3, 4, 8)
    for sym, restricted in ((True, False), (True, True), (False, False))
    for gran, gs in (("tensor", None), ("channel", None), ("group", 16))
]


def spec_id(spec):
    return spec.label.replace(" ", "-")


# --- golden values -------------------------------------------------------------------------------------------


def test_golden_symmetric_int4_per_tensor_full_range():
    # absmax 7.5 spread over all 16 codes: scale = 2·7.5 / 15 = 1; -7.5 -> -8 and 3.5 -> 4 (halves to even)
    w = torch.tensor([-7.5, 0.0, 3.5, 1.5, 7.5])
    qt = quantize(w, QuantSpec(bits=4, symmetric=True, granularity="tensor", group_size=None))
    assert qt.scale.item() == 1.0
    assert qt.codes.tolist() == [-8, 0, 4, 2, 7]  # +7.5 -> 8 is clamped to qmax 7: an error of half a step
    assert qt.zero_point.item() == 0
    assert dequantize(qt).tolist() == [-8.0, 0.0, 4.0, 2.0, 7.0]


def test_golden_symmetric_int4_per_tensor_restricted():
    w = torch.tensor([-1.4, 0.0, 0.7, 0.3])
    spec = QuantSpec(bits=4, symmetric=True, granularity="tensor", restricted_range=True)
    qt = quantize(w, spec)
    assert qt.codes.tolist() == [-7, 0, 4, 2]  # 0.7/0.2 = 3.5 -> 4 (round half to even), 0.3/0.2 = 1.5 -> 2
    assert qt.scale.item() == pytest.approx(0.2)
    assert qt.zero_point.item() == 0
    assert dequantize(qt).tolist() == pytest.approx([-1.4, 0.0, 0.8, 0.4])
    assert spec.label == "INT4 sym±7 per-tensor"


def test_restricted_range_is_symmetric_only():
    with pytest.raises(ValueError, match="symmetric grids only"):
        QuantSpec(bits=4, symmetric=False, restricted_range=True)
    with pytest.raises(ValueError, match="restricted_range"):
        QuantSpec(bits=4, restricted_range="yes")


def test_golden_asymmetric_int2_per_channel():
    # Row 0: range [-1, 2] -> scale 1, zero_point 1; row 1: range [0, 6] (widened to include 0) -> scale 2, zp 0
    w = torch.tensor([[-1.0, 0.0, 0.9, 2.0], [0.0, 1.1, 3.2, 6.0]])
    qt = quantize(w, QuantSpec(bits=2, symmetric=False, granularity="channel", group_size=None))
    assert qt.scale.flatten().tolist() == pytest.approx([1.0, 2.0])
    assert qt.zero_point.flatten().tolist() == [1, 0]
    assert qt.codes.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert torch.equal(dequantize(qt), torch.tensor([[-1.0, 0.0, 1.0, 2.0], [0.0, 2.0, 4.0, 6.0]]))


def test_golden_int8_per_group_shapes():
    w = torch.arange(24, dtype=torch.float32).reshape(2, 12) - 5
    spec = QuantSpec(bits=8, symmetric=True, granularity="group", group_size=4, restricted_range=True)
    scale, zero_point = choose_qparams(w, spec)
    assert scale.shape == zero_point.shape == (2, 3)
    # group [-5,-4,-3,-2] has absmax 5 -> scale 5/127
    assert scale[0, 0].item() == pytest.approx(5 / 127)
    assert quantize(w, spec).codes[0, :4].tolist() == [-127, -102, -76, -51]


def test_clip_ratio_clips_the_outlier():
    w = torch.tensor([-1.0, -0.5, 0.0, 0.5, 10.0])
    spec = QuantSpec(bits=4, symmetric=True, granularity="tensor", group_size=None, clip_ratio=0.5)
    qt = quantize(w, spec)
    assert qt.scale.item() == pytest.approx(5.0 / 7.5)
    assert qt.codes.tolist()[-1] == 7  # 10 / (5/7.5) = 15 is clipped to qmax


def test_mse_clip_never_worse_than_no_clip():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    w[:, 0] *= 20  # outliers make clipping worthwhile
    for sym in (True, False):
        plain = QuantSpec(bits=3, symmetric=sym, group_size=32)
        searched = QuantSpec(bits=3, symmetric=sym, group_size=32, mse_clip=True)
        assert mse(w, fake_quantize(w, searched)) < mse(w, fake_quantize(w, plain))


# --- round trips and properties ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_values_on_the_grid_round_trip_exactly(spec):
    torch.manual_seed(1)
    w = torch.randn(8, 32)
    qt = quantize(w, spec)
    w_hat = dequantize(qt)
    assert torch.equal(fake_quantize(w, spec), w_hat)
    # w_hat lies on the grid: quantizing it with the same qparams gives back the same codes, exactly
    assert torch.equal(quantize(w_hat, spec, qt.scale, qt.zero_point).codes, qt.codes)
    if spec.restricted_range:  # the absmax element lands on ±qmax, so w_hat even picks the same grid again
        assert torch.equal(fake_quantize(w_hat, spec), w_hat)
    assert qt.codes.min() >= spec.qmin and qt.codes.max() <= spec.qmax


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_error_within_half_a_step(spec):
    torch.manual_seed(2)
    w = torch.randn(8, 32)
    qt = quantize(w, spec)
    err = (dequantize(qt) - w).abs().reshape(qt.scale.shape[0], qt.scale.shape[1], -1)
    assert (err <= qt.scale.unsqueeze(-1) / 2 + 1e-6).all()


def test_each_bit_adds_about_six_db():
    torch.manual_seed(3)
    w = torch.rand(256, 256) * 2 - 1  # uniform: the textbook 6.02 dB/bit case
    sq = [
        sqnr_db(w, fake_quantize(w, QuantSpec(bits=b, granularity="tensor", group_size=None)))
        for b in (6, 7, 8, 9, 10)
    ]
    steps = [b - a for a, b in zip(sq, sq[1:])]
    assert all(5.9 < s < 6.2 for s in steps), steps  # 20·log10(2) = 6.02 dB as levels double


def test_finer_granularity_has_smaller_error_on_outlier_rows():
    torch.manual_seed(4)
    w = torch.randn(64, 256)
    w[::8] *= 30  # outlier rows
    errs = [
        mse(w, fake_quantize(w, QuantSpec(bits=4, granularity=g, group_size=gs)))
        for g, gs in (("tensor", None), ("channel", None), ("group", 32))
    ]
    assert errs[0] > errs[1] > errs[2]


def test_dtype_and_device_preserved():
    w = torch.randn(4, 16, dtype=torch.bfloat16)
    out = fake_quantize(w, QuantSpec(bits=4, group_size=8))
    assert out.dtype == torch.bfloat16 and out.shape == w.shape
    assert dequantize(quantize(w, QuantSpec(bits=4, group_size=8))).dtype == torch.bfloat16


def test_all_zero_group_is_exact():
    w = torch.zeros(2, 8)
    w[1] = torch.linspace(-1, 1, 8)
    for sym in (True, False):
        out = fake_quantize(w, QuantSpec(bits=4, symmetric=sym, group_size=8))
        assert torch.equal(out[0], torch.zeros(8))


def test_reuse_given_qparams():
    w = torch.randn(4, 16)
    spec = QuantSpec(bits=4, symmetric=False, group_size=8)
    scale, zero_point = choose_qparams(w, spec)
    assert torch.equal(quantize(w, spec, scale, zero_point).codes, quantize(w, spec).codes)
    with pytest.raises(ValueError, match="both scale and zero_point"):
        quantize(w, spec, scale=scale)


# --- metrics and storage -------------------------------------------------------------------------------------


def test_metrics():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.5, 2.0])
    assert mse(a, b) == pytest.approx((0.25 + 1) / 3)
    assert max_abs_error(a, b) == pytest.approx(1.0)
    assert sqnr_db(a, b) == pytest.approx(10 * math.log10(14 / 1.25))
    assert sqnr_db(a, a) == math.inf


def test_bits_per_weight():
    shape = (4096, 4096)
    assert bits_per_weight(QuantSpec(bits=4, symmetric=True, group_size=128), shape) == pytest.approx(4.125)
    assert bits_per_weight(QuantSpec(bits=4, symmetric=False, group_size=128), shape) == pytest.approx(
        4 + 20 / 128
    )
    assert bits_per_weight(QuantSpec(bits=8, granularity="channel", group_size=None), shape) == pytest.approx(
        8 + 16 / 4096
    )
    assert storage_bytes(QuantSpec(bits=8, granularity="tensor", group_size=None), (1000,)) == pytest.approx(
        1002
    )


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bits=0), "bits must be an integer from 2 to 16, got 0"),
        (dict(bits=33), "bits must be an integer from 2 to 16, got 33"),
        (dict(bits=4.0), "bits must be an integer"),
        (dict(granularity="row"), "granularity must be one of"),
        (dict(granularity="group", group_size=0), "positive integer group_size"),
        (dict(granularity="channel", group_size=64), "group_size applies only to granularity='group'"),
        (dict(clip_ratio=0.0), r"clip_ratio must be in \(0, 1\]"),
        (dict(clip_ratio=1.5), r"clip_ratio must be in \(0, 1\]"),
        (dict(mse_clip=True, clip_ratio=0.9), "mse_clip searches the clip ratio itself"),
        (dict(symmetric="False"), "symmetric must be True or False, got 'False'"),
        (dict(mse_clip=1), "mse_clip must be True or False"),
    ],
    ids=[
        "bits-0",
        "bits-33",
        "bits-float",
        "granularity",
        "group-0",
        "group-size-without-group",
        "clip-0",
        "clip-1.5",
        "mse-and-clip",
        "symmetric-string",
        "mse-clip-int",
    ],
)
def test_bad_spec(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)


@pytest.mark.parametrize(
    "w, message",
    [
        (
            torch.ones(2, 128).index_put_((torch.tensor(1), torch.tensor(5)), torch.tensor(float("nan"))),
            "1 NaN and 0 Inf values",
        ),
        (
            torch.ones(2, 128).index_put_((torch.tensor(0), torch.tensor(9)), torch.tensor(float("-inf"))),
            "0 NaN and 1 Inf values",
        ),
        (torch.empty(0, 8), "empty tensor"),
        (torch.tensor([1, 2, 3]), "unsupported dtype torch.int64"),
        (
            torch.randn(4, 576),
            r"group_size 128 does not divide the row length 576; .* \[16, 32, 64, 96, 192\]",
        ),
    ],
    ids=["nan", "inf", "empty", "int-dtype", "group-does-not-divide"],
)
def test_bad_tensor(w, message):
    with pytest.raises(ValueError, match=message):
        quantize(w, QuantSpec(bits=4, group_size=128))
    with pytest.raises(ValueError, match=message):
        fake_quantize(w, QuantSpec(bits=4, group_size=128))


W = torch.tensor([[1.0, 2.0, -3.0, 0.5]])
ASYM = QuantSpec(bits=4, symmetric=False)


@pytest.mark.parametrize(
    "spec, scale, zero_point, message",
    [
        (ASYM, torch.tensor([[0.0]]), torch.tensor([[8]]), r"scale must be positive and finite .* \(e.g. 0.0\)"),
        (ASYM, torch.tensor([[-1.0]]), torch.tensor([[8]]), r"scale must be positive and finite .* \(e.g. -1.0\)"),
        (ASYM, torch.tensor([[float("nan")]]), torch.tensor([[8]]), "scale must be positive and finite"),
        (ASYM, torch.tensor([[1e39]], dtype=torch.float64), torch.tensor([[8]]), r"in float32.*\(e.g. inf\)"),
        (ASYM, torch.tensor([[1.0]]), torch.tensor([[300]]), r"zero_point must lie in the code range \[0, 15\]"),
        (ASYM, torch.tensor([[1.0]]), torch.tensor([[-1]]), r"code range \[0, 15\] of INT4 asym per-channel"),
        (QuantSpec(bits=4), torch.tensor([[1.0]]), torch.tensor([[3]]), "symmetric grid .* has zero_point 0"),
        (ASYM, torch.tensor([[1.0]]), torch.tensor([[8.0]]), r"integer tensor .* zero_point.round\(\)"),
        (ASYM, torch.tensor([1.0]), torch.tensor([8]), r"shape \(1, 1\) \(rows, groups\) .* got \(1,\)"),
        (QuantSpec(bits=4, symmetric=False, group_size=2), torch.ones(1, 1), torch.ones(1, 1, dtype=torch.int32),
         r"scale must be a tensor of shape \(1, 2\)"),
        (ASYM, 1.0, 8, "scale must be a tensor of shape"),
        (ASYM, torch.tensor([[1.0]]), None, "both scale and zero_point"),
    ],
    ids=["zero", "negative", "nan", "beyond-float32", "zp-300", "zp-negative", "sym-zp", "float-zp",
         "shape", "group-shape", "not-tensors", "scale-only"],
)  # fmt: skip
def test_user_qparams_are_checked(spec, scale, zero_point, message):
    """Scales and zero points passed in are refused unless quantize could have chosen them: no division by 0,
    no NaN codes, no zero point outside the codes (300 would be stored in uint8 as 44)."""
    with pytest.raises(ValueError, match=message):
        quantize(W, spec, scale, zero_point)
    with pytest.raises(ValueError, match=message):
        fake_quantize(W, spec, scale, zero_point)


def test_user_qparams_clip_values_outside_the_grid():
    """A valid grid that does not reach a value clips it to the end code: the defined behaviour, as clip_ratio."""
    qt = quantize(W, ASYM, torch.tensor([[0.1]]), torch.tensor([[8]]))
    assert qt.codes.tolist() == [[15, 15, 0, 13]]
    assert dequantize(qt)[0].tolist() == pytest.approx([0.7, 0.7, -0.8, 0.5])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(codes=torch.full((1, 4), 16, dtype=torch.int32)), r"codes must lie in \[0, 15\]"),
        (dict(codes=torch.ones(1, 4)), "codes must be an integer tensor"),
        (dict(scale=torch.zeros(1, 1)), "scale must be positive and finite"),
        (dict(scale=torch.ones(2, 1)), r"scale must have shape \(1, 1\) for codes of shape \(1, 4\)"),
        (dict(zero_point=torch.tensor([[300]])), r"zero_point must lie in the code range \[0, 15\]"),
        (dict(g_idx=torch.tensor([0, 0, 1, 1])), r"g_idx values must lie in \[0, 0\]"),
        (dict(dtype=torch.int8), "dtype must be one of"),
    ],
    ids=["codes-range", "float-codes", "zero-scale", "scale-shape", "zp-300", "g_idx", "dtype"],
)
def test_dequantize_refuses_what_quantize_cannot_make(change, message):
    from dataclasses import replace

    qt = replace(quantize(W, ASYM), **change)
    with pytest.raises(ValueError, match=message):
        dequantize(qt)
    with pytest.raises(ValueError, match="^q_proj: " + message):
        check_quantized(qt, "q_proj")


def test_float64_beyond_float32_is_refused():
    """qviz computes in float32 (GPTQ's column loop too, so their codes agree bit for bit): float64 values past
    its range became inf, and the codes NaN. Values within it are quantized as their float32 copies are."""
    w = torch.tensor([[1.0, 1e-300, -1.0]], dtype=torch.float64)
    spec = QuantSpec(bits=16, restricted_range=True)
    w_hat = dequantize(quantize(w, spec))
    assert w_hat.dtype == torch.float64
    assert torch.equal(w_hat, dequantize(quantize(w.float(), spec)).double())
    for f in (quantize, fake_quantize):
        with pytest.raises(ValueError, match=r"float64 values up to 1e\+300 lie beyond float32's range"):
            f(w * 1e300, spec)
    with pytest.raises(ValueError, match="beyond float32's range"):  # with given qparams too
        quantize(w * 1e300, spec, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int32))


def test_tiny_groups_get_a_normal_scale():
    """A group of subnormal values would get a subnormal scale (a few bits of precision, codes off the grid):
    its scale is float32's smallest normal number instead, and every value stays within half a step."""
    w = torch.tensor([[1e-40, -3e-41, 0.0, 5e-45]])
    for spec in (QuantSpec(bits=16), QuantSpec(bits=4, symmetric=False)):
        qt = quantize(w, spec)
        assert qt.scale.item() == torch.finfo(torch.float32).tiny
        assert ((dequantize(qt) - w).abs() <= qt.scale / 2).all()


def test_metrics_and_storage_refuse_shapes_that_would_broadcast():
    w = torch.randn(4, 1)
    for metric in (mse, max_abs_error, sqnr_db):  # (4, 1) - (4,) is a (4, 4) difference
        with pytest.raises(ValueError, match=r"same shape, got \(4, 1\) and \(4,\)"):
            metric(w, w[:, 0])
    for shape in ((4096, -1), (4096, 0), (), (64.0, 64)):
        with pytest.raises(ValueError, match="shape must be a tuple of positive integers"):
            bits_per_weight(QuantSpec(bits=4), shape)
