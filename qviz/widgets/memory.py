"""The memory planner: pick a model, a weight format, a context, a batch, a KV-cache format and your own GPU's
memory, and see whether it fits. It only draws: `qviz.memory.plan` computes every number, `qviz.viz.memory` builds
the figure once, and each change writes the new bars, title, range and "my GPU" line into it in place."""

from __future__ import annotations

import html

import ipywidgets as W
import plotly.graph_objects as go

from qviz.memory import EXAMPLES, WeightFormat, plan
from qviz.models import OFFLINE_MODELS, is_installed
from qviz.viz.memory import bar_values, memory_figure, title_of, x_range

__all__ = ["CONTEXTS", "FORMAT_CHOICES", "KV_CHOICES", "MemoryPlanner"]

FORMAT_CHOICES = {  # label -> WeightFormat: what the format dropdown offers
    "BF16 (no quantization)": WeightFormat("bf16"),
    "FP8 (per-channel scales)": WeightFormat("fp8"),
    "INT8 per-channel (compressed-tensors)": WeightFormat(bits=8, group_size=None),
    "INT4 g128 (compressed-tensors)": WeightFormat(bits=4, group_size=128),
    "INT4 g128 (GPTQ)": WeightFormat("gptq", bits=4, group_size=128),
    "INT4 g32 asymmetric (compressed-tensors)": WeightFormat(bits=4, group_size=32, symmetric=False),
    "INT3 g128 (GPTQ)": WeightFormat("gptq", bits=3, group_size=128),
    "NF4 (bitsandbytes)": WeightFormat("nf4"),
    "NF4 + double quantization": WeightFormat("nf4", double_quant=True),
    "MXFP4": WeightFormat("mxfp4"),
    "NVFP4": WeightFormat("nvfp4"),
    **{f"GGUF {t}": WeightFormat(t) for t in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K", "Q2_K")},
}
CONTEXTS = [2**k for k in range(8, 18)]  # 256 .. 131,072 tokens
KV_CHOICES = ("fp16", "fp8_e4m3", "int8", "int4", "int2")


class MemoryPlanner:
    """`MemoryPlanner()` in a notebook; `.set(model=..., context=...)` from code. A choice that cannot be planned
    (a group size that does not divide a row) is named in the verdict line, and the bars go to zero."""

    def __init__(self, model: str = "llama-2-7b", memory_gb: float = 8.0):
        models = [m for m in OFFLINE_MODELS if is_installed(m)] + list(EXAMPLES)
        if model not in models:
            raise ValueError(f"model must be one of {models}, got {model!r}")
        self.model = W.Dropdown(options=models, value=model, description="model")
        self.format = W.Dropdown(
            options=list(FORMAT_CHOICES), value="INT4 g128 (GPTQ)", description="weights"
        )
        self.context = W.SelectionSlider(
            options=CONTEXTS, value=4096, description="context", continuous_update=False
        )
        self.batch = W.IntSlider(value=1, min=1, max=64, description="batch", continuous_update=False)
        self.kv = W.Dropdown(options=KV_CHOICES, value="fp16", description="KV cache")
        self.memory = W.BoundedFloatText(
            value=memory_gb,
            min=0.5,
            max=4096,
            step=0.5,
            description="my GPU (GB)",
            style={"description_width": "initial"},
        )
        self.controls = (self.model, self.format, self.context, self.batch, self.kv, self.memory)
        self.verdict = W.HTML()
        # the figure's traces and lines, built once from any plan: `_update` writes the chosen plan into them
        self.fig = go.FigureWidget(memory_figure({"plan": plan("llama-2-7b")}, mine=self.memory.value))
        for control in self.controls:
            control.observe(self._update, names="value")
        self._update()

    def _plan(self):
        return plan(
            self.model.value, FORMAT_CHOICES[self.format.value], context=self.context.value,
            batch=self.batch.value, kv=self.kv.value,
        )  # fmt: skip

    def _update(self, change=None) -> None:
        mine = self.memory.value
        try:
            self.plan = self._plan()
        except ValueError as err:  # e.g. group size 128 on SmolLM2's rows of 576: say what is allowed
            self.plan = None
            self.verdict.value = f"<b style='color:#b00'>cannot plan this: {html.escape(str(err))}</b>"
        plans = {"plan": self.plan} if self.plan else {}
        values = bar_values(plans) if plans else {trace.name: [0.0] for trace in self.fig.data}
        with self.fig.batch_update():
            for trace in self.fig.data:
                trace.x = values[trace.name]
                trace.y = [f"{self.model.value}, {self.format.value}"]
            self.fig.layout.title.text = (
                title_of(plans) if plans else "Will it fit? (no plan: see the message)"
            )
            self.fig.layout.xaxis.range = x_range(plans, mine) if plans else [0.0, 1.15 * mine]
            self.fig.layout.shapes[-1].x0 = self.fig.layout.shapes[-1].x1 = mine
            self.fig.layout.annotations[-1].x = mine
            self.fig.layout.annotations[-1].text = f"my GPU: {mine:g} GB"
        if self.plan:
            line = html.escape(self.plan.verdict(mine))
            self.verdict.value = f"<b style='color:{'#080' if self.plan.fits(mine) else '#b00'}'>{line}</b>"

    def set(self, **values) -> None:
        """Move controls from code, e.g. `planner.set(model="llama-3-70b", format="GGUF Q4_K_M", context=8192)`."""
        for key, value in values.items():
            getattr(self, key).value = value

    def show(self):
        return W.VBox(
            [W.HBox([W.VBox([self.model, self.format, self.kv]), W.VBox([self.context, self.batch, self.memory])]),
             self.verdict, self.fig]
        )  # fmt: skip

    def _ipython_display_(self):
        from IPython.display import display

        display(self.show())
