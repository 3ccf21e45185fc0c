"""The quantization explorer: sliders for bits, granularity, symmetry and clipping over one weight matrix.

The figure is built once; every change of a control recomputes the pure `explorer_state` (tensors in,
arrays out) and writes it into the existing traces inside `fig.batch_update()`.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch

from qviz.quant import QuantSpec, bits_per_weight, choose_qparams, fake_quantize

__all__ = [
    "explorer_state",
    "shown_values",
    "histogram",
    "spec_from_controls",
    "QuantExplorer",
    "GRANULARITY_CHOICES",
]

GRANULARITY_CHOICES = ["per-tensor", "per-channel", "group 32", "group 64", "group 128"]


def spec_from_controls(bits: int, granularity: str, symmetric: bool, clip_ratio: float) -> QuantSpec:
    """Map the explorer's control values to a QuantSpec ("group 64" -> granularity="group", group_size=64)."""
    if granularity.startswith("group"):
        return QuantSpec(
            bits=bits, symmetric=symmetric, group_size=int(granularity.split()[1]), clip_ratio=clip_ratio
        )
    return QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity[4:], clip_ratio=clip_ratio)


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


class QuantExplorer:
    """Sliders over one weight matrix. `QuantExplorer(w, name).show()` in a notebook; `.set(...)` from code."""

    def __init__(self, w: torch.Tensor, name: str = "weight", row: int | None = None):
        self.w = w.detach().float().cpu()
        self.name = name
        # By default show the row with the largest weight: that is where a shared grid hurts most.
        self.row = int(self.w.abs().amax(1).argmax()) if row is None else row
        self.bits = W.IntSlider(value=4, min=2, max=8, description="bits", continuous_update=False)
        self.granularity = W.Dropdown(
            options=GRANULARITY_CHOICES, value="per-channel", description="scale per"
        )
        self.symmetric = W.ToggleButtons(options=[("symmetric", True), ("asymmetric", False)], value=True)
        self.clip = W.FloatSlider(
            value=1.0, min=0.3, max=1.0, step=0.05, description="clip ratio", continuous_update=False
        )
        self.summary = W.HTML()
        self._histograms = {}  # (granularity, row) -> histogram; it does not change with bits or clipping
        self.fig = self._build()
        for control in (self.bits, self.granularity, self.symmetric, self.clip):
            control.observe(self._update, names="value")
        self._update()

    @property
    def spec(self) -> QuantSpec:
        return spec_from_controls(
            self.bits.value, self.granularity.value, self.symmetric.value, self.clip.value
        )

    def _build(self) -> go.FigureWidget:
        from plotly.subplots import make_subplots

        fig = go.FigureWidget(
            make_subplots(
                rows=1,
                cols=2,
                column_widths=[0.55, 0.45],
                subplot_titles=("values and grid", "rounding error per row"),
            )
        )
        fig.add_bar(x=[], y=[], name="weights", marker_color="#1f77b4", row=1, col=1)
        fig.add_scatter(
            x=[], y=[], mode="markers", name="grid levels", row=1, col=1,
            marker=dict(symbol="line-ns-open", size=16, color="#d62728", line_width=2),
        )  # fmt: skip
        fig.add_scatter(x=[], y=[], mode="lines", name="row MSE", row=1, col=2, line_color="#2ca02c")
        fig.add_vrect(
            x0=0, x1=0, fillcolor="rgba(255,127,14,0.15)", line_width=0, layer="below", row=1, col=1
        )
        fig.update_xaxes(title_text="weight value", row=1, col=1)
        fig.update_yaxes(title_text="count (weights per bin)", row=1, col=1)
        fig.update_xaxes(title_text="output row (channel)", row=1, col=2)
        fig.update_yaxes(
            title_text="mean squared error (log)", type="log", dtick=1, exponentformat="e", row=1, col=2
        )
        fig.update_layout(
            bargap=0, template="plotly_white", width=980, height=440, title_font_size=15,
            legend=dict(orientation="h", y=-0.2),
        )  # fmt: skip
        return fig

    def _update(self, change=None) -> None:
        spec = self.spec
        key = (spec.granularity, spec.group_size)
        if key not in self._histograms:
            self._histograms[key] = histogram(shown_values(self.w, spec, self.row))
        state = explorer_state(self.w, spec, self.row, self._histograms[key])
        where = {"tensor": "whole tensor", "channel": f"row {self.row}"}.get(
            spec.granularity, f"row {self.row}, group 0"
        )
        with self.fig.batch_update():
            self.fig.data[0].x, self.fig.data[0].y = state["centers"], state["counts"]
            self.fig.data[1].x, self.fig.data[1].y = state["levels"], np.zeros_like(state["levels"])
            self.fig.data[2].x, self.fig.data[2].y = np.arange(len(state["row_mse"])), state["row_mse"]
            self.fig.layout.shapes[0].x0, self.fig.layout.shapes[0].x1 = state["clip"]
            self.fig.layout.title.text = f"{self.name}: {spec.label} ({where}; shaded: the grid's range)"
        self.summary.value = (
            f"<b>{spec.label}</b>, clip ratio {spec.clip_ratio:.2f}: MSE {state['mse']:.3g}, "
            f"SQNR <b>{state['sqnr_db']:.1f} dB</b>, storage {state['bits_per_weight']:.3f} bits/weight"
        )
        self.state = state

    def set(self, **values) -> None:
        """Move controls from code, e.g. `explorer.set(bits=3, granularity="group 64")`."""
        for key, value in values.items():
            getattr(self, {"clip_ratio": "clip"}.get(key, key)).value = value

    def show(self):
        controls = W.HBox([W.VBox([self.bits, self.clip]), W.VBox([self.granularity, self.symmetric])])
        return W.VBox([controls, self.summary, self.fig])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
