"""Properties of quantize / dequantize / fake_quantize over dtypes, shapes, value ranges (extremes and
subnormals included), specs and user-supplied qparams: every call either raises ValueError or returns finite
values within half a step of the input (values the grid covers) or on the nearer end of the grid (values it
clips); never NaN, never a silently wrapped or clamped qparam."""

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qviz.quant import QuantizedTensor, QuantSpec, dequantize, fake_quantize, quantize  # noqa: E402

FAST = settings(max_examples=100, deadline=None, derandomize=True)
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
F32 = torch.finfo(torch.float32)


@st.composite
def specs(draw, clipping=True):
    symmetric = draw(st.booleans())
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    mse_clip = clipping and draw(st.sampled_from([False, False, False, True]))  # its search is slow
    return QuantSpec(
        bits=draw(st.integers(2, 16)),
        symmetric=symmetric,
        granularity=granularity,
        group_size=draw(st.sampled_from([1, 2, 4])) if granularity == "group" else None,
        restricted_range=symmetric and draw(st.booleans()),
        clip_ratio=1.0 if mse_clip or not clipping else draw(st.sampled_from([1.0, 1.0, 0.75, 0.5])),
        mse_clip=mse_clip,
    )


def values(dtype):
    """Any finite value of `dtype`: hypothesis favours 0, ±largest, ±smallest normal and subnormals."""
    fi = torch.finfo(dtype)
    width = {torch.float16: 16, torch.float64: 64}.get(dtype, 32)  # bfloat16 values drawn as float32
    return st.floats(-fi.max, fi.max, width=width, allow_nan=False, allow_infinity=False)


@st.composite
def tensors(draw, spec):
    dtype = draw(st.sampled_from(DTYPES))
    rows = draw(st.integers(1, 3))
    cols = (spec.group_size or 1) * draw(st.integers(1, 4))
    shape = draw(st.sampled_from([(rows, cols), (cols,), (2, rows, cols)]))
    flat = draw(st.lists(values(dtype), min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(flat, dtype=torch.float64).to(dtype).reshape(shape)


def rows_of(t, spec):
    """t viewed as (rows, n_groups, group_len), the layout of the qparams."""
    t = t.double()
    if spec.granularity == "tensor":
        return t.reshape(1, 1, -1)
    t = t.reshape(-1, t.shape[-1])
    return t.reshape(t.shape[0], -1, spec.group_size or t.shape[-1])


def slack(w, w_hat, dtype):
    """Rounding allowed on top of half a step: w rounded to float32, where qviz computes, the quotient
    w / scale and the product (q - z) * scale each rounded once there, then w_hat rounded once to `dtype`
    (half a unit in its last place, subnormals included)."""
    compute = torch.finfo(torch.float32)
    out = torch.finfo(dtype)
    big = w.abs() + w_hat.abs()
    return 2 * compute.eps * big + compute.tiny * compute.eps + out.eps * w_hat.abs() + out.tiny * out.eps


def assert_honest(w, spec, qt, w_hat, clipping_allowed):
    """The defining properties of a quantized tensor, checked in float64."""
    assert w_hat.dtype == w.dtype and w_hat.shape == w.shape
    assert torch.isfinite(w_hat).all(), "non-finite result"
    assert qt.codes.dtype == torch.int32 and qt.zero_point.dtype == torch.int32
    assert qt.codes.min() >= spec.qmin and qt.codes.max() <= spec.qmax
    assert torch.isfinite(qt.scale).all() and (qt.scale > 0).all()
    assert qt.zero_point.min() >= spec.qmin and qt.zero_point.max() <= spec.qmax
    if spec.symmetric:
        assert (qt.zero_point == 0).all()
    s = qt.scale.double().unsqueeze(-1)
    z = qt.zero_point.double().unsqueeze(-1)
    x, x_hat = rows_of(w, spec), rows_of(w_hat, spec)
    bottom, top = (spec.qmin - z) * s, (spec.qmax - z) * s  # the grid's end values
    err = (x_hat - x).abs()
    tol = slack(x, x_hat, w.dtype)
    covered = (x >= bottom - s / 2 - tol) & (x <= top + s / 2 + tol)
    assert (err[covered] <= (s / 2).expand_as(x)[covered] + tol[covered]).all(), "more than half a step"
    if not clipping_allowed:
        assert covered.all(), "the chosen grid does not cover the tensor"
    nearest_end = torch.where(x < bottom, bottom, top).expand_as(x)
    clipped = ~covered
    assert ((x_hat - nearest_end).abs()[clipped] <= tol[clipped]).all(), "clipped, but not to the end code"


@FAST
@given(data=st.data())
def test_quantize_with_chosen_qparams(data):
    spec = data.draw(specs())
    w = data.draw(tensors(spec))
    try:
        qt = quantize(w, spec)
    except ValueError as err:  # the one refusal for finite input: float64 beyond float32's range
        assert w.dtype == torch.float64 and "beyond float32's range" in str(err), err
        return
    try:
        w_hat = dequantize(qt)
    except ValueError as err:  # the grid's end code lies past the dtype's largest value
        assert "overflow" in str(err), err
        with pytest.raises(ValueError, match="overflow"):
            fake_quantize(w, spec)
        return
    assert torch.equal(fake_quantize(w, spec), w_hat)
    clipping = spec.mse_clip or spec.clip_ratio < 1
    assert_honest(w, spec, qt, w_hat, clipping_allowed=clipping)


def qparam_values():
    """Scales a user might pass: ordinary, extreme, subnormal, zero, negative, infinite, NaN."""
    return st.one_of(
        st.floats(1e-3, 1e3),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e-45, 3e38, 1e39]),
    )


