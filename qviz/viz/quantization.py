"""Figures for affine quantization: the grid on a histogram, rounding error, error versus bit width.

Each figure has a pure `*_data` function (tensors in, plain arrays out, testable without Jupyter) and a
builder that draws it. `explorer_state` is what the explorer in `qviz.widgets.quantization` draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from qviz.quant import QuantSpec, bits_per_weight, choose_qparams, fake_quantize, mse, sqnr_db

__all__ = [
    "GridView",
    "grid_view",
    "grid_histogram",
    "original_vs_dequantized",
    "error_vs_bits_data",
    "error_vs_bits",
    "granularity_errors",
    "row_error_profile",
    "explorer_state",
    "histogram",
    "shown_values",
]

DB_PER_BIT = 20 * math.log10(2)  # 6.02 dB: each extra bit halves the step, quartering the noise power
GRID_COLOR, CLIP_COLOR, HIST_COLOR = "#d62728", "rgba(255, 127, 14, 0.15)", "#1f77b4"


@dataclass
class GridView:
    """What the histogram-with-grid picture shows for one group of a weight (a plain-data snapshot)."""

    centers: np.ndarray  # histogram bin centres of the group's values
    counts: np.ndarray  # values per bin
    levels: np.ndarray  # the 2**bits representable values of the group, (q - zero_point) * scale
    clip: tuple[float, float]  # the range the grid covers; values outside it are clipped
    mse: float  # over the whole tensor, not just this group
    sqnr_db: float
    bits_per_weight: float
    n_groups: int


def _group_of(w: torch.Tensor, spec: QuantSpec, row: int, group: int) -> torch.Tensor:
    if spec.granularity == "tensor":
        return w.reshape(-1)
    values = w.reshape(-1, w.shape[-1])[row]
    if spec.granularity == "channel":
        return values
    return values[group * spec.group_size : (group + 1) * spec.group_size]


def grid_view(w: torch.Tensor, spec: QuantSpec, *, row: int = 0, group: int = 0, bins: int = 120) -> GridView:
    """Histogram of one group's values (the whole tensor when per-tensor), its grid and the tensor's error.

    w: (out_features, in_features). `row`, `group` pick which group's grid to draw when there are several.
    """
    scale, zero_point = choose_qparams(w, spec)
    r = 0 if spec.granularity == "tensor" else row
    g = 0 if spec.granularity != "group" else group
    s, z = scale[r, g].item(), zero_point[r, g].item()
    levels = (np.arange(spec.qmin, spec.qmax + 1) - z) * s
    values = _group_of(w, spec, r, g).float()
    lo, hi = min(values.min().item(), levels[0]), max(values.max().item(), levels[-1])
    counts = torch.histc(values, bins=bins, min=lo, max=hi).numpy()
    edges = np.linspace(lo, hi, bins + 1)
    w_hat = fake_quantize(w, spec)
    return GridView(
        centers=(edges[:-1] + edges[1:]) / 2,
        counts=counts,
        levels=levels,
        clip=(float(levels[0]), float(levels[-1])),
        mse=mse(w, w_hat),
        sqnr_db=sqnr_db(w, w_hat),
        bits_per_weight=bits_per_weight(spec, tuple(w.shape)),
        n_groups=scale.numel(),
    )


def _describe(spec: QuantSpec, view: GridView) -> str:
    return (
        f"{spec.label}: MSE {view.mse:.3g}, SQNR {view.sqnr_db:.1f} dB, "
        f"{view.bits_per_weight:.3f} bits/weight, {view.n_groups:,} scale(s)"
    )


def grid_histogram(
    w: torch.Tensor, spec: QuantSpec, *, row: int = 0, group: int = 0, name: str = "weight", fig=None
) -> go.Figure:
    """Histogram of weights with the quantization grid (red ticks) and the range it covers (shaded)."""
    view = grid_view(w, spec, row=row, group=group)
    fig = fig if fig is not None else go.Figure()
    fig.add_bar(x=view.centers, y=view.counts, name="weights", marker_color=HIST_COLOR, showlegend=False)
    fig.add_scatter(
        x=view.levels,
        y=np.zeros_like(view.levels),
        mode="markers",
        marker=dict(symbol="line-ns-open", size=18, color=GRID_COLOR, line_width=2),
        name="grid levels",
    )
    fig.add_vrect(x0=view.clip[0], x1=view.clip[1], fillcolor=CLIP_COLOR, line_width=0, layer="below")
    where = {"tensor": "whole tensor", "channel": f"row {row}"}.get(
        spec.granularity, f"row {row}, group {group}"
    )
    fig.update_layout(
        title=f"{name} ({where}) on the {spec.label} grid<br><sub>{_describe(spec, view)}</sub>",
        xaxis_title="weight value",
        yaxis_title="count (weights per bin)",
        bargap=0,
        template="plotly_white",
    )
    return fig


def original_vs_dequantized(
    w: torch.Tensor, spec: QuantSpec, *, max_points: int = 4000, seed: int = 0
) -> go.Figure:
    """Left: dequantized against original value (a staircase). Right: the rounding error it leaves."""
    flat = w.reshape(-1).float()
    idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:max_points]
    x = flat[idx]
    y = fake_quantize(w, spec).reshape(-1).float()[idx]
    order = torch.argsort(x)
    x, y = x[order].numpy(), y[order].numpy()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("dequantized vs original", "rounding error"))
    fig.add_scatter(
        x=x, y=x, mode="lines", line=dict(color="gray", dash="dot"), name="no error", row=1, col=1
    )
    fig.add_scatter(x=x, y=y, mode="markers", marker_size=3, name="dequantized", row=1, col=1)
    fig.add_scatter(x=x, y=y - x, mode="markers", marker_size=3, name="error", row=1, col=2)
    fig.update_xaxes(title_text="original weight value", row=1, col=1)
    fig.update_xaxes(title_text="original weight value", row=1, col=2)
    fig.update_yaxes(title_text="dequantized value", row=1, col=1)
    fig.update_yaxes(title_text="dequantized − original", row=1, col=2)
    fig.update_layout(
        title=f"Rounding to the {spec.label} grid ({len(x):,} sampled weights)", template="plotly_white"
    )
    return fig


def error_vs_bits_data(w: torch.Tensor, specs: dict[str, QuantSpec | list[QuantSpec]]) -> dict[str, list]:
    """SQNR in dB for each named series of specs (one spec per bit width): {name: [(bits, sqnr_db), ...]}."""
    return {
        name: [
            (s.bits, sqnr_db(w, fake_quantize(w, s)))
            for s in (series if isinstance(series, list) else [series])
        ]
        for name, series in specs.items()
    }


def error_vs_bits(w: torch.Tensor, series: dict[str, list[QuantSpec]], *, name: str = "weight") -> go.Figure:
    """SQNR versus bit width for each series, with the 6.02 dB-per-bit slope drawn through the first one."""
    data = error_vs_bits_data(w, series)
    fig = go.Figure()
    for label, points in data.items():
        bits, db = zip(*points)
        fig.add_scatter(x=bits, y=db, mode="lines+markers", name=label)
    first_bits, first_db = next(iter(data.values()))[0]
    all_bits = sorted({b for points in data.values() for b, _ in points})
    fig.add_scatter(
        x=all_bits,
        y=[first_db + DB_PER_BIT * (b - first_bits) for b in all_bits],
        mode="lines",
        line=dict(color="gray", dash="dash"),
        name="+6.02 dB per bit",
    )
    fig.update_layout(
        title=f"Error versus bit width on {name}",
        xaxis_title="bits per weight (codes only)",
        yaxis_title="SQNR (dB, higher is better)",
        template="plotly_white",
    )
    return fig


def granularity_errors(w: torch.Tensor, specs: list[QuantSpec]) -> list[dict]:
    """MSE, SQNR and storage per spec: the table behind 'per-tensor vs per-channel vs per-group'."""
    return [
        dict(
            spec=s.label,
            mse=mse(w, fake_quantize(w, s)),
            sqnr_db=sqnr_db(w, fake_quantize(w, s)),
            bits_per_weight=bits_per_weight(s, tuple(w.shape)),
        )
        for s in specs
    ]


def row_error_profile(w: torch.Tensor, specs: list[QuantSpec], *, name: str = "weight") -> go.Figure:
    """Mean squared rounding error of each output row, one line per spec (log scale): outlier rows stand out."""
    fig = go.Figure()
    rows = np.arange(w.shape[0])
    for s in specs:
        per_row = (fake_quantize(w, s).float() - w.float()).pow(2).mean(-1).numpy()
        fig.add_scatter(x=rows, y=per_row, mode="lines", name=s.label)
    fig.update_layout(
        title=f"Rounding error of each row of {name}",
        xaxis_title="output row (channel)",
        yaxis_title="mean squared error (log scale)",
        yaxis_type="log",
        template="plotly_white",
    )
    return fig


# --- the explorer's data: one weight, one spec, from one pass -------------------------------------------------


def shown_values(w: torch.Tensor, spec: QuantSpec, row: int) -> torch.Tensor:
    """The values whose histogram the explorer draws: the first group of `row` (all of w when per-tensor)."""
    if spec.granularity == "tensor":
        return w.reshape(-1)
    return w[row, : spec.group_size or w.shape[1]]


def histogram(values: torch.Tensor, bins: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, counts) over [-absmax, absmax], a range that holds every grid the explorer can draw."""
    edge = values.abs().max().item() or 1.0
    counts = torch.histc(values.float(), bins=bins, min=-edge, max=edge)
    edges = np.linspace(-edge, edge, bins + 1)
    return (edges[:-1] + edges[1:]) / 2, counts.numpy()


