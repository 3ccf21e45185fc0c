import numpy as np
import pytest
import torch
from figure_checks import assert_readable

from qviz.smooth import smooth_scales
from qviz.viz.activations import (
    kl_by_position_figure,
    metric_vs_alpha_figure,
    outlier_stats_figure,
    smoothing_figure,
)
from qviz.widgets.activations import SmoothQuantExplorer

ACT = torch.tensor([1.0, 2.0, 1.0, 80.0, 1.5])  # channel 3: an outlier
WMAX = torch.tensor([0.5, 0.4, 0.6, 0.2, 0.5])
SWEEP = {"alpha": [0.0, 0.25, 0.5, 0.75, 1.0], "kl": [0.9, 0.5, 0.2, 0.3, 0.6]}


def test_smoothing_figure_draws_the_maxima_before_and_after():
    fig = smoothing_figure(ACT, WMAX, name="toy")
    assert_readable(fig)
    assert (
        len(fig.data) == 2 and fig.layout.yaxis.type == "log" and "activations 53×" in fig.layout.title.text
    )  # 80 / 1.5
    s = torch.tensor([2.0, 1.0, 1.0, 8.0, 1.0])
    fig = smoothing_figure(ACT, WMAX, s, name="toy", alpha=0.5)
    assert_readable(fig)
    np.testing.assert_allclose(fig.data[2].y, [0.5, 2.0, 1.0, 10.0, 1.5])  # X_j / s_j
    np.testing.assert_allclose(fig.data[3].y, [1.0, 0.4, 0.6, 1.6, 0.5])  # W_j · s_j
    assert "α = 0.5" in fig.layout.title.text


def test_metric_vs_alpha_marks_the_nearest_swept_alpha():
    fig = metric_vs_alpha_figure(
        SWEEP["alpha"], SWEEP["kl"], metric="KL", baseline=1.0, baseline_name="plain", at=0.3
    )
    assert_readable(fig)
    assert fig.data[-1].x == (0.25,) and fig.data[-1].y == (0.5,)


def test_kl_by_position_averages_runs_of_positions():
    fig = kl_by_position_figure(
        {"INT4": torch.arange(1.0, 34.0)}, title="KV", smooth=16
    )  # 33: the tail dropped
    assert_readable(fig)
    np.testing.assert_allclose(fig.data[0].y, [8.5, 24.5])
    np.testing.assert_allclose(fig.data[0].x, [8.0, 24.0])
    assert fig.layout.yaxis.type == "log"


def test_outlier_stats_are_points_on_a_log_axis():
    fig = outlier_stats_figure({"q": 40.0, "down": 900.0}, {"q": 3.0, "down": 5.0}, title="rotation")
    assert_readable(fig)
    assert all(t.mode == "markers" for t in fig.data) and fig.data[1].y == (3.0, 5.0)


def test_explorer_follows_the_slider():
    explorer = SmoothQuantExplorer(ACT, WMAX, SWEEP, name="toy", baseline=1.0)
    explorer.set(alpha=1.0)  # s = act_max: every smoothed channel max becomes 1
    assert explorer.state["act_ratio"] == pytest.approx(1.0)
    np.testing.assert_allclose(explorer.channels.data[2].y, np.ones(5), rtol=1e-6)
    # lists, not numpy arrays: a FigureWidget given float32 arrays drew an empty plot in JupyterLab
    assert not any(isinstance(t.y, np.ndarray) for t in explorer.channels.data)
    explorer.set(alpha=0.3)
    s = smooth_scales(ACT, WMAX, 0.3)
    np.testing.assert_allclose(explorer.channels.data[3].y, (WMAX * s).numpy(), rtol=1e-6)
    assert explorer.curve.data[-1].x == (0.25,)
    assert "α = 0.30" in explorer.summary.value


def test_explorer_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="two vectors of one length"):
        SmoothQuantExplorer(ACT, WMAX[:3], SWEEP, name="toy", baseline=1.0)
    with pytest.raises(ValueError, match="equally long lists"):
        SmoothQuantExplorer(ACT, WMAX, {"alpha": [0.5], "kl": []}, name="toy", baseline=1.0)


def _outlier_layer(seed=0):
    """A linear whose input has one outlier channel (40x the rest), as real decoder inputs do."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 64, generator=g)
    X[:, 5] *= 40
    return X, torch.randn(32, 64, generator=g) / 8


def test_act_output_error_against_an_independent_formula():
    """qviz.act.output_error on per-token intB = ‖(round(X/s)·s − X)Wᵀ‖² / ‖XWᵀ‖², s = row max / (2^(B−1) − 1),
    written out here in float64; the error falls with every added bit, and per-token beats per-tensor."""
    from qviz.act import ActSpec, output_error

    X, W = _outlier_layer()
    for bits in range(2, 9):
        qmax = 2 ** (bits - 1) - 1
        s = X.double().abs().amax(1, keepdim=True) / qmax
        expected = ((torch.round(X.double() / s) * s - X.double()) @ W.double().T).pow(2).sum() / (
            (X.double() @ W.double().T).pow(2).sum()
        )
        assert output_error(X, W, ActSpec(f"int{bits}", "per-token")) == pytest.approx(
            expected.item(), rel=1e-3
        )
    errors = {
        g: [output_error(X, W, ActSpec(f"int{b}", g)) for b in range(2, 9)]
        for g in ("per-tensor", "per-token")
    }
    for curve in errors.values():
        assert all(a > b for a, b in zip(curve, curve[1:]))
    assert all(t < p for t, p in zip(errors["per-token"], errors["per-tensor"]))


def test_llm_int8_output_error_counts_the_float_channels():
    import math

    from qviz import llm_int8

    X, W = _outlier_layer()
    plain, none = llm_int8.output_error(X, W, math.inf)
    split, n_float = llm_int8.output_error(X, W, 6.0)
    assert none == 0 and n_float == int((X.abs().amax(0) > 6.0).sum()) >= 1
    assert split < plain / 5  # taking the outlier channel out of the INT8 scales helps a lot
    assert llm_int8.output_error(X, W, 0.0) == (pytest.approx(0.0, abs=1e-10), 64)  # every channel in float


def test_activation_explorer_moves_its_marker_and_threshold_line():
    from qviz.act import ActSpec, output_error
    from qviz.viz.activations import act_bits_figure, outlier_threshold_figure
    from qviz.widgets.activations import ActQuantExplorer

    X, W = _outlier_layer()
    explorer = ActQuantExplorer(X, W, name="toy")
    for fig in (explorer.bits_fig, explorer.outlier_fig):
        assert_readable(fig)
        assert not any(isinstance(t.y, np.ndarray) for t in fig.data)  # lists: FigureWidgets render them
    explorer.set(bits=4, granularity="per-token")
    assert explorer.bits_fig.data[-1].x == (4,)
    assert explorer.state["error"] == pytest.approx(output_error(X, W, ActSpec("int4", "per-token")))
    explorer.set(threshold=3.0)
    assert explorer.outlier_fig.data[1].y == (3.0, 3.0) and explorer.state["n_float"] >= 1
    assert f"{explorer.state['n_float']} of 64" in explorer.outlier_fig.layout.title.text
    assert "A4 per-token" in explorer.summary.value
    assert_readable(act_bits_figure(range(2, 9), explorer.errors, name="toy"))
    assert_readable(
        outlier_threshold_figure(X.abs().amax(0), 6.0, name="t", error=0.1, n_float=1, error_int8=0.2)
    )
    with pytest.raises(ValueError, match="one in_features"):
        ActQuantExplorer(X, W[:, :10], name="toy")
