"""Explorers for notebook 08 on one real linear: `ActQuantExplorer` (activation bits and granularity, and
LLM.int8()'s outlier threshold) and `SmoothQuantExplorer` (an α slider over the per-channel maxima, beside the
whole model's measured KL against α).

ActQuantExplorer: the error of every bit width was computed on construction, so moving bits or granularity only
moves a marker; moving the threshold runs one LLM.int8() product of the layer (tens of milliseconds).

Moving α recomputes only s = `qviz.smooth.smooth_scales(act_max, weight_max, α)` (a few hundred numbers) and
redraws: the maxima were captured once (`qviz.act.channel_absmax`) and the model's KL at each α of the sweep was
measured beforehand, so the slider answers at once. The marker on the KL curve sits at the swept α nearest the
slider's.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from qviz import llm_int8
from qviz.act import ACT_GRANULARITIES, ActSpec, output_error
from qviz.smooth import smooth_scales
from qviz.viz.activations import (
    act_bits_figure,
    max_over_median,
    metric_vs_alpha_figure,
    outlier_threshold_figure,
    smoothing_figure,
)

__all__ = ["ActQuantExplorer", "SmoothQuantExplorer"]

BITS = list(range(2, 9))  # the activation widths the explorer offers: int2 ... int8


class ActQuantExplorer:
    """X (tokens, in_features): one linear's captured input; W (out_features, in_features): its weight.
    Controls: activation bits (2-8) and granularity (per-tensor or per-token, dynamic), and LLM.int8()'s
    threshold. `state` holds the last drawing: bits, granularity, error (input alone quantized), threshold,
    n_float (channels kept in float) and int8_error (LLM.int8()'s output error)."""

    def __init__(self, X: torch.Tensor, W: torch.Tensor, *, name: str):
        if X.dim() != 2 or W.dim() != 2 or X.shape[1] != W.shape[1]:
            raise ValueError(
                f"X must be (tokens, in_features) and W (out_features, in_features) with one in_features, got "
                f"{tuple(X.shape)} and {tuple(W.shape)}"
            )
        self.X, self.W, self.name = X.float().cpu(), W.float().cpu(), name
        self.state = {}
        self.errors = {
            g: [output_error(self.X, self.W, ActSpec(f"int{b}", g)) for b in BITS] for g in ACT_GRANULARITIES
        }  # granularity -> error per bit width: the curves, computed once
        self.col_max = self.X.abs().amax(0)
        self.int8_error = llm_int8.output_error(self.X, self.W, math.inf)[0]
        self.bits = widgets.IntSlider(
            value=8, min=BITS[0], max=BITS[-1], description="bits", continuous_update=False
        )
        self.granularity = widgets.ToggleButtons(
            options=list(ACT_GRANULARITIES), value="per-tensor", description="scale"
        )
        self.threshold = widgets.FloatLogSlider(
            value=6.0,
            base=10,
            min=-0.5,
            max=2,
            step=0.05,
            description="threshold",
            continuous_update=False,
            readout_format=".2f",
        )  # 0.32 ... 100, log steps
        self.summary = widgets.HTML()
        self.bits_fig = go.FigureWidget(act_bits_figure(BITS, self.errors, name=name, at=("per-tensor", 8)))
        self.outlier_fig = go.FigureWidget(self._outlier_figure())
        for control in (self.bits, self.granularity):
            control.observe(self._update_bits, names="value")
        self.threshold.observe(self._update_threshold, names="value")
        self._update_bits()
        self._update_threshold()

    def _outlier_figure(self) -> go.Figure:
        error, n_float = llm_int8.output_error(self.X, self.W, self.threshold.value)
        self.state.update(threshold=self.threshold.value, n_float=n_float, int8_error=error)
        return outlier_threshold_figure(self.col_max, self.threshold.value, name=self.name, error=error,
                                        n_float=n_float, error_int8=self.int8_error)  # fmt: skip

    def _update_bits(self, change=None) -> None:
        at = (self.granularity.value, self.bits.value)
        marker = act_bits_figure(BITS, self.errors, name=self.name, at=at).data[-1]
        with self.bits_fig.batch_update():
            self.bits_fig.data[-1].x, self.bits_fig.data[-1].y = marker.x, marker.y
            self.bits_fig.data[-1].name = marker.name
        error = self.errors[at[0]][BITS.index(at[1])]
        self.state.update(bits=at[1], granularity=at[0], error=error)
        self._summarize()

    def _update_threshold(self, change=None) -> None:
        fresh = self._outlier_figure()
        with self.outlier_fig.batch_update():
            self.outlier_fig.data[1].y, self.outlier_fig.data[1].name = fresh.data[1].y, fresh.data[1].name
            self.outlier_fig.layout.title = fresh.layout.title
        self._summarize()

    def _summarize(self) -> None:
        s = self.state
        if "n_float" not in s or "bits" not in s:
            return
        self.summary.value = (
            f"A{s['bits']} {s['granularity']}: output error {s['error']:.2e} (weights in float). "
            f"LLM.int8() at threshold {s['threshold']:.2f}: {s['n_float']} of {len(self.col_max)} channels in float, "
            f"output error {s['int8_error']:.2e} (vector-wise INT8 alone: {self.int8_error:.2e})"
        )

    def set(self, **values) -> None:
        """Move controls from code, e.g. explorer.set(bits=4, granularity="per-token", threshold=3.0)."""
        for key, value in values.items():
            getattr(self, key).value = value

    def show(self):
        controls = widgets.HBox([self.bits, self.granularity])
        return widgets.VBox([controls, self.bits_fig, self.threshold, self.outlier_fig, self.summary])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())