def _row_errors(w, spec, scale, zero_point, rows_per_chunk: int = 64):
    """Σ (w − ŵ)² and Σ w² of every row, a few rows at a time.

    The same arithmetic as one fake_quantize over the whole matrix, but each chunk (64 rows of a 4096-wide
    matrix: 1 MB) stays in the CPU cache through all its steps, which keeps a slider move on a 4096 × 4096
    weight fast.
    """
    row_sq = torch.empty(w.shape[0], dtype=torch.float64)
    row_signal = torch.empty(w.shape[0], dtype=torch.float64)
    for start in range(0, w.shape[0], rows_per_chunk):
        chunk = w[start : start + rows_per_chunk]
        if spec.granularity == "tensor":
            s, z = scale, zero_point
        else:
            s, z = scale[start : start + rows_per_chunk], zero_point[start : start + rows_per_chunk]
        err2 = fake_quantize(chunk, spec, s, z).sub_(chunk).pow_(2)
        row_sq[start : start + len(chunk)] = err2.sum(-1)
        row_signal[start : start + len(chunk)] = chunk.pow(2).sum(-1)
    return row_sq, row_signal


def explorer_state(w: torch.Tensor, spec: QuantSpec, row: int, hist: tuple | None = None) -> dict:
    """Everything the explorer draws for `spec`, from one pass over w (out_features, in_features).

    The histogram and the grid are those of the first group of `row` (the whole tensor when per-tensor);
    the error figures cover the whole tensor. `hist` reuses a histogram of `shown_values` computed before
    (it does not depend on bits, symmetry or clipping).
    """
    scale, zero_point = choose_qparams(w, spec)
    row_sq, row_signal = _row_errors(w, spec, scale, zero_point)
    noise, signal = row_sq.sum().item(), row_signal.sum().item()
    r = 0 if spec.granularity == "tensor" else row
    s, z = scale[r, 0].item(), zero_point[r, 0].item()
    levels = (np.arange(spec.qmin, spec.qmax + 1) - z) * s
    centers, counts = hist if hist is not None else histogram(shown_values(w, spec, row))
    return dict(
        centers=centers,
        counts=counts,
        levels=levels,
        clip=(float(levels[0]), float(levels[-1])),
        row_mse=(row_sq / w.shape[1]).float().numpy(),
        mse=noise / w.numel(),
        sqnr_db=10 * np.log10(signal / noise) if noise > 0 else float("inf"),
        bits_per_weight=bits_per_weight(spec, tuple(w.shape)),
    )
