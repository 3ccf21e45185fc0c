import numpy as np
import pytest
import torch
from figure_checks import assert_readable

from qviz.quant import QuantSpec, fake_quantize, mse, sqnr_db
from qviz.viz import quantization as viz
from qviz.viz.quantization import explorer_state, histogram, shown_values
from qviz.widgets.quantization import GRANULARITY_CHOICES, QuantExplorer, spec_from_controls


@pytest.fixture(scope="module")
def w():
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(0)) * 0.02
    w[7] *= 25  # an outlier row
    return w


def test_spec_from_controls():
    assert spec_from_controls(3, "group 64", False, 0.8) == QuantSpec(
        bits=3, symmetric=False, group_size=64, clip_ratio=0.8
    )
    assert spec_from_controls(4, "per-channel", True, 1.0) == QuantSpec(bits=4, granularity="channel")
    assert spec_from_controls(4, "per-tensor", True, 1.0) == QuantSpec(bits=4, granularity="tensor")
    assert {spec_from_controls(4, g, True, 1.0).granularity for g in GRANULARITY_CHOICES} == {
        "tensor",
        "channel",
        "group",
    }


@pytest.mark.parametrize(
    "controls",
    [(4, "per-channel", True, 1.0), (3, "group 32", False, 0.7), (8, "per-tensor", True, 1.0)],
    ids=["int4-channel", "int3-g32-asym-clip", "int8-tensor"],
)
def test_explorer_state_matches_the_library(w, controls):
    spec = spec_from_controls(*controls)
    state = explorer_state(w, spec, row=7)
    w_hat = fake_quantize(w, spec)
    assert state["mse"] == pytest.approx(mse(w, w_hat), rel=1e-5)
    assert state["sqnr_db"] == pytest.approx(sqnr_db(w, w_hat), rel=1e-5)
    assert np.allclose(state["row_mse"], (w_hat - w).pow(2).mean(-1).numpy(), rtol=1e-5)
    assert len(state["levels"]) == 2**spec.bits
    assert state["clip"] == (state["levels"][0], state["levels"][-1])
    shown = shown_values(w, spec, 7)
    assert state["counts"].sum() == shown.numel()  # every shown value falls in some bin
    # the grid's own values are exactly representable: quantizing them is the identity on the row's grid
    assert np.all(np.diff(state["levels"]) > 0)


def test_histogram_covers_all_values(w):
    centers, counts = histogram(w[7], bins=40)
    assert len(centers) == 40 and counts.sum() == 256
    half = (centers[1] - centers[0]) / 2
    edge = w[7].abs().max().item()
    assert centers[0] - half == pytest.approx(-edge) and centers[-1] + half == pytest.approx(edge)


def test_explorer_updates_figure_in_place(w):
    explorer = QuantExplorer(w, name="test weight")
    assert explorer.row == 7  # the outlier row is shown by default
    fig = explorer.fig
    assert len(fig.data[1].x) == 16
    explorer.set(bits=3, granularity="group 32", symmetric=False)
    assert explorer.fig is fig  # same widget, updated in place
    assert len(fig.data[1].x) == 8
    assert "INT3 asym g32" in fig.layout.title.text
    assert "SQNR" in explorer.summary.value
    before = explorer.state["sqnr_db"]
    explorer.set(bits=6)
    assert explorer.state["sqnr_db"] > before + 10


@pytest.mark.parametrize(
    "build",
    [
        lambda w: viz.grid_histogram(w, QuantSpec(bits=3), row=7),
        lambda w: viz.original_vs_dequantized(w, QuantSpec(bits=3)),
        lambda w: viz.error_vs_bits(w, {"per-channel": [QuantSpec(bits=b) for b in (2, 3, 4)]}),
        lambda w: viz.row_error_profile(w, [QuantSpec(bits=4), QuantSpec(bits=4, group_size=64)]),
    ],
    ids=["grid_histogram", "original_vs_dequantized", "error_vs_bits", "row_error_profile"],
)
def test_figures_have_titles_and_axis_labels(w, build):
    assert_readable(build(w))


def test_grid_histogram_draws_the_grid(w):
    fig = viz.grid_histogram(w, QuantSpec(bits=3, symmetric=False), row=7)
    levels = np.asarray(fig.data[1].x)
    assert len(levels) == 8 and levels[0] <= 0 <= levels[-1]


def test_error_vs_bits_slope(w):
    data = viz.error_vs_bits_data(w, {"ch": [QuantSpec(bits=b) for b in (6, 7, 8)]})["ch"]
    steps = [b[1] - a[1] for a, b in zip(data, data[1:])]
    assert all(5 < s < 7 for s in steps)


def test_granularity_errors_orders_outlier_case(w):
    rows = viz.granularity_errors(
        w, [QuantSpec(bits=4, granularity="tensor"), QuantSpec(bits=4), QuantSpec(bits=4, group_size=32)]
    )
    assert rows[0]["sqnr_db"] < rows[1]["sqnr_db"] < rows[2]["sqnr_db"]
    assert rows[0]["bits_per_weight"] < rows[1]["bits_per_weight"] < rows[2]["bits_per_weight"]


@pytest.mark.slow
def test_the_staircase_notebook_02_draws_has_steps():
    """Notebook 02's staircase: one typical row of Gemma's layer-0 down_proj at INT3 per row. Its dequantized
    values must take several levels (the per-tensor INT3 it once drew rounded every sampled weight to 0)."""
    from qviz.models import load_model

    model, _ = load_model("gemma-3-270m", fresh=False)
    W = model.model.layers[0].mlp.down_proj.weight.detach().float()
    row_max = W.abs().amax(dim=1)
    typical_row = int(row_max.argsort()[len(row_max) // 2])
    fig = viz.original_vs_dequantized(W[typical_row : typical_row + 1], QuantSpec(bits=3))
    assert len(set(fig.data[1].y.tolist())) >= 6  # of INT3's 8 levels
    per_tensor = viz.original_vs_dequantized(W, QuantSpec(bits=3, granularity="tensor"))
    assert len(set(per_tensor.data[1].y.tolist())) <= 3  # what the old figure showed: a flat line
