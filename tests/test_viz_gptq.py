import warnings

import numpy as np
import pytest
import torch
from figure_checks import assert_readable

from qviz.gptq import gptq_quantize
from qviz.quant import QuantSpec, fake_quantize
from qviz.viz import gptq as viz


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


def assert_labelled(fig):
    assert_readable(fig)


def toy():
    """Two inputs, x₂ = z and x₁ = z + noise: strongly correlated."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, generator=g, dtype=torch.float64)
    return torch.tensor([0.8, 0.6], dtype=torch.float64), torch.stack([z + 0.5 * torch.randn_like(z), z], 1)


def test_joint_rounding_golden_and_best_beats_rtn():
    w, X = toy()
    d = viz.joint_rounding_data(w, X)
    assert d["candidates"].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    for q, err in zip(d["candidates"], d["errors"]):  # each error is the mean squared output difference
        assert err == pytest.approx(((X @ (w - torch.tensor(q))) ** 2).mean().item(), rel=1e-9)
    assert d["candidates"][d["rtn_index"]].tolist() == [1, 1]
    assert d["candidates"][d["best_index"]].tolist() == [1, 0]
    assert d["errors"][d["rtn_index"]] > 1.5 * d["errors"][d["best_index"]]
    # the contour surface is the same quadratic form: its minimum sits at w
    i, j = np.unravel_index(np.argmin(d["surface"]), d["surface"].shape)
    assert abs(d["mesh_w1"][j] - 0.8) < 0.05 and abs(d["mesh_w2"][i] - 0.6) < 0.05
    # GPTQ (no damping) finds the best joint choice; a second row [7, 0] fixes the per-tensor scale at 1
    r = gptq_quantize(torch.stack([w, torch.tensor([7.0, 0.0], dtype=torch.float64)]), hessian(X),
                      QuantSpec(bits=4, granularity="tensor", restricted_range=True), damp=0.0,
                      act_order=False)  # fmt: skip
    assert r.Q[0].tolist() == [1.0, 0.0]
    assert_labelled(viz.joint_rounding_figure(d))


def test_compensation_staircase():
    W, X = correlated_layer()
    r = gptq_quantize(W, hessian(X), QuantSpec(bits=3), block_size=16, act_order=False, trace_rows=4)
    d = viz.compensation_data(r.trace, n_columns=20)
    assert d["change"].shape == (20, 20)
    # after step k, column k holds its final quantized value, and columns > k moved by compensation only
    for k in (0, 5, 19):
        assert np.allclose(d["change"][k, k], (r.Q[:4, k] - W[:4, k]).abs().mean().item(), atol=1e-6)
    assert (d["change"][0, 1:] > 0).all()  # column 0's error spread into every later column
    signed = viz.compensation_data(r.trace, n_columns=20, row=2)
    assert np.allclose(signed["change"][-1], (r.trace[20, 2, :20] - W[2, :20]).numpy(), atol=1e-6)
    assert_labelled(viz.compensation_figure(d, name="toy"))
    assert_labelled(viz.compensation_figure(signed, name="toy"))
    with pytest.raises(ValueError, match="trace_rows"):
        viz.compensation_data(None)


def test_column_error_gptq_moves_weights_more_but_output_less():
    W, X = correlated_layer()
    H = hessian(X)
    spec = QuantSpec(bits=3, group_size=16)
    Q = gptq_quantize(W, H, spec).Q
    d = viz.column_error_data(W, H, Q, fake_quantize(W, spec))
    assert d["gptq_output"] < d["rtn_output"]
    assert d["gptq_weight_mse"] > d["rtn_weight_mse"]  # RTN is the weight-error optimum on the same grid
    assert d["rtn_column"].sum() / W.numel() == pytest.approx(d["rtn_weight_mse"], rel=1e-6)
    direct = ((X @ (W - Q).T) ** 2).sum() / (X @ W.T).pow(2).sum()  # ‖WX − QX‖² / ‖WX‖² from X itself
    assert d["gptq_output"] == pytest.approx(direct.item(), rel=1e-4)
    assert_labelled(viz.column_error_figure(d, name="toy"))


def test_act_order_permutation_sorts_diag_descending():
    W, X = correlated_layer()
    H = hessian(X)
    d = viz.act_order_data(H)
    assert sorted(d["perm"].tolist()) == list(range(64))
    assert (np.diff(d["sorted"]) <= 0).all()
    assert np.array_equal(d["sorted"], d["diag"][d["perm"]])
    assert d["diag"][d["perm"][0]] == d["diag"].max()
    assert np.array_equal(d["perm"], gptq_quantize(W, H, QuantSpec(bits=4), act_order=True).perm.numpy())
    assert_labelled(viz.act_order_figure(d, name="toy"))


def test_layer_loss_means_per_layer():
    rows = [
        dict(layer=0, linear="a", output_rel_error=0.1, rtn_output_rel_error=0.3),
        dict(layer=0, linear="b", output_rel_error=0.3, rtn_output_rel_error=0.5),
        dict(layer=1, linear="a", output_rel_error=0.2, rtn_output_rel_error=0.2),
    ]
    d = viz.layer_loss_data(rows)
    assert d["layers"].tolist() == [0, 1]
    assert d["gptq"] == pytest.approx([0.2, 0.2]) and d["rtn"] == pytest.approx([0.4, 0.2])
    assert_labelled(viz.layer_loss_figure(d, label="INT4"))
    with pytest.raises(ValueError, match="quantize_model"):
        viz.layer_loss_data([dict(layer=0, output_rel_error=0.1)])


def test_damping_cures_a_rank_deficient_hessian():
    W, X = correlated_layer(tokens=24)  # 24 tokens, 64 inputs: H has rank 24
    _, X_eval = correlated_layer(tokens=2048)  # same weights and mixing, more tokens: held-out
    spec = QuantSpec(bits=4)
    H = hessian(X.double())
    damps = (0.0, 1e-2, 1e-1)
    d = viz.damping_data(W.double(), H, spec, damps, H_eval=hessian(X_eval.double()))
    assert d["ok"].tolist() == [False, True, True]
    assert "positive-definite" in d["messages"][0] and d["messages"][1] == ""
    assert np.isnan(d["errors"][0]) and np.isfinite(d["errors"][1:]).all()
    assert d["used"][1:].tolist() == [1e-2, 1e-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failing damp is not run, so no retry warning escapes
        viz.damping_data(W.double(), H, spec, damps)
    assert_labelled(viz.damping_figure(d, name="toy"))
