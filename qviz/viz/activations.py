"""Figures for quantizing activations (notebook 08): outlier channels, SmoothQuant's migration, rotations, the
KV cache. Each function draws data computed elsewhere (`qviz.act`, `qviz.smooth`, `qviz.rotate`,
`qviz.kvcache`); nothing here changes a model.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

__all__ = [
    "act_bits_figure",
    "kl_by_position_figure",
    "max_over_median",
    "metric_vs_alpha_figure",
    "outlier_stats_figure",
    "outlier_threshold_figure",
    "smoothing_figure",
]

_BEFORE, _AFTER = "#7f7f7f", "#1f77b4"


def max_over_median(values: torch.Tensor) -> float:
    """How far the largest per-channel maximum stands above the typical one (torch's lower median)."""
    return float(values.max() / values.median())


def smoothing_figure(
    act_max: torch.Tensor, weight_max: torch.Tensor, s: torch.Tensor | None = None, *, name: str, alpha=None
) -> go.Figure:
    """Per input channel j of one linear: max|X_j| (top) and max|W_j| (bottom), before (gray) and, with the
    SmoothQuant scales s, after smoothing (blue): X_j / s_j and W_j · s_j. Log y axes."""
    channels = list(
        range(len(act_max))
    )  # lists, not numpy arrays: a FigureWidget built from this must render
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    series = [(act_max, 1, "activations", "before"), (weight_max, 2, "weights", "before")]
    if s is not None:
        series += [(act_max / s, 1, "activations", "after"), (weight_max * s, 2, "weights", "after")]
    for values, row, what, when in series:
        color = _BEFORE if when == "before" else _AFTER
        fig.add_trace(
            go.Scatter(x=channels, y=values.float().tolist(), mode="lines", line=dict(color=color, width=1),
                       name=f"{what} {when}", legendgroup=when),
            row=row, col=1,
        )  # fmt: skip
    fig.update_yaxes(type="log", title_text="max |X_j| (log)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="max |W[:, j]| (log)", row=2, col=1)
    fig.update_xaxes(title_text="input channel j", row=2, col=1)
    ratio = max_over_median
    title = f"{name}<br>max/median: activations {ratio(act_max):.0f}×, weights {ratio(weight_max):.1f}×"
    if s is not None:
        title += f"; smoothed (α = {alpha:g}): {ratio(act_max / s):.1f}× and {ratio(weight_max * s):.1f}×"
    fig.update_layout(title=title, template="plotly_white", height=500, legend=dict(orientation="h", y=-0.15),
                      margin=dict(t=90))  # fmt: skip
    return fig


def metric_vs_alpha_figure(
    alphas, values, *, metric: str, baseline: float | None = None, baseline_name: str = "", at=None
) -> go.Figure:
    """A metric (KL, perplexity) of the smoothed model against SmoothQuant's α; the unsmoothed model's value as a
    dashed line; `at`: a marker at one α (the slider's)."""
    fig = go.Figure(go.Scatter(x=list(alphas), y=list(values), mode="lines+markers", name="smoothed"))
    if baseline is not None:
        fig.add_hline(y=baseline, line_dash="dash", line_color=_BEFORE, annotation_text=baseline_name)
    if at is not None:
        i = int(np.argmin([abs(a - at) for a in alphas]))
        fig.add_trace(go.Scatter(x=[alphas[i]], y=[values[i]], mode="markers", name=f"α = {alphas[i]:g}",
                                 marker=dict(size=13, color="#d62728")))  # fmt: skip
    fig.update_layout(
        title=f"SmoothQuant: {metric} against α", xaxis_title="α (0: no migration, 1: all onto the weights)",
        yaxis_title=metric, template="plotly_white", height=360,
    )  # fmt: skip
    return fig


def outlier_stats_figure(before: dict[str, float], after: dict[str, float], *, title: str) -> go.Figure:
    """max|x| / rms(x) of each linear's input, before and after rotation (points; a ratio, so a log axis)."""
    names = list(before)
    fig = go.Figure()
    for values, label, color in [(before, "not rotated", _BEFORE), (after, "rotated", _AFTER)]:
        fig.add_trace(go.Scatter(x=names, y=[values[n] for n in names], mode="markers", name=label,
                                 marker=dict(size=10, color=color)))  # fmt: skip
    fig.update_layout(
        title=title, xaxis_title="linear (its input)", yaxis_title="max |x| / rms(x) (log)", yaxis_type="log",
        template="plotly_white", height=380,
    )  # fmt: skip
    return fig


def kl_by_position_figure(curves: dict[str, torch.Tensor], *, title: str, smooth: int = 16) -> go.Figure:
    """KL(float ‖ quantized cache) against the position in the window, one line per setting; averaged over
    runs of `smooth` positions so the trend shows through the per-token noise."""
    fig = go.Figure()
    for label, kl in curves.items():
        kl = kl.float()
        n = len(kl) // smooth * smooth
        y = kl[:n].reshape(-1, smooth).mean(1).tolist()
        x = (np.arange(len(y)) * smooth + smooth / 2).tolist()
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label))
    fig.update_layout(
        title=title, xaxis_title="position in the window (tokens of context)",
        yaxis_title=f"KL to the float cache (nats/token, mean of {smooth})", yaxis_type="log",
        template="plotly_white", height=400,
    )  # fmt: skip
    return fig


