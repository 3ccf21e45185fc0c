"""Figures for GPTQ: why the output error is the target, how one column's error moves into the others, the
act-order permutation, per-layer GPTQ versus RTN loss, and a Cholesky failure that damping cures.

Each figure has a pure data function (tensors in, numpy arrays and numbers out, unit-tested without plotly)
and a builder that only draws. Symbols follow `qviz.gptq`: W (out_features, in_features), H = 2XXᵀ/n
(in_features, in_features), Q the dequantized result.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from qviz.calib.report import relative_output_error
from qviz.gptq import gptq_quantize
from qviz.quant import QuantSpec, fake_quantize

__all__ = [
    "joint_rounding_data",
    "joint_rounding_figure",
    "compensation_data",
    "compensation_figure",
    "column_error_data",
    "column_error_figure",
    "act_order_data",
    "act_order_figure",
    "layer_loss_data",
    "layer_loss_figure",
    "damping_data",
    "damping_figure",
]

_GPTQ, _RTN = "#2ca02c", "#d62728"


def joint_rounding_data(w: torch.Tensor, X: torch.Tensor, scale: float = 1.0, span: int = 1) -> dict:
    """Every way to round the two weights w = (w₁, w₂) of one output to a grid of step `scale`, and the
    output error each choice gives on inputs X (tokens, 2): mean over tokens of ((w − q)·x)².

    Candidates are the grid points within `span` steps of floor(w). Also returns that error as a function
    on a (w₁, w₂) mesh, for contours: it is the quadratic form (w − q)ᵀ (H/2) (w − q) with H = 2XᵀX/n.
    """
    w, X = w.double().flatten(), X.double()
    if w.numel() != 2 or X.dim() != 2 or X.shape[1] != 2:
        raise ValueError(
            f"need w of 2 weights and X of shape (tokens, 2), got {tuple(w.shape)}, {tuple(X.shape)}"
        )
    C = X.T @ X / X.shape[0]  # = H / 2
    lo = torch.floor(w / scale)
    steps = range(-span + 1, span + 1)
    cand = torch.tensor(
        [[(lo[0] + a) * scale, (lo[1] + b) * scale] for a, b in itertools.product(steps, steps)]
    )
    err = torch.einsum("ki,ij,kj->k", w - cand, C, w - cand)
    rtn = torch.round(w / scale) * scale
    rtn_index = int(torch.argmin((cand - rtn).abs().sum(1)))
    a = np.linspace(float(cand[:, 0].min()) - 0.5 * scale, float(cand[:, 0].max()) + 0.5 * scale, 81)
    b = np.linspace(float(cand[:, 1].min()) - 0.5 * scale, float(cand[:, 1].max()) + 0.5 * scale, 81)
    A, B = np.meshgrid(a, b)
    D = np.stack([w[0].item() - A, w[1].item() - B], -1)  # (81, 81, 2): w − point
    surface = np.einsum("...i,ij,...j->...", D, C.numpy(), D)
    return dict(
        w=w.numpy(),
        candidates=cand.numpy(),
        errors=err.numpy(),
        rtn_index=rtn_index,
        best_index=int(torch.argmin(err)),
        mesh_w1=a,
        mesh_w2=b,
        surface=surface,
        correlation=float(torch.corrcoef(X.T)[0, 1]),
    )


def joint_rounding_figure(data: dict) -> go.Figure:
    """Contours of the output error over the weight plane, with the grid points it can round to."""
    fig = go.Figure()
    floor = (
        data["errors"].min() / 30
    )  # the surface is 0 at w: clip so the colours span the grid points' range
    fig.add_contour(
        x=data["mesh_w1"], y=data["mesh_w2"], z=np.log10(np.maximum(data["surface"], floor)),
        colorscale="Blues",
        reversescale=True, contours=dict(showlabels=False), name="output error",
        colorbar=dict(title="log10 output error<br>(squared output units)"),
        hovertemplate="w₁ %{x:.2f}, w₂ %{y:.2f}<extra></extra>",
    )  # fmt: skip
    cand, err = data["candidates"], data["errors"]
    fig.add_scatter(
        x=cand[:, 0], y=cand[:, 1], mode="markers+text", name="grid points",
        text=[f"error {e:.3f}" for e in err], textposition="top left",
        marker=dict(color="black", size=9), hovertemplate="q = (%{x}, %{y})<extra></extra>",
    )  # fmt: skip
    for index, label, color, symbol in (
        (data["rtn_index"], "round each weight (RTN)", _RTN, "circle-open"),
        (data["best_index"], "best joint choice", _GPTQ, "diamond-open"),
    ):
        fig.add_scatter(
            x=[cand[index, 0]], y=[cand[index, 1]], mode="markers", name=label,
            marker=dict(color=color, size=22, symbol=symbol, line=dict(width=3)),
        )  # fmt: skip
    fig.add_scatter(
        x=[data["w"][0]], y=[data["w"][1]], mode="markers", name="float weights w",
        marker=dict(color="orange", size=14, symbol="star"),
    )  # fmt: skip
    fig.update_layout(
        title=f"Rounding two weights whose inputs are correlated (r = {data['correlation']:.2f})",
        xaxis_title="w₁ (weight units)", yaxis_title="w₂ (weight units)", template="plotly_white",
        yaxis_scaleanchor="x", height=560, legend=dict(orientation="h", y=-0.2),
    )  # fmt: skip
    return fig


def compensation_data(trace: torch.Tensor, n_columns: int = 32, row: int | None = None) -> dict:
    """How the weight moves while GPTQ walks the columns, from `GPTQResult.trace` (steps + 1, rows, in).

    change[k, j]: W after quantizing the first k + 1 processed columns minus the original W, in column j
    (one `row`, or the mean |change| over the traced rows), for the first `n_columns` columns and steps.
    Columns already quantized hold their rounding; the later ones hold the compensation they absorbed.
    """
    if trace is None or trace.dim() != 3:
        raise ValueError("pass GPTQResult.trace: run gptq_quantize(..., trace_rows=8)")
    n = min(n_columns, trace.shape[2])
    delta = (trace[1 : n + 1, :, :n] - trace[0, :, :n]).double()  # (steps, rows, columns)
    change = delta[:, row] if row is not None else delta.abs().mean(1)
    return dict(steps=np.arange(1, n + 1), columns=np.arange(n), change=change.numpy(), row=row)


def compensation_figure(data: dict, *, name: str = "layer") -> go.Figure:
    """Heatmap of the weight change per step (rows) and column: a staircase of rounding and compensation."""
    signed = data["row"] is not None
    z = data["change"]
    limit = float(np.abs(z).max()) or 1.0
    fig = go.Figure(
        go.Heatmap(
            x=data["columns"], y=data["steps"], z=z, colorscale="RdBu" if signed else "Viridis",
            zmin=-limit if signed else 0, zmax=limit,
            colorbar=dict(title="W − W₀ (weight units)" if signed else "mean |W − W₀|<br>(weight units)"),
            hovertemplate="after %{y} columns, column %{x}: %{z:.2e}<extra></extra>",
        )
    )  # fmt: skip
    what = f"row {data['row']}" if signed else "mean over traced rows"
    fig.update_layout(
        title=f"GPTQ on {name}: later columns absorb each rounding error ({what})",
        xaxis_title="input column j", yaxis_title="columns quantized so far (step)",
        yaxis_autorange="reversed", template="plotly_white",
    )  # fmt: skip
    return fig


def column_error_data(W: torch.Tensor, H: torch.Tensor, Q_gptq: torch.Tensor, Q_rtn: torch.Tensor) -> dict:
    """Per input column, the squared weight error Σ_rows (w − q)² of GPTQ and RTN, and both totals:
    weight MSE and relative output error ‖WX − QX‖² / ‖WX‖² (from H, see `qviz.calib.report`)."""
    W = W.double()
    out = dict(columns=np.arange(W.shape[1]))
    for label, Q in (("gptq", Q_gptq), ("rtn", Q_rtn)):
        E = W - Q.double()
        out[f"{label}_column"] = E.pow(2).sum(0).numpy()
        out[f"{label}_weight_mse"] = E.pow(2).mean().item()
        out[f"{label}_output"] = relative_output_error(W, Q, H)
    return out


def column_error_figure(data: dict, *, name: str = "layer") -> go.Figure:
    """Weight error per column (top) and the totals (bottom): GPTQ's weights move more, its output less."""
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.7, 0.3], horizontal_spacing=0.12,
        subplot_titles=("squared weight error per input column", "totals: GPTQ / RTN"),
    )  # fmt: skip
    for label, color in (("rtn", _RTN), ("gptq", _GPTQ)):
        fig.add_scatter(
            x=data["columns"], y=data[f"{label}_column"], mode="lines", name=label.upper(),
            line=dict(color=color, width=1), row=1, col=1,
        )  # fmt: skip
    ratios = [data["gptq_weight_mse"] / data["rtn_weight_mse"], data["gptq_output"] / data["rtn_output"]]
    fig.add_bar(
        x=["weight MSE", "output error"], y=ratios, marker_color=[_RTN, _GPTQ], showlegend=False,
        text=[f"{r:.2f}×" for r in ratios], textposition="outside", row=1, col=2,
    )  # fmt: skip
    fig.add_hline(y=1, line_dash="dash", line_color="gray", row=1, col=2)
    fig.update_xaxes(title_text="input column j", row=1, col=1)
    fig.update_yaxes(title_text="Σ_rows (w − q)² (log)", type="log", row=1, col=1)
    fig.update_xaxes(title_text="metric", row=1, col=2)
    fig.update_yaxes(title_text="GPTQ ÷ RTN (1 = equal)", row=1, col=2)
    fig.update_layout(title=f"Weight error versus output error on {name}", template="plotly_white")
    return fig


