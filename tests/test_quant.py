import math

import pytest
import torch

from qviz.quant import (
    QuantSpec,
    bits_per_weight,
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