def act_bits_figure(
    bits, errors: dict[str, list[float]], *, name: str, at: tuple[str, int] | None = None
) -> go.Figure:
    """One linear's relative output error with its input quantized to intB (`qviz.act.output_error`), one line
    per granularity (`errors`: label -> a value per entry of `bits`); `at` = (label, bits): a marker there (the
    controls' setting). Log y: the errors span orders of magnitude."""
    bits = list(bits)
    fig = go.Figure()
    for (label, values), color in zip(errors.items(), (_BEFORE, _AFTER, "#2ca02c")):
        fig.add_trace(
            go.Scatter(x=bits, y=list(values), mode="lines+markers", name=label, line=dict(color=color))
        )
    if at is not None:
        label, b = at
        y = errors[label][bits.index(b)]
        fig.add_trace(
            go.Scatter(
                x=[b],
                y=[y],
                mode="markers",
                name=f"A{b} {label}: {y:.2e}",
                marker=dict(size=14, color="#d62728", symbol="circle-open", line=dict(width=3)),
            )
        )
    fig.update_layout(
        title=f"{name}: output error with only the input quantized (weights in float)",
        xaxis_title="activation bits (symmetric integer codes)", yaxis_title="‖X̂Wᵀ − XWᵀ‖² / ‖XWᵀ‖² (log)",
        yaxis_type="log", template="plotly_white", height=380,
    )  # fmt: skip
    return fig


def outlier_threshold_figure(
    col_max: torch.Tensor, threshold: float, *, name: str, error: float, n_float: int, error_int8: float
) -> go.Figure:
    """LLM.int8() on one linear: the input channels' max|X_j|, largest first (points; log y), and the outlier
    threshold (dashed): the channels above it are multiplied in float. The title gives how many, and the output
    error with them (`error`) and without them (`error_int8`, plain vector-wise INT8): `qviz.llm_int8.output_error`."""
    values = col_max.float().sort(descending=True).values.tolist()  # lists: a FigureWidget must render them
    rank = list(range(1, len(values) + 1))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=rank, y=values, mode="markers", marker=dict(size=4, color=_AFTER),
                             name="max |X_j| of one input channel"))  # fmt: skip
    fig.add_trace(go.Scatter(x=[1, len(values)], y=[threshold, threshold], mode="lines", name=f"threshold {threshold:.3g}",
                             line=dict(dash="dash", color="#d62728")))  # fmt: skip
    fig.update_layout(
        title=f"{name}: LLM.int8() keeps the {n_float} of {len(values)} input channels above {threshold:.3g} in "
        f"float<br>output error {error:.2e}; all of them in INT8 (vector-wise): {error_int8:.2e}",
        xaxis_title="input channels, largest first (rank, log)", xaxis_type="log",
        yaxis_title="max over tokens of |X_j| (log)", yaxis_type="log", template="plotly_white", height=400,
        margin=dict(t=90),
    )  # fmt: skip
    return fig
