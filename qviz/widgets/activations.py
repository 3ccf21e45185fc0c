"""The SmoothQuant explorer: an α slider over one linear's per-channel maxima, beside the whole model's measured
KL against α.

Moving α recomputes only s = `qviz.smooth.smooth_scales(act_max, weight_max, α)` (a few hundred numbers) and
redraws: the maxima were captured once (`qviz.act.channel_absmax`) and the model's KL at each α of the sweep was
measured beforehand, so the slider answers at once. The marker on the KL curve sits at the swept α nearest the
slider's.
"""

from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go
import torch

from qviz.smooth import smooth_scales
from qviz.viz.activations import max_over_median, metric_vs_alpha_figure, smoothing_figure

__all__ = ["SmoothQuantExplorer"]


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
        self.alpha = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="α",
                                   continuous_update=False, readout_format=".2f")  # fmt: skip
        self.summary = W.HTML()
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
        return W.VBox([self.alpha, self.summary, self.channels, self.curve])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
