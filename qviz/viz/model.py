"""Figures for a whole model: where the outliers are, how scales vary, what quantization costs per layer."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from qviz.quant import QuantSpec, choose_qparams

__all__ = [
    "layer_heatmap",
    "channel_magnitudes_data",
    "channel_magnitudes",
    "scale_heatmap",
    "per_layer_lines",
    "metric_vs_bits",
]


def layer_heatmap(rows: list[dict], value: str, *, title: str, colorbar: str, log: bool = True) -> go.Figure:
    """Heatmap of `value` for every (layer, linear name) in `rows` (dicts with keys 'layer', 'name', value)."""
    names = list(dict.fromkeys(r["name"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    z = np.full((len(names), len(layers)), np.nan)
    for r in rows:
        z[names.index(r["name"]), layers.index(r["layer"])] = r[value]
    shown = np.log10(z) if log else z
    fig = go.Figure(
        go.Heatmap(
            z=shown,
            x=layers,
            y=names,
            customdata=z,
            hovertemplate="layer %{x}, %{y}: %{customdata:.3g}<extra></extra>",
            colorscale="Viridis",
            colorbar=dict(title=f"log10({colorbar})" if log else colorbar),
        )
    )
    fig.update_layout(title=title, xaxis_title="decoder layer", yaxis_title="linear", template="plotly_white")
    return fig


def channel_magnitudes_data(mean_abs: torch.Tensor, w: torch.Tensor, salient: float = 0.01) -> dict:
    """Per input channel j: activation mean |x_j|, weight column max |W[:, j]|, and the top `salient` fraction."""
    k = max(1, round(salient * len(mean_abs)))
    top = torch.topk(mean_abs, k).indices.sort().values
    return dict(
        channel=np.arange(len(mean_abs)),
        act=mean_abs.float().numpy(),
        weight=w.detach().float().abs().amax(dim=0).numpy(),
        salient=top.numpy(),
    )


def channel_magnitudes(
    mean_abs: torch.Tensor, w: torch.Tensor, *, name: str, salient: float = 0.01
) -> go.Figure:
    """Activation magnitude (top) beside weight magnitude (bottom) per input channel; salient channels in red."""
    d = channel_magnitudes_data(mean_abs, w, salient)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("activations: mean |x| per input channel", "weights: max |w| in each input column"),
    )
    fig.add_scatter(  # points, not bars: bars on a log axis exaggerate ratios
        x=d["channel"], y=d["act"], mode="markers", name="mean |x|", marker=dict(color="#1f77b4", size=3),
        row=1, col=1,
    )  # fmt: skip
    fig.add_scatter(
        x=d["salient"], y=d["act"][d["salient"]], mode="markers", name=f"top {salient:.0%} channels",
        marker=dict(color="#d62728", size=7), row=1, col=1,
    )  # fmt: skip
    fig.add_bar(x=d["channel"], y=d["weight"], name="max |w|", marker_color="#7f7f7f", row=2, col=1)
    fig.add_scatter(
        x=d["salient"], y=d["weight"][d["salient"]], mode="markers", showlegend=False,
        marker=dict(color="#d62728", size=7), row=2, col=1,
    )  # fmt: skip
    fig.update_yaxes(title_text="mean |x| (log)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="max |w|", row=2, col=1)
    fig.update_xaxes(title_text="input channel", row=2, col=1)
    fig.update_layout(title=f"Input channels of {name}", bargap=0, template="plotly_white", height=520)
    return fig


def scale_heatmap(w: torch.Tensor, spec: QuantSpec, *, name: str, max_rows: int = 256) -> go.Figure:
    """The scale of every (row, group) of w under `spec`: groups with outliers get large steps."""
    scale, _ = choose_qparams(w[:max_rows], spec)
    fig = go.Figure(
        go.Heatmap(z=scale.numpy(), colorscale="Magma", colorbar=dict(title="scale (weight units per code)"))
    )
    shown = f"first {min(max_rows, w.shape[0])} of {w.shape[0]} rows" if w.shape[0] > max_rows else "all rows"
    fig.update_layout(
        title=f"{spec.label} scales of {name} ({shown})",
        xaxis_title=f"group along the input (each {spec.group_size or w.shape[1]} weights)",
        yaxis_title="output row",
        yaxis_autorange="reversed",
        template="plotly_white",
    )
    return fig


def per_layer_lines(series: dict[str, list[float]], *, title: str, yaxis: str, log: bool = True) -> go.Figure:
    """One line per named series over decoder layers (e.g. per-layer output error of RTN vs GPTQ)."""
    fig = go.Figure()
    for label, values in series.items():
        fig.add_scatter(x=np.arange(len(values)), y=values, mode="lines+markers", name=label)
    fig.update_layout(
        title=title, xaxis_title="decoder layer", yaxis_title=yaxis, yaxis_type="log" if log else "linear",
        template="plotly_white",
    )  # fmt: skip
    return fig


def metric_vs_bits(
    results: list[dict],
    *,
    metric: str,
    reference: float | None = None,
    title: str,
    yaxis: str,
    log: bool = False,
) -> go.Figure:
    """`metric` against bits, one line per 'granularity' in `results` (dicts with 'bits', 'granularity', metric)."""
    fig = go.Figure()
    for gran in dict.fromkeys(r["granularity"] for r in results):
        pts = sorted((r["bits"], r[metric]) for r in results if r["granularity"] == gran)
        fig.add_scatter(x=[b for b, _ in pts], y=[v for _, v in pts], mode="lines+markers", name=gran)
    if reference is not None:  # a trace, not add_hline: its annotation lands at 10^y on a log axis
        bits = [r["bits"] for r in results]
        fig.add_scatter(
            x=[min(bits), max(bits)], y=[reference, reference], mode="lines", name="unquantized reference",
            line=dict(color="gray", dash="dash"),
        )  # fmt: skip
    fig.update_layout(
        title=title, xaxis_title="bits per weight (codes)", yaxis_title=yaxis, yaxis_type="log" if log else "linear",
        template="plotly_white",
    )  # fmt: skip
    return fig