@FAST
@given(data=st.data())
def test_quantize_with_user_qparams(data):
    spec = data.draw(specs(clipping=False))
    w = data.draw(tensors(spec))
    rows = 1 if spec.granularity == "tensor" else math.prod(w.shape[:-1])
    n_groups = 1 if spec.granularity != "group" else w.shape[-1] // spec.group_size
    n = rows * n_groups
    scale = torch.tensor(data.draw(st.lists(qparam_values(), min_size=n, max_size=n))).reshape(rows, n_groups)
    zero_point = torch.tensor(
        data.draw(st.lists(st.integers(spec.qmin - 300, spec.qmax + 300), min_size=n, max_size=n))
    ).reshape(rows, n_groups)
    if data.draw(st.booleans()):  # mostly valid zero points, so that the results get checked too
        zero_point = zero_point.clamp(spec.qmin, spec.qmax) * (not spec.symmetric)
    s32 = scale.float()
    valid = bool(
        (torch.isfinite(s32) & (s32 > 0)).all()
        and zero_point.min() >= spec.qmin
        and zero_point.max() <= spec.qmax
        and (not spec.symmetric or (zero_point == 0).all())
    )
    try:
        qt = quantize(w, spec, scale, zero_point)
        w_hat = fake_quantize(w, spec, scale, zero_point)
    except ValueError as err:
        assert not valid or "overflow" in str(err) or "beyond float32's range" in str(err), err
        return
    assert valid, "invalid qparams were accepted"
    assert torch.equal(qt.scale, s32) and torch.equal(qt.zero_point, zero_point.int())  # stored as given
    assert torch.equal(dequantize(qt), w_hat)
    assert_honest(w, spec, qt, w_hat, clipping_allowed=True)


