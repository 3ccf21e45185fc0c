"""AWQ on one weight (`qviz.awq_scale`): the scale s(α), its search, the FP16-salient experiment and the
loss L(α, r) the explorer draws; checked against plain rounding and direct recomputation."""

import pytest
import torch

from qviz.awq_clip import apply_clip
from qviz.awq_scale import (
    ALPHA_GRID,
    alpha_curve,
    alpha_grid,
    awq_fake_quantize,
    awq_linear,
    awq_scale,
    group_output_error,
    keep_salient_fp16,
    mean_abs,
    output_mse,
)
from qviz.quant import QuantSpec, fake_quantize

SPEC = QuantSpec(bits=4, symmetric=False, group_size=32)


def _outlier_layer(seed=0, out_features=128, in_features=256, tokens=2048):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out_features, in_features, generator=gen) * 0.05
    X = torch.randn(tokens, in_features, generator=gen)
    X[:, [3, 70, 141, 200]] *= 40.0  # a few channels carry large activations, as in real LLMs
    return W, X


@pytest.mark.parametrize("bits", [4, 3], ids=["int4", "int3"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_awq_beats_rtn_on_planted_outliers(bits, symmetric):
    W, X = _outlier_layer()
    spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=64)
    rtn = output_mse(X, W, fake_quantize(W, spec))
    result = awq_linear(W, X, spec)
    assert result.losses[0] == pytest.approx(rtn, rel=1e-6)  # α = 0 is plain rounding
    assert result.rtn_error == pytest.approx(rtn, rel=1e-6)
    assert result.alpha > 0
    assert result.error < 0.7 * rtn
    assert output_mse(X, W, result.W_hat) == pytest.approx(result.error, rel=1e-6)
    assert awq_linear(W, X, spec, clip=False).error == pytest.approx(min(result.losses), rel=1e-6)


def test_awq_scale_is_normalised_and_monotone():
    s_x = torch.tensor([0.01, 0.5, 2.0, 30.0])
    assert torch.equal(awq_scale(s_x, 0.0), torch.ones(4))
    s = awq_scale(s_x, 0.5)
    assert (s.max() * s.min()).item() == pytest.approx(1.0)
    assert torch.all(s[1:] > s[:-1])
    assert torch.isfinite(awq_scale(torch.tensor([0.0, 1.0]), 0.5)).all()  # a dead channel


def test_awq_fake_quantize_undoes_the_scale_exactly_when_on_the_grid():
    """W·s already on the grid: Q(W·s)/s returns W (up to float division)."""
    codes = torch.tensor([[0.0, 1.0, 2.0, 15.0], [3.0, 0.0, 7.0, 15.0]])
    s = torch.tensor([1.0, 2.0, 4.0, 0.5])
    W = codes / s
    spec = QuantSpec(bits=4, symmetric=False, granularity="channel")
    assert torch.allclose(awq_fake_quantize(W, s, spec), W, rtol=1e-6)


def test_keep_salient_fp16_by_activation_wins():
    W, X = _outlier_layer()
    spec = QuantSpec(bits=3, symmetric=False, group_size=64)
    act = keep_salient_fp16(W, X, spec, 0.02)
    assert len(act.channels) == 5 and {3, 70, 141, 200} <= set(act.channels.tolist())  # 2% of 256: 5 kept
    rnd = keep_salient_fp16(W, X, spec, 0.02, by="random")
    assert act.error < 0.3 * act.rtn_error
    assert rnd.error > 0.8 * rnd.rtn_error
    assert torch.equal(act.W_hat[:, 3], W[:, 3])


def _layer(seed=0, out_features=48, in_features=128, tokens=96, outliers=(3, 77)):
    """W (out, in) and X (tokens, in) with a few input channels whose activations are 30× larger."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_features, in_features, generator=g)
    X = torch.randn(tokens, in_features, generator=g)
    X[:, list(outliers)] *= 30
    return W, X


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.95], ids=lambda a: f"alpha={a}")
def test_without_clipping_equals_awq_fake_quantize(alpha):
    W, X = _layer()
    want = output_mse(X, W, awq_fake_quantize(W, awq_scale(mean_abs(X), alpha), SPEC))
    assert group_output_error(W, X, SPEC, alpha) == pytest.approx(want, rel=1e-6)


def test_alpha_zero_is_rtn():
    W, X = _layer()
    assert group_output_error(W, X, SPEC, 0.0, 1.0) == pytest.approx(output_mse(X, W, fake_quantize(W, SPEC)))


def test_clipping_equals_clamp_of_each_group_max():
    W, X = _layer(seed=1)
    alpha, ratio = 0.5, 0.8
    s = awq_scale(mean_abs(X), alpha)
    Ws = W * s
    bound = torch.stack([Ws[:, j : j + 32].abs().amax(1) for j in range(0, 128, 32)], 1) * ratio  # (out, 4)
    clipped = Ws.clone()
    for k, j in enumerate(range(0, 128, 32)):
        b = bound[:, k : k + 1]
        clipped[:, j : j + 32] = torch.maximum(torch.minimum(Ws[:, j : j + 32], b), -b)
    assert torch.equal(apply_clip(Ws, bound), clipped)
    want = output_mse(X, W, fake_quantize(clipped, SPEC) / s)
    assert group_output_error(W, X, SPEC, alpha, ratio) == pytest.approx(want, rel=1e-6)


def test_scaling_beats_rtn_with_outlier_channels():
    W, X = _layer(seed=2)
    curve = alpha_curve(W, X, SPEC)
    assert len(curve) == len(ALPHA_GRID) and curve[0] == group_output_error(W, X, SPEC, 0.0)
    assert min(curve) < 0.8 * curve[0]


def test_bad_clip_ratio():
    W, X = _layer()
    with pytest.raises(ValueError, match="clip_ratio"):
        group_output_error(W, X, SPEC, 0.5, 1.5)


def test_alpha_grid():
    assert ALPHA_GRID == alpha_grid(20) and ALPHA_GRID[1] == 0.05 and len(ALPHA_GRID) == 20
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="n_grid"):
            alpha_grid(bad)


def test_bad_arguments_are_refused():
    W, X = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="alpha"):
        awq_scale(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="by must be"):
        keep_salient_fp16(W, X, QuantSpec(bits=4), by="largest")
    with pytest.raises(ValueError, match="X must be"):
        awq_linear(W, torch.randn(10, 6), QuantSpec(bits=4))
    with pytest.raises(ValueError, match="at least one token"):
        awq_linear(torch.randn(4, 64), torch.empty(0, 64), QuantSpec(bits=4))