def act_order_data(H: torch.Tensor) -> dict:
    """diag(H) per input channel and the act-order permutation: columns by descending diag(H) (stable, as
    `gptq_quantize(..., act_order=True).perm`). diag(H)_j = 2·mean(x_j²): how strongly input j fires."""
    diag = torch.diag(H).double()
    perm = torch.argsort(diag, descending=True, stable=True)
    return dict(
        channels=np.arange(len(diag)), diag=diag.numpy(), perm=perm.numpy(), sorted=diag[perm].numpy()
    )


def act_order_figure(data: dict, *, name: str = "layer") -> go.Figure:
    """diag(H) in channel order (top) and in act-order processing order (bottom)."""
    fig = make_subplots(
        rows=2, cols=1, vertical_spacing=0.2,
        subplot_titles=("diag(H) per input channel", "the same values in act-order (processing) order"),
    )  # fmt: skip
    # points, not bars: on a log axis a bar's length would start at an arbitrary floor and exaggerate ratios
    fig.add_scatter(
        x=data["channels"], y=data["diag"], mode="markers", marker=dict(color="#1f77b4", size=3),
        name="diag(H)", row=1, col=1,
    )  # fmt: skip
    fig.add_scatter(
        x=np.arange(len(data["perm"])), y=data["sorted"], mode="lines", line_color="#ff7f0e", name="sorted",
        customdata=data["perm"], hovertemplate="step %{x}: channel %{customdata}<extra></extra>",
        row=2, col=1,
    )  # fmt: skip
    fig.update_yaxes(title_text="H[j, j] = 2·mean x_j² (log)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="H[j, j] (log)", type="log", row=2, col=1)
    fig.update_xaxes(title_text="input channel j", row=1, col=1)
    fig.update_xaxes(title_text="processing step (act-order)", row=2, col=1)
    fig.update_layout(
        title=f"Act-order on {name}: the most active inputs are quantized first",
        showlegend=False, template="plotly_white", height=560,
    )  # fmt: skip
    return fig


def layer_loss_data(rows: list[dict]) -> dict:
    """Per decoder layer, the mean over its linears of the relative output error of GPTQ
    ("output_rel_error") and of RTN on the same inputs ("rtn_output_rel_error"): the rows returned by
    `gptq.quantize_model`.
    """
    if not rows or "rtn_output_rel_error" not in rows[0]:
        raise ValueError("pass the rows returned by qviz.gptq.quantize_model (with 'rtn_output_rel_error')")
    layers = sorted({r["layer"] for r in rows})
    gptq = [np.mean([r["output_rel_error"] for r in rows if r["layer"] == i]) for i in layers]
    rtn = [np.mean([r["rtn_output_rel_error"] for r in rows if r["layer"] == i]) for i in layers]
    return dict(layers=np.array(layers), gptq=np.array(gptq), rtn=np.array(rtn))


def layer_loss_figure(data: dict, *, label: str = "") -> go.Figure:
    """GPTQ and RTN relative output error per decoder layer (log scale)."""
    fig = go.Figure()
    for key, color in (("rtn", _RTN), ("gptq", _GPTQ)):
        fig.add_scatter(
            x=data["layers"], y=data[key], mode="lines+markers", name=key.upper(), line=dict(color=color)
        )
    fig.update_layout(
        title=f"Per-layer output error (mean of its linears): GPTQ vs RTN{', ' + label if label else ''}",
        xaxis_title="decoder layer", xaxis_dtick=1,
        yaxis_title="‖WX − QX‖² / ‖WX‖² (ratio, log)",
        yaxis_type="log", template="plotly_white",
    )  # fmt: skip
    return fig


def damping_data(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    damps=(0.0, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    H_eval: torch.Tensor | None = None,
) -> dict:
    """For each relative damping λ/mean(diag H): does the Cholesky factorization of H + λI succeed, and how
    good is GPTQ with it? Where it fails, `messages` holds torch's error text and GPTQ is not run (the
    library would retry with more damping). Errors are measured on `H_eval` (held-out tokens; default H).
    """
    H_eval = H if H_eval is None else H_eval
    eye = torch.eye(len(H), dtype=H.dtype, device=H.device)
    rows = []  # (factorizes, torch's message, held-out relative error, damping GPTQ used)
    for damp in damps:
        try:
            torch.linalg.cholesky(H + damp * torch.diag(H).mean() * eye)
        except torch.linalg.LinAlgError as err:
            rows.append((False, str(err), np.nan, np.nan))
            continue
        with warnings.catch_warnings(record=True):  # a retry inside gptq_quantize shows up in `used`
            warnings.simplefilter("always")
            r = gptq_quantize(W, H, spec, damp=damp)
        rows.append((True, "", relative_output_error(W, r.Q, H_eval), r.damp))
    ok, messages, errors, used = zip(*rows)
    rtn = relative_output_error(W, fake_quantize(W, spec), H_eval)
    return dict(
        damps=np.array(damps, dtype=float), ok=np.array(ok), messages=list(messages),
        errors=np.array(errors), used=np.array(used), rtn=rtn,
    )  # fmt: skip


def damping_figure(data: dict, *, name: str = "layer") -> go.Figure:
    """GPTQ's held-out output error against damping; failed factorizations marked on the RTN line."""
    x = np.where(data["damps"] > 0, data["damps"], np.nan)
    zero = data["damps"] == 0
    if zero.any():  # damp 0 cannot sit on a log axis: draw it one decade left of the smallest positive
        x[zero] = np.nanmin(x) / 10 if np.isfinite(x).any() else 1e-8
    fig = go.Figure()
    fig.add_scatter(
        x=x[data["ok"]], y=data["errors"][data["ok"]], mode="lines+markers", name="GPTQ",
        line=dict(color=_GPTQ),
    )  # fmt: skip
    fig.add_scatter(
        x=x[~data["ok"]], y=np.full((~data["ok"]).sum(), data["rtn"]), mode="markers",
        name="Cholesky fails", marker=dict(color="black", symbol="x", size=12),
        text=[m[:120] for m, ok in zip(data["messages"], data["ok"]) if not ok],
        hovertemplate="damp %{x:.0e}: %{text}<extra></extra>",
    )  # fmt: skip
    fig.add_scatter(  # a trace, not add_hline: hline annotations land in the wrong place on log axes
        x=[np.nanmin(x), np.nanmax(x)], y=[data["rtn"]] * 2, mode="lines", name="RTN (no data)",
        line=dict(color=_RTN, dash="dash"),
    )  # fmt: skip
    ticks = [f"{d:g}" for d in data["damps"]]
    fig.update_layout(
        title=f"Damping λ = damp · mean(diag H) on {name}", xaxis_type="log",
        xaxis=dict(tickvals=x, ticktext=ticks), xaxis_title="damp (relative to mean diag H; 0 drawn at left)",
        yaxis_title="held-out ‖WX − QX‖² / ‖WX‖²", yaxis_type="log", template="plotly_white",
    )  # fmt: skip
    return fig