class SmoothQuantExplorer:
    """act_max, weight_max: (in_features,) maxima of one linear's input X and weight columns W[:, j];
    sweep: {"alpha": [...], "kl": [...]} measured on the whole model; baseline: the unsmoothed model's KL.
    `state` holds the last drawing: alpha, act_ratio and weight_ratio (max/median after smoothing)."""

    def __init__(
        self, act_max: torch.Tensor, weight_max: torch.Tensor, sweep: dict, *, name: str, baseline: float
    ):
        if act_max.shape != weight_max.shape or act_max.dim() != 1:
            raise ValueError(
                f"act_max and weight_max must be two vectors of one length (in_features), got "
                f"{tuple(act_max.shape)} and {tuple(weight_max.shape)}"
            )
        if not sweep.get("alpha") or len(sweep["alpha"]) != len(sweep.get("kl", ())):
            raise ValueError("sweep needs equally long lists 'alpha' and 'kl' (the measured curve)")
        self.act_max, self.weight_max = act_max.float().cpu(), weight_max.float().cpu()
        self.sweep, self.name, self.baseline = sweep, name, baseline
        self.alpha = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="α",
                                   continuous_update=False, readout_format=".2f")  # fmt: skip
        self.summary = widgets.HTML()
        s = smooth_scales(self.act_max, self.weight_max, self.alpha.value)
        self.channels = go.FigureWidget(
            smoothing_figure(self.act_max, self.weight_max, s, name=name, alpha=self.alpha.value)
        )  # traces: activations before, weights before, activations after, weights after
        self.curve = go.FigureWidget(
            metric_vs_alpha_figure(sweep["alpha"], sweep["kl"], metric="KL to the float model (nats/token)",
                                   baseline=baseline, baseline_name="W8A8 without smoothing", at=0.5)
        )  # fmt: skip
        self.alpha.observe(self._update, names="value")
        self._update()

    def _update(self, change=None) -> None:
        alpha = self.alpha.value
        s = smooth_scales(self.act_max, self.weight_max, alpha)
        fresh = smoothing_figure(self.act_max, self.weight_max, s, name=self.name, alpha=alpha)
        marker = metric_vs_alpha_figure(self.sweep["alpha"], self.sweep["kl"], metric="", at=alpha).data[-1]
        with self.channels.batch_update():
            for i in (2, 3):
                self.channels.data[i].y = fresh.data[i].y
            self.channels.layout.title = fresh.layout.title
        with self.curve.batch_update():
            self.curve.data[-1].x, self.curve.data[-1].y = marker.x, marker.y
            self.curve.data[-1].name = marker.name
        ratio = max_over_median
        self.state = dict(
            alpha=alpha, act_ratio=ratio(self.act_max / s), weight_ratio=ratio(self.weight_max * s)
        )
        self.summary.value = (
            f"α = {alpha:.2f}: activation max/median {self.state['act_ratio']:.1f}× "
            f"(was {ratio(self.act_max):.0f}×), weight max/median {self.state['weight_ratio']:.1f}× "
            f"(was {ratio(self.weight_max):.1f}×)"
        )

    def set(self, **values) -> None:
        """Move controls from code, e.g. explorer.set(alpha=0.8): the same path as the slider."""
        for key, value in values.items():
            getattr(self, key).value = value

    def show(self):
        return widgets.VBox([self.alpha, self.summary, self.channels, self.curve])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
