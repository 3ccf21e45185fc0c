"""The GPTQ layer explorer: sliders over damping, block size, group size, act-order and bits on ONE linear
whose Hessian H = 2XXᵀ/n was computed once; each change re-runs GPTQ and RTN on that layer.

The score is the relative output error ‖WX − QX‖² / ‖WX‖² on the calibration inputs, computed from H alone
(`qviz.gptq.layer_output_errors`): no activations are kept. Pick a small linear (e.g. Gemma's k_proj, 256 × 640):
one GPTQ pass then takes well under a second on a CPU.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import ipywidgets as W
import plotly.graph_objects as go
import torch

from qviz.gptq import layer_output_errors
from qviz.quant import QuantSpec

__all__ = ["GPTQLayerExplorer"]

GROUP_CHOICES = ("per-channel", 32, 64, 128)
BLOCK_CHOICES = (1, 16, 32, 64, 128)


@contextmanager
def _one_thread():
    """GPTQ's column loop is thousands of small tensor ops; on a busy CPU, splitting each one over threads
    costs more than it saves (256 × 640 layer on 2 loaded cores: 0.4 s per update on one thread, 1.1-5 s
    on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class GPTQLayerExplorer:
    """Sliders on one cached layer. weight: (out_features, in_features); H: (in_features, in_features).

    `state` holds the last computation (the dict of `qviz.gptq.layer_output_errors`, plus "spec" and
    "seconds"). Captures X with `qviz.calib.capture.linear_inputs`.
    """

    def __init__(self, weight: torch.Tensor, H: torch.Tensor, name: str = "layer"):
        self.weight, self.H, self.name = weight.detach().float().cpu(), H.detach().cpu(), name
        in_features = self.weight.shape[1]
        groups = [g for g in GROUP_CHOICES if g == "per-channel" or in_features % g == 0]
        style = dict(continuous_update=False)
        self.bits = W.IntSlider(value=4, min=2, max=8, description="bits", **style)
        self.group = W.Dropdown(options=groups, value=groups[-1], description="group size")
        self.damp = W.FloatLogSlider(
            value=0.01, base=10, min=-4, max=0, step=0.5, description="damp", readout_format=".0e", **style
        )
        self.block = W.Dropdown(options=BLOCK_CHOICES, value=128, description="block size")
        self.act_order = W.Checkbox(value=True, description="act-order")
        self.summary = W.HTML()
        self.fig = self._build()
        for control in self.controls:
            control.observe(self._update, names="value")
        self._update()

    @property
    def controls(self) -> tuple:
        return (self.bits, self.group, self.damp, self.block, self.act_order)

    def spec(self) -> QuantSpec:
        if self.group.value == "per-channel":
            return QuantSpec(bits=self.bits.value)
        return QuantSpec(bits=self.bits.value, group_size=self.group.value)

    def _build(self) -> go.FigureWidget:
        fig = go.FigureWidget()
        fig.add_bar(
            x=["RTN", "GPTQ"], y=[1.0, 1.0], marker_color=["#d62728", "#2ca02c"], textposition="outside",
            text=["", ""],
        )  # fmt: skip
        fig.update_layout(
            title=f"Output error of {self.name} {tuple(self.weight.shape)}", template="plotly_white",
            xaxis_title="method", yaxis_title="‖WX − QX‖² / ‖WX‖² on calibration tokens",
            yaxis_rangemode="tozero", yaxis_exponentformat="e", width=720, height=420,
            title_font_size=15,
        )  # fmt: skip
        return fig

    def _update(self, change=None) -> None:
        spec = self.spec()
        start = time.perf_counter()
        try:
            with _one_thread():
                state = layer_output_errors(
                    self.weight, self.H, spec, damp=self.damp.value, block_size=self.block.value,
                    act_order=self.act_order.value,
                )  # fmt: skip
        except ValueError as err:  # e.g. H all zero: no input ever reached this layer. Shown, not raised.
            self._show_problem(spec, str(err))
            return
        state.update(spec=spec, seconds=time.perf_counter() - start)
        with self.fig.batch_update():
            self.fig.data[0].y = [state["rtn"], state["gptq"]]
            self.fig.data[0].text = [f"{state['rtn']:.2e}", f"{state['gptq']:.2e}"]
            self.fig.layout.title.text = (
                f"Output error of {self.name} {tuple(self.weight.shape)}, {spec.label}"
            )
        retry = f" (Cholesky needed damp={state['damp']:g})" if state["damp"] != self.damp.value else ""
        if state["rtn"] > 0:
            verdict = f"GPTQ's output error is <b>{state['gptq'] / state['rtn']:.2f}×</b> RTN's"
        elif state["rtn"] == 0:  # the weights already lie on this grid: rounding changes nothing
            verdict = (
                "RTN is exact here (the weights already lie on this grid), and so is GPTQ"
                if state["gptq"] == 0
                else f"RTN is exact here (the weights lie on this grid); GPTQ's error {state['gptq']:.2e}"
            )
        else:  # NaN: ‖WX‖ = 0, the layer's output is zero on these inputs
            verdict = "the layer's output is zero on these inputs: there is no error to compare"
        self.summary.value = f"<b>{spec.label}</b>: {verdict}{retry}; computed in {state['seconds']:.2f} s"
        self.state = state

    def _show_problem(self, spec: QuantSpec, message: str) -> None:
        """The controls ask for something that cannot be computed: say so, and show no stale bars."""
        with self.fig.batch_update():
            self.fig.data[0].y = [0.0, 0.0]
            self.fig.data[0].text = ["", ""]
            self.fig.layout.title.text = f"{self.name}, {spec.label}: nothing to show"
        self.summary.value = f"<b>{spec.label}</b>: {message}"
        self.state = dict(spec=spec, problem=message)

    def set(self, **values) -> None:
        """Move controls from code, e.g. explorer.set(bits=3, act_order=True): same path as a slider."""
        for key, value in values.items():
            getattr(self, key).value = value

    def show(self):
        return W.VBox(
            [W.HBox([W.VBox([self.bits, self.group, self.damp]), W.VBox([self.block, self.act_order])]),
             self.summary, self.fig]
        )  # fmt: skip

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
