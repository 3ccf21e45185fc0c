import pytest
import torch
from figure_checks import assert_readable

from qviz.calib.report import output_error
from qviz.gptq import gptq_quantize
from qviz.quant import fake_quantize
from qviz.widgets.gptq import GPTQLayerExplorer


def correlated_layer(out_features=16, in_features=64, tokens=512, seed=0):
    """W and inputs X (tokens, in) with correlated channels of different scales, as real activations."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_features, in_features, generator=g)
    X = torch.randn(tokens, 6, generator=g) @ torch.randn(6, in_features, generator=g)
    X = (X + 0.3 * torch.randn(tokens, in_features, generator=g)) * (
        0.2 + 3 * torch.rand(in_features, generator=g)
    )
    return W, X


def hessian(X):
    return 2 * X.T @ X / X.shape[0]


@pytest.mark.parametrize("kwargs", [dict(), dict(bits=3, group="per-channel", act_order=True, block=16)],
                         ids=["default", "int3-actorder"])  # fmt: skip
def test_widget_state_equals_direct_computation(kwargs):
    W, X = correlated_layer(in_features=128)
    H = hessian(X)
    ex = GPTQLayerExplorer(W, H, name="toy")
    fig = ex.fig
    ex.set(**kwargs)
    assert ex.fig is fig  # updated in place
    spec = ex.spec()
    r = gptq_quantize(W, H, spec, damp=ex.damp.value, block_size=ex.block.value, act_order=ex.act_order.value)
    signal = output_error(
        W, torch.zeros_like(W), H
    )  # the independent way: products with H, not GPTQ's losses
    assert ex.state["gptq"] == pytest.approx(output_error(W, r.Q, H) / signal, rel=1e-5)
    assert ex.state["rtn"] == pytest.approx(output_error(W, fake_quantize(W, spec), H) / signal, rel=1e-6)
    assert list(fig.data[0].y) == [ex.state["rtn"], ex.state["gptq"]]
    assert ex.state["gptq"] < ex.state["rtn"]
    assert spec.label in fig.layout.title.text
    assert_readable(fig)  # bars on a linear axis from zero: 0.38x must look like 0.38x


def test_widget_offers_only_dividing_group_sizes():
    W, X = correlated_layer(in_features=96)
    ex = GPTQLayerExplorer(W, hessian(X))
    assert list(ex.group.options) == ["per-channel", 32]


def test_widget_restores_the_thread_count():
    W, X = correlated_layer()
    threads = torch.get_num_threads()
    ex = GPTQLayerExplorer(W, hessian(X))
    ex.set(bits=3)
    assert torch.get_num_threads() == threads
