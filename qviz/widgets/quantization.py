"""The quantization explorer: sliders for bits, granularity, symmetry and clipping over one weight matrix.

The figure is built once; every change of a control recomputes `qviz.viz.quantization.explorer_state`
(tensors in, arrays out) and writes it into the existing traces inside `fig.batch_update()`, as lists:
plotly compares a trace's old and new values, and numpy arrays there raise "truth value of an array is
ambiguous" into JupyterLab's log.
"""

from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go
import torch

from qviz.quant import QuantSpec
from qviz.viz.quantization import explorer_state, histogram, shown_values

__all__ = ["spec_from_controls", "QuantExplorer", "GRANULARITY_CHOICES"]

GRANULARITY_CHOICES = ["per-tensor", "per-channel", "group 32", "group 64", "group 128"]


def spec_from_controls(bits: int, granularity: str, symmetric: bool, clip_ratio: float) -> QuantSpec:
    """Map the explorer's control values to a QuantSpec ("group 64" -> granularity="group", group_size=64)."""
    if granularity.startswith("group"):
        return QuantSpec(
            bits=bits, symmetric=symmetric, group_size=int(granularity.split()[1]), clip_ratio=clip_ratio
        )
    return QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity[4:], clip_ratio=clip_ratio)


class QuantExplorer:
    """Sliders over one weight matrix. `QuantExplorer(w, name).show()` in a notebook; `.set(...)` from code."""

    def __init__(self, w: torch.Tensor, name: str = "weight", row: int | None = None):
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.numel() == 0:
            raise ValueError(
                "QuantExplorer shows a 2-D weight (out_features, in_features) with at least one value"
            )
        self.w = w.detach().float().cpu()
        if not torch.isfinite(self.w).all():
            raise ValueError("the weight has NaN or Inf values: only finite weights can be quantized")
        self.name = name
        # By default show the row with the largest weight: that is where a shared grid hurts most.
        self.row = int(self.w.abs().amax(1).argmax()) if row is None else row
        if not 0 <= self.row < self.w.shape[0]:
            raise ValueError(f"row must be in [0, {self.w.shape[0] - 1}], got {row}")
        self.bits = W.IntSlider(value=4, min=2, max=8, description="bits", continuous_update=False)
        # only the group sizes that divide a row: the control never offers a setting the figure cannot show
        choices = [
            g
            for g in GRANULARITY_CHOICES
            if not g.startswith("group") or self.w.shape[1] % int(g.split()[1]) == 0
        ]
        self.granularity = W.Dropdown(options=choices, value="per-channel", description="scale per")
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
        fig.update_yaxes(title_text="mean squared error (log)", type="log", exponentformat="e", row=1, col=2)
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
            self.fig.data[0].x, self.fig.data[0].y = state["centers"].tolist(), state["counts"].tolist()
            self.fig.data[1].x, self.fig.data[1].y = state["levels"].tolist(), [0.0] * len(state["levels"])
            self.fig.data[2].x = list(range(len(state["row_mse"])))
            self.fig.data[2].y = state["row_mse"].tolist()
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