@FAST
@given(data=st.data())
def test_dequantize_any_quantized_tensor(data):
    """dequantize either refuses a QuantizedTensor (codes or zero points outside the code range, a scale that
    is not positive and finite) or returns (q - z) * scale as computed exactly in float64, rounded to the
    dtype (one rounding in float32 in between for the narrow dtypes)."""
    spec = data.draw(specs(clipping=False))
    dtype = data.draw(st.sampled_from(DTYPES))
    rows, cols = data.draw(st.integers(1, 3)), (spec.group_size or 1) * data.draw(st.integers(1, 3))
    n_rows = 1 if spec.granularity == "tensor" else rows
    n_groups = cols // spec.group_size if spec.granularity == "group" else 1
    ints = lambda lo, hi, n: st.lists(st.integers(lo, hi), min_size=n, max_size=n)  # noqa: E731
    codes = torch.tensor(data.draw(ints(spec.qmin - 2, spec.qmax + 2, rows * cols))).reshape(rows, cols)
    zero_point = torch.tensor(data.draw(ints(spec.qmin - 2, spec.qmax + 2, n_rows * n_groups)))
    zero_point = zero_point.reshape(n_rows, n_groups) * (not spec.symmetric or data.draw(st.booleans()))
    scale = torch.tensor(
        data.draw(st.lists(qparam_values(), min_size=zero_point.numel(), max_size=zero_point.numel()))
    )
    qt = QuantizedTensor(codes.int(), scale.float().reshape(zero_point.shape), zero_point.int(), spec, dtype)
    valid = bool(
        (torch.isfinite(qt.scale) & (qt.scale > 0)).all()
        and spec.qmin <= codes.min() <= codes.max() <= spec.qmax
        and spec.qmin <= zero_point.min() <= zero_point.max() <= spec.qmax
        and (not spec.symmetric or (zero_point == 0).all())
    )
    try:
        w_hat = dequantize(qt)
    except ValueError as err:
        assert not valid or "overflow" in str(err), err
        return
    assert valid, "an invalid QuantizedTensor was dequantized"
    assert torch.isfinite(w_hat).all() and w_hat.dtype == dtype
    exact = rows_of(codes, spec) - qt.zero_point.double().unsqueeze(-1)
    exact = (exact * qt.scale.double().unsqueeze(-1)).reshape(codes.shape)
    assert ((w_hat.double() - exact).abs() <= slack(exact, exact, dtype)).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_the_largest_values_of_every_dtype(dtype, symmetric):
    """±largest finite value: codes and scales stay finite (the asymmetric range max - min overflows any dtype
    unless divided first); dequantizing either fits the dtype or says that it does not. Float64's largest
    values lie beyond float32, where qviz computes: refused."""
    big = torch.finfo(dtype).max
    w = torch.tensor([[-big, 0.0, big / 3, big]], dtype=dtype)
    spec = QuantSpec(bits=4, symmetric=symmetric)
    if dtype == torch.float64:
        with pytest.raises(ValueError, match="beyond float32's range"):
            quantize(w, spec)
        return
    qt = quantize(w, spec)
    assert torch.isfinite(qt.scale).all() and spec.qmin <= qt.codes.min() <= qt.codes.max() <= spec.qmax
    try:
        w_hat = dequantize(qt)
    except ValueError as err:
        assert f"overflow {dtype}" in str(err)
        return
    assert_honest(w, spec, qt, w_hat, clipping_allowed=False)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_asymmetric_range_wider_than_float32(bits):
    """The issue's example: asymmetric quantization of ±3e38 gave all-NaN results (max - min = inf). At 2 bits
    the rounded zero point (1.5 -> 2) puts code 0 at -4e38, past float32: refused, not NaN."""
    w = torch.tensor([[-3e38, -1e38, 0.0, 2e38, 3e38]])
    spec = QuantSpec(bits=bits, symmetric=False)
    qt = quantize(w, spec)
    if bits == 2:
        with pytest.raises(ValueError, match=r"overflow torch.float32 .* reach ±4e\+38"):
            dequantize(qt)
        return
    w_hat = dequantize(qt)
    assert torch.equal(fake_quantize(w, spec), w_hat)
    assert_honest(w, spec, qt, w_hat, clipping_allowed=False)


def test_float64_beyond_float32_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="beyond float32's range .* divide the tensor"):
        quantize(torch.tensor([-1e300, 0.0, 1e300], dtype=torch.float64), QuantSpec(bits=4))
    # tiny float64 values: no underflow to NaN or 0/0
    w = torch.tensor([[1e-300, -3e-310, 0.0]], dtype=torch.float64)
    qt = quantize(w, QuantSpec(bits=8, symmetric=False))
    assert_honest(w, qt.spec, qt, dequantize(qt), clipping_allowed=False)


def test_grid_past_the_dtype_is_refused():
    """The symmetric full-range grid puts code -8 at -absmax·8/7.5: past float16's largest value."""
    w = torch.tensor([-65504.0, 0.0, 65504.0], dtype=torch.float16)
    with pytest.raises(ValueError, match=r"overflow torch.float16 \(largest 65504\).*w.float\(\)"):
        fake_quantize(w, QuantSpec(bits=4, granularity="tensor"))
    assert torch.isfinite(fake_quantize(w.float(), QuantSpec(bits=4, granularity="tensor"))).all()
