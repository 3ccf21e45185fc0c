import pytest
import torch

from qviz.awq_scale import alpha_curve, group_output_error, output_mse
from qviz.quant import QuantSpec
from qviz.widgets.awq import AWQGroupExplorer

SPEC = QuantSpec(bits=4, symmetric=False, group_size=32)


def _layer(seed=0, out_features=48, in_features=128, tokens=96, outliers=(3, 77)):
    """W (out, in) and X (tokens, in) with a few input channels whose activations are 30× larger."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_features, in_features, generator=g)
    X = torch.randn(tokens, in_features, generator=g)
    X[:, list(outliers)] *= 30
    return W, X


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
