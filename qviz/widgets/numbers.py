"""The float-format explorer: type a number, pick a format, see its bits and what it rounds to.

The bit-box figure is built once; each change recomputes the pure `format_explorer_state` (text and
format name in, trace data and label out) and writes it into the existing traces inside `fig.batch_update()`.
"""

from __future__ import annotations

import math

import ipywidgets as W
import plotly.graph_objects as go

from qviz.formats import FORMATS, range_and_spacing
from qviz.viz.numbers import FIELD_COLORS, bit_layout_data

__all__ = ["format_explorer_state", "FormatExplorer"]


def format_explorer_state(text: str, fmt: str) -> dict:
    """What the explorer shows for the typed `text` in format `fmt`.

    Returns {"ok": bool, "label": HTML str, "layout": bit_layout_data(...) or None}. Text that is not a
    number, or NaN in a format without NaN, gives ok=False and a label that says why (never an exception).

    >>> format_explorer_state("0.1", "bf16")["layout"]["fields"].stored
    0.10009765625
    """
    try:
        value = float(text.strip().replace("_", ""))
    except ValueError:
        return {
            "ok": False,
            "label": f"<b>{text!r}</b> is not a number: try 0.1, 70000, 1e-8, inf",
            "layout": None,
        }
    try:
        layout = bit_layout_data(value, fmt)
    except ValueError as err:
        return {"ok": False, "label": f"<b>{fmt}</b>: {err}", "layout": None}
    f = layout["fields"]
    if not math.isfinite(value):
        error = "not a finite number"
    elif math.isfinite(f.error):
        rel = f" ({abs(f.error / value):.2%} of the value)" if value else ""
        error = f"rounding error <b>{f.error:+.6g}</b>{rel}"
    else:
        error = f"the value does not fit: the largest {fmt} value is {range_and_spacing(fmt).max:g}"
    label = (
        f"{value!r} in <b>{fmt}</b> ({len(f.bits)} bits {f.bits}) stores <b>{f.stored!r}</b>; {error}"
        f"<br><code>{f.explain()}</code>"
    )
    return {"ok": True, "label": label, "layout": layout}


class FormatExplorer:
    """A value box, a magnitude slider and a format dropdown over one bit-box figure.

    `FormatExplorer().show()` in a notebook. The text box holds the value (any float Python reads, "inf"
    and "nan" included); the log slider moves its magnitude from 1e-9 to 1e6 and keeps its sign.
    """

    def __init__(self, value: float | str = 0.1, fmt: str = "bf16"):
        self.value = W.Text(value=str(value), description="value", continuous_update=False)
        self.magnitude = W.FloatLogSlider(
            value=0.1, base=10, min=-9, max=6, step=0.01, description="|value|", readout_format=".4g",
            continuous_update=False,
        )  # fmt: skip
        self.fmt = W.Dropdown(options=list(FORMATS), value=fmt, description="format")
        self.summary = W.HTML()
        self.fig = self._build()
        self._syncing = False  # set while the text box moves the slider, so the slider does not write back
        for control in (self.value, self.fmt):
            control.observe(self._update, names="value")
        self.magnitude.observe(self._slider_moved, names="value")
        self._update()

    def _build(self) -> go.FigureWidget:
        fig = go.FigureWidget()
        for color in FIELD_COLORS:
            fig.add_bar(
                x=[], y=[], text=[], marker_color=color, width=0.92, textposition="inside",
                insidetextanchor="middle", textfont=dict(size=16, color="white"), hoverinfo="text",
            )  # fmt: skip
        fig.update_layout(
            title="bits", template="plotly_white", height=260, bargap=0, legend=dict(orientation="h", y=-0.45),
            margin=dict(t=50, b=10), xaxis=dict(title="bit position (0 = most significant, stored leftmost)"),
            yaxis=dict(visible=False, range=[0, 1.05]),
        )  # fmt: skip
        return fig

    def _slider_moved(self, change) -> None:
        if self._syncing:
            return
        negative = self.state["ok"] and math.copysign(1.0, self.state["layout"]["fields"].value) < 0
        magnitude = float(f"{change['new']:.4g}")  # a log slider lands on long decimals; keep 4 digits
        self.value.value = repr(-magnitude if negative else magnitude)

    def _update(self, change=None) -> None:
        state = format_explorer_state(self.value.value, self.fmt.value)
        self.summary.value = state["label"]
        self.state = state
        if not state["ok"]:
            return
        magnitude = abs(state["layout"]["fields"].value)
        if 1e-9 <= magnitude <= 1e6 and magnitude != self.magnitude.value:
            self._syncing = True
            self.magnitude.value = magnitude
            self._syncing = False
        with self.fig.batch_update():
            for trace, data in zip(self.fig.data, state["layout"]["traces"]):
                trace.x, trace.y, trace.text = data["x"], [1] * len(data["x"]), data["text"]
                trace.name, trace.hovertext, trace.showlegend = (
                    data["name"],
                    data["hovertext"],
                    bool(data["x"]),
                )
            self.fig.layout.title.text = state["layout"]["title"]
            self.fig.layout.xaxis.dtick = 1 if len(state["layout"]["fields"].bits) <= 16 else 2

    def set(self, value=None, fmt: str | None = None) -> None:
        """Change the controls from code, e.g. `explorer.set(value=70000, fmt="fp16")`."""
        if value is not None:
            self.value.value = str(value)
        if fmt is not None:
            self.fmt.value = fmt

    def show(self):
        return W.VBox([W.HBox([self.value, self.magnitude, self.fmt]), self.summary, self.fig])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
