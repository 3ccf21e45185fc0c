"""The layer explorer: pick a decoder layer and one of its linears, see its input channels and its rounding error."""

from __future__ import annotations

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from qviz.quant import QuantSpec
from qviz.stats import layer_error

__all__ = ["LayerExplorer"]


class LayerExplorer:
    """Sliders over layer, linear, bits and group size for a model whose activation statistics were collected.

    weights: {'layers.{i}.{name}': weight tensor}; stats: {same key: ChannelStats} from qviz.stats.activation_stats.
    """

    def __init__(self, weights: dict[str, torch.Tensor], stats: dict, title: str = "model"):
        self.weights = {k: v.detach().float().cpu() for k, v in weights.items()}
        self.stats = stats
        self.title = title
        n_layers = 1 + max(int(k.split(".")[1]) for k in weights)
        names = list(dict.fromkeys(k.split(".", 2)[2] for k in weights))
        self.layer = W.IntSlider(value=0, min=0, max=n_layers - 1, description="layer")
        self.linear = W.Dropdown(options=names, value=names[-1], description="linear")
        self.bits = W.IntSlider(value=4, min=2, max=8, description="bits")
        self.group = W.Dropdown(options=["per-channel", 32, 64, 128], value=64, description="group size")
        self.summary = W.HTML()
        self.fig = self._build()
        for control in (self.layer, self.linear, self.bits, self.group):
            control.observe(self._update, names="value")
        self._update()

    @property
    def key(self) -> str:
        return f"layers.{self.layer.value}.{self.linear.value}"

    def _build(self) -> go.FigureWidget:
        fig = go.FigureWidget(
            make_subplots(
                rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                subplot_titles=("activation mean |x| per input channel", "rounding error per input column"),
            )
        )  # fmt: skip
        # points on log axes (values span decades): bars there would start at an arbitrary floor
        fig.add_scatter(
            x=[], y=[], mode="markers", marker=dict(color="#1f77b4", size=3), name="mean |x|", row=1, col=1
        )
        fig.add_scatter(
            x=[],
            y=[],
            mode="markers",
            marker=dict(color="#d62728", size=3),
            name="squared error",
            row=2,
            col=1,
        )
        # no fixed dtick: a panel spanning less than a decade then still gets several labelled ticks
        fig.update_yaxes(title_text="mean |x| (log)", type="log", exponentformat="e", row=1, col=1)
        fig.update_yaxes(title_text="Σ (w − ŵ)² (log)", type="log", exponentformat="e", row=2, col=1)
        fig.update_xaxes(title_text="input channel", row=2, col=1)
        fig.update_layout(template="plotly_white", width=980, height=480, showlegend=False)
        return fig

    def spec_for(self, in_features: int) -> QuantSpec | None:
        if self.group.value == "per-channel":
            return QuantSpec(bits=self.bits.value)
        if in_features % self.group.value:
            return None
        return QuantSpec(bits=self.bits.value, group_size=self.group.value)

    def _update(self, change=None) -> None:
        w, stats = self.weights[self.key], self.stats[self.key]
        spec = self.spec_for(w.shape[1])
        channels = np.arange(w.shape[1])
        if spec is None:  # say so, and show no stale figure: the controls and the figure must agree
            message = f"group size {self.group.value} does not divide in_features {w.shape[1]}: pick another"
            with self.fig.batch_update():
                for trace in self.fig.data:
                    trace.x, trace.y = [], []
                self.fig.layout.title.text = f"{self.title}: {self.key} {tuple(w.shape)}: {message}"
            self.summary.value = message
            self.state = dict(problem=message)
            return
        err = layer_error(w, stats.mean_abs, spec)
        with self.fig.batch_update():
            self.fig.data[0].x, self.fig.data[0].y = channels.tolist(), stats.mean_abs.tolist()
            self.fig.data[1].x, self.fig.data[1].y = channels.tolist(), err["column_error"].tolist()
            self.fig.layout.title.text = f"{self.title}: {self.key} {tuple(w.shape)}, {spec.label}"
        ratio = stats.mean_abs.max().item() / stats.mean_abs.median().item()
        self.summary.value = (
            f"<b>{self.key}</b> at <b>{spec.label}</b>: weight SQNR {err['weight_sqnr_db']:.1f} dB, "
            f"activation-weighted SQNR <b>{err['weighted_sqnr_db']:.1f} dB</b>; "
            f"largest input channel is {ratio:.0f}× the median"
        )
        self.state = err

    def set(self, **values) -> None:
        for key, value in values.items():
            getattr(self, key).value = value

    def show(self):
        return W.VBox(
            [
                W.HBox([W.VBox([self.layer, self.linear]), W.VBox([self.bits, self.group])]),
                self.summary,
                self.fig,
            ]
        )

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
