"""The AWQ group explorer: sliders over α and a clip ratio on ONE scale group whose calibration input X was
captured once; each change recomputes the group's output error, with plain rounding (RTN) beside it.

The group is one linear and the module AWQ inspects is that linear itself (e.g. up_proj -> down_proj: the
inspected output is down_proj's), so the error shown is exactly AWQ's loss for that group:

    L(α, r) = mean over tokens and outputs of (X Wᵀ − X Ŵᵀ)²,   Ŵ = Q(clip_r(W·diag(s)))·diag(s)⁻¹
    s = s_x^α / sqrt(max·min),   s_x = mean_t |X[t, :]|,   clip_r: clamp each (row, group) to ±r·max|W·s|

α = 0 and r = 1 is RTN. A single clip ratio r for every group is the slider's simplification: AWQ's search
(`qviz.awq_clip.clip_search`) picks r per (row, group). The curve is drawn on a grid of `n_grid` α values
(default 10: 0, 0.1, ..., 0.9), one rounding each, recomputed only when r moves; moving α costs one rounding,
at the exact α. Keep X to about a hundred tokens: on Gemma's down_proj (640 × 2048) one rounding plus the
output error takes about 0.2 s on a busy 2-core CPU.
"""

from __future__ import annotations

import time

import ipywidgets as W
import plotly.graph_objects as go
import torch

from qviz.awq_scale import ALPHA_GRID, alpha_curve, alpha_grid, group_output_error, output_mse
from qviz.quant import QuantSpec

__all__ = ["AWQGroupExplorer"]
_RTN, _AWQ, _GRAY = "#d62728", "#2ca02c", "#7f7f7f"


class AWQGroupExplorer:
    """Sliders α and clip ratio on one cached group. weight: (out_features, in_features); X: (tokens,
    in_features), the calibration input the linear reads (e.g. captured with `qviz.calib`).

    The figure plots the relative output error L / mean((X Wᵀ)²) against α: the curve without clipping (gray),
    the curve at the chosen clip ratio (green, recomputed when r moves), a marker at the chosen α, and RTN's
    level (red). `state` holds the last computation: alpha, clip_ratio, error, rtn (MSEs), seconds (for the
    error) and curve_seconds (for the green curve; about 0 when that clip ratio was drawn before).
    """

    def __init__(
        self, weight: torch.Tensor, X: torch.Tensor, spec: QuantSpec, name: str = "layer", *, n_grid: int = 10
    ):
        if not (isinstance(n_grid, int) and 2 <= n_grid <= 20):
            raise ValueError(f"n_grid must be an integer in [2, 20], got {n_grid!r}")
        self.alphas = alpha_grid(n_grid)  # where the curve is drawn
        self.weight = weight.detach().float().cpu()
        self.X = X.detach().reshape(-1, X.shape[-1]).float().cpu()
        self.spec, self.name = spec, name
        self.signal = output_mse(self.X, self.weight, torch.zeros_like(self.weight))  # mean (X Wᵀ)²
        self.rtn = group_output_error(self.weight, self.X, spec, 0.0, 1.0)
        self._curves: dict[float, list[float]] = {}  # clip ratio -> L(α) over self.alphas
        style = dict(continuous_update=False, readout_format=".2f")
        self.alpha = W.FloatSlider(value=0.5, min=0.0, max=0.95, step=0.05, description="α", **style)
        self.clip = W.FloatSlider(value=1.0, min=0.5, max=1.0, step=0.05, description="clip ratio", **style)
        self.summary = W.HTML()
        self.fig = self._build()
        for control in (self.alpha, self.clip):
            control.observe(self._update, names="value")
        self._update()

    def curve(self, clip_ratio: float) -> list[float]:
        key = round(clip_ratio, 4)
        if key not in self._curves:
            self._curves[key] = alpha_curve(self.weight, self.X, self.spec, key, self.alphas)
        return self._curves[key]

    def _rel(self, values) -> list[float | None]:
        """Errors relative to the output's power; None (not drawn) when the output is zero on these inputs."""
        return [v / self.signal if self.signal > 0 else None for v in values]

    def _build(self) -> go.FigureWidget:
        fig = go.FigureWidget()
        fig.add_scatter(x=list(self.alphas), y=self._rel(self.curve(1.0)), mode="lines", name="no clipping (r = 1)",
                        line=dict(color=_GRAY, dash="dot"))  # fmt: skip
        fig.add_scatter(x=list(self.alphas), y=[None] * len(self.alphas), mode="lines+markers", name="at clip ratio r",
                        line=dict(color=_AWQ))  # fmt: skip
        fig.add_scatter(x=[0.0], y=[None], mode="markers", name="chosen α",
                        marker=dict(color="black", size=13, symbol="diamond"))  # fmt: skip
        fig.add_scatter(x=[0.0, ALPHA_GRID[-1]], y=self._rel([self.rtn] * 2), mode="lines", name="RTN (α = 0, r = 1)",
                        line=dict(color=_RTN, dash="dash"))  # fmt: skip
        fig.update_layout(
            title=f"AWQ loss of {self.name} {tuple(self.weight.shape)}, {self.spec.label}", template="plotly_white",
            xaxis_title="α (s = s_x^α, normalised)", yaxis_title="‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖² on calibration tokens",
            height=420,
        )  # fmt: skip
        return fig

    def _update(self, change=None) -> None:
        """First the marker and the readout (one rounding), then the green curve if r moved to a new value."""
        alpha, ratio = self.alpha.value, self.clip.value
        start = time.perf_counter()
        error = group_output_error(self.weight, self.X, self.spec, alpha, ratio)
        state = dict(
            alpha=alpha, clip_ratio=ratio, error=error, rtn=self.rtn, seconds=time.perf_counter() - start
        )
        with self.fig.batch_update():
            self.fig.data[2].x = [alpha]
            self.fig.data[2].y = self._rel([error])
        if self.signal == 0:
            verdict = "the layer's output is zero on these inputs: there is no error to compare"
        elif self.rtn == 0:
            verdict = (
                f"RTN is exact here (the weights already lie on the grid); this α: {error / self.signal:.3e}"
            )
        else:
            verdict = (
                f"relative output error <b>{error / self.signal:.3e}</b>, RTN {self.rtn / self.signal:.3e}: "
                f"<b>{error / self.rtn:.2f}×</b> RTN's"
            )
        self.summary.value = (
            f"α = {alpha:.2f}, r = {ratio:.2f}: {verdict}; computed in {state['seconds']:.2f} s"
        )
        start = time.perf_counter()
        curve = self._rel(self.curve(ratio))  # cached per clip ratio
        state["curve_seconds"] = time.perf_counter() - start
        if list(self.fig.data[1].y) != curve:
            with self.fig.batch_update():
                self.fig.data[1].y = curve
                self.fig.data[1].name = f"at clip ratio r = {ratio:.2f}"
        self.state = state

    def set(self, **values) -> None:
        """Move controls from code, e.g. explorer.set(alpha=0.3, clip=0.9): the same path as a slider."""
        for key, value in values.items():
            getattr(self, key).value = value

    def show(self):
        return W.VBox([W.HBox([self.alpha, self.clip]), self.summary, self.fig])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
