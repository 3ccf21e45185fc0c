"""AWQ figures: the data functions return what the figures claim, and every figure has a title and axis titles."""

import numpy as np
import pytest
import torch
from figure_checks import assert_readable

from qviz.awq_scale import mean_abs
from qviz.quant import QuantSpec
from qviz.viz import awq as viz


def _layer(seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(32, 128, generator=gen) * 0.05
    X = torch.randn(512, 128, generator=gen)
    X[:, [5, 77]] *= 30.0
    return W, X


def _titled(fig):
    assert_readable(fig)
    return True


def test_channels_marks_the_top_activations():
    W, X = _layer()
    W[:, 9] *= 50  # the largest weight column is not a salient channel
    data = viz.awq_channels_data(mean_abs(X), W, salient=0.02)
    assert data["k"] == 3 and data["salient"].sum() == 3
    assert data["salient"][[5, 77]].all() and not data["salient"][9]
    assert data["weight"].argmax() == 9
    assert _titled(viz.awq_channels_figure(data, name="toy"))
    with pytest.raises(ValueError):
        viz.awq_channels_data(mean_abs(X), W.T)


def test_alpha_loss_curves_are_relative_to_rtn():
    group = dict(layer=2, prev_op="input_layernorm", linears=("q", "k"), alphas=[0.0, 0.5], losses=[4.0, 1.0],
                 alpha=0.5)  # fmt: skip
    data = viz.alpha_loss_data([group, {**group, "layer": 3}], layer=2)
    (curve,) = data["curves"]
    assert curve["loss"].tolist() == [1.0, 0.25] and curve["best"] == 0.25 and curve["alpha"] == 0.5
    assert _titled(viz.alpha_loss_figure(data))
    with pytest.raises(ValueError):
        viz.alpha_loss_data([group], layer=7)


def test_clip_curve_search_beats_every_uniform_ratio():
    W, X = _layer()
    W[0, 3] = 2.0
    H = 2 * X.T @ X / X.shape[0]
    spec = QuantSpec(bits=3, symmetric=False, group_size=32)
    data = viz.clip_curve_data(W, H, spec)
    assert data["ratios"][0] == 1.0 and len(data["errors"]) == len(data["ratios"])
    assert data["searched_error"] <= data["errors"].min() * (1 + 1e-6)
    assert _titled(viz.clip_curve_figure(data))


def test_layer_loss_means_per_layer():
    rows = [dict(layer=0, output_rel_error=0.1, rtn_output_rel_error=0.3),
            dict(layer=0, output_rel_error=0.3, rtn_output_rel_error=0.5),
            dict(layer=1, output_rel_error=0.2, rtn_output_rel_error=0.2)]  # fmt: skip
    gptq = [dict(layer=0, output_rel_error=0.15), dict(layer=1, output_rel_error=0.1)]
    data = viz.awq_layer_loss_data(rows, gptq)
    assert np.allclose(data["awq"], [0.2, 0.2]) and np.allclose(data["rtn"], [0.4, 0.2])
    assert np.allclose(data["gptq"], [0.15, 0.1])
    fig = viz.awq_layer_loss_figure(data)
    assert _titled(fig) and len(fig.data) == 3
    with pytest.raises(ValueError):
        viz.awq_layer_loss_data(gptq)
