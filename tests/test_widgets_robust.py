"""Every explorer survives what a learner can hand it or do to it: weights already on the grid (what one gets
after quantizing in place), zero inputs, a 1x1 or oddly sized matrix, and every control moved through every
value. It offers only valid choices or names the problem in its own status line, never raises from a control,
and its figure never shows numbers the controls did not ask for."""

import math

import ipywidgets as W
import pytest
import torch

from qviz.quant import QuantSpec, fake_quantize
from qviz.stats import ChannelStats
from qviz.widgets.awq import AWQGroupExplorer
from qviz.widgets.gptq import GPTQLayerExplorer
from qviz.widgets.model import LayerExplorer
from qviz.widgets.quantization import QuantExplorer


def walk_controls(explorer, controls) -> int:
    """Set every control to every value it offers (sliders: every step), as a learner could; return the count."""
    moves = 0
    for control in controls:
        if isinstance(control, (W.Dropdown, W.ToggleButtons)):
            values = [option[1] if isinstance(option, tuple) else option for option in control.options]
        elif isinstance(control, W.Checkbox):
            values = [not control.value, control.value]
        elif isinstance(control, W.FloatLogSlider):
            values = [
                control.base**e for e in torch.arange(control.min, control.max + 1e-9, control.step).tolist()
            ]
        else:
            values = torch.arange(control.min, control.max + 1e-9, control.step).tolist()
        for value in values:
            control.value = value  # through the observer, as a slider does
            moves += 1
            for trace in explorer.fig.data:
                for v in trace.y or []:
                    assert v is None or math.isfinite(v), (control.description, value, trace.name)
    return moves


def correlated(out=16, inp=64, tokens=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, 4, generator=g) @ torch.randn(4, inp, generator=g) + 0.1 * torch.randn(
        tokens, inp, generator=g
    )
    return torch.randn(out, inp, generator=g), X


def test_gptq_explorer_on_grid_weights_zero_inputs_and_every_control():
    W_, X = correlated()
    H = 2 * X.T @ X / len(X)
    # Weights already rounded (what a learner has after quantizing in place): a finite answer for every control.
    on_grid = fake_quantize(W_, QuantSpec(bits=4, group_size=64))
    ex = GPTQLayerExplorer(on_grid, H, name="on grid")
    assert math.isfinite(ex.state["rtn"]) and "×" in ex.summary.value
    assert walk_controls(ex, ex.controls) > 10
    silent = GPTQLayerExplorer(torch.zeros(16, 64), H, name="zero weights")  # ‖WX‖ = 0: nothing to compare
    assert "output is zero" in silent.summary.value
    zero = GPTQLayerExplorer(W_, torch.zeros(64, 64), name="dead inputs")
    assert "no calibration tokens" in zero.summary.value and "nothing to show" in zero.fig.layout.title.text
    assert list(zero.fig.data[0].y) == [0.0, 0.0]
    odd = GPTQLayerExplorer(torch.randn(1, 1), torch.ones(1, 1), name="1x1")
    assert list(odd.group.options) == ["per-channel"]  # only sizes that divide the row are offered
    walk_controls(odd, odd.controls)


def test_awq_explorer_on_grid_weights_and_zero_inputs():
    W_, X = correlated(inp=64)
    spec = QuantSpec(bits=4, symmetric=False, group_size=32)
    # Codes times a power-of-two step: the asymmetric grid finds itself again, exactly, so RTN's error is 0.
    codes = torch.randint(0, 16, (16, 64), generator=torch.Generator().manual_seed(3)).float()
    codes[:, [0, 32]], codes[:, [1, 33]] = 0.0, 15.0  # every group of 32 spans all codes 0..15
    on_grid = AWQGroupExplorer((codes - 5) * 0.125, X, spec, name="on grid")
    assert on_grid.rtn == 0 and "RTN is exact" in on_grid.summary.value  # no division by zero
    walk_controls(on_grid, (on_grid.alpha, on_grid.clip))
    zero = AWQGroupExplorer(W_, torch.zeros(32, 64), spec, name="zero inputs")
    assert "output is zero" in zero.summary.value
    walk_controls(zero, (zero.alpha, zero.clip))
    with pytest.raises(ValueError, match="does not divide"):
        AWQGroupExplorer(torch.randn(4, 48), torch.randn(8, 48), spec)


@pytest.mark.parametrize("shape", [(1, 1), (3, 48), (96, 128)], ids=["1x1", "3x48", "96x128"])
def test_quant_explorer_offers_only_group_sizes_that_divide(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    ex = QuantExplorer(w, name="w")
    offered = [g for g in ex.granularity.options if g.startswith("group")]
    assert all(shape[1] % int(g.split()[1]) == 0 for g in offered)
    assert walk_controls(ex, (ex.bits, ex.granularity, ex.symmetric, ex.clip)) > 10
    ex_zero = QuantExplorer(torch.zeros(*shape), name="zeros")  # nothing to round: no error, no crash
    assert ex_zero.state["mse"] == 0
    with pytest.raises(ValueError, match="NaN"):
        QuantExplorer(torch.full((2, 2), float("nan")))


def test_layer_explorer_shows_a_non_dividing_group_as_a_problem_not_a_stale_figure():
    weights = {"layers.0.mlp.up_proj": torch.randn(16, 64), "layers.0.mlp.down_proj": torch.randn(8, 96)}
    stats = {
        k: ChannelStats(torch.rand(w.shape[1]) + 0.1, torch.ones(w.shape[1]), 10) for k, w in weights.items()
    }
    ex = LayerExplorer(weights, stats, title="toy")
    ex.set(linear="mlp.down_proj", group=64)  # 96 is not a multiple of 64
    assert "does not divide" in ex.summary.value and "does not divide" in ex.fig.layout.title.text
    assert all(len(trace.y) == 0 for trace in ex.fig.data)  # no figure of another setting
    ex.set(group=32)
    assert "INT4" in ex.fig.layout.title.text and len(ex.fig.data[0].y) == 96
    walk_controls(ex, (ex.layer, ex.linear, ex.bits, ex.group))
