import pytest
import torch

from qviz.awq import apply_clip, awq_fake_quantize, awq_scale, mean_abs, output_mse
from qviz.quant import QuantSpec, fake_quantize
from qviz.widgets.awq import ALPHAS, AWQGroupExplorer, alpha_curve, group_output_error

SPEC = QuantSpec(bits=4, symmetric=False, group_size=32)


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
    assert len(curve) == len(ALPHAS) and curve[0] == group_output_error(W, X, SPEC, 0.0)
    assert min(curve) < 0.8 * curve[0]


def test_bad_clip_ratio():
    W, X = _layer()
    with pytest.raises(ValueError, match="clip_ratio"):
        group_output_error(W, X, SPEC, 0.5, 1.5)


def test_explorer_updates_figure_in_place():
    W, X = _layer(seed=3)
    explorer = AWQGroupExplorer(W, X, SPEC, name="toy")
    fig = explorer.fig
    explorer.set(alpha=0.3, clip=0.85)
    assert explorer.fig is fig
    want = group_output_error(W, X, SPEC, 0.3, 0.85)
    assert explorer.state["error"] == pytest.approx(want)
    assert explorer.state["rtn"] == pytest.approx(group_output_error(W, X, SPEC, 0.0, 1.0))
    assert fig.data[2].x == (0.3,)
    signal = output_mse(X, W, torch.zeros_like(W))
    assert fig.data[2].y[0] == pytest.approx(want / signal)
    assert explorer.alphas == tuple(i / 10 for i in range(10))
    curve = alpha_curve(W, X, SPEC, 0.85, explorer.alphas)
    assert list(fig.data[1].y) == pytest.approx([v / signal for v in curve])
    with pytest.raises(ValueError, match="n_grid"):
        AWQGroupExplorer(W, X, SPEC, n_grid=1)
    assert "RTN" in explorer.summary.value
