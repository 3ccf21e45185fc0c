"""Will it fit? One stacked horizontal bar per memory plan (`qviz.memory.plan`): quantized weights, float weights,
KV cache, activations and overhead, with the memory of common GPUs as vertical lines.

The axis is in GiB (2^30 bytes) because that is what a GPU's "GB" means: a bar that ends left of the "24 GB" line
fits an RTX 4090. `bar_values` (plans in, GiB out) is what a widget writes into the traces.

>>> from qviz.memory import plan
>>> bar_values({"7B": plan("llama-2-7b", "bf16", context=4096, overhead_gib=1.0)})["KV cache"]
[2.0]
"""

from __future__ import annotations

import plotly.graph_objects as go

from qviz.memory import GPUS, GiB, MemoryPlan

__all__ = ["FIGURE_GPUS", "bar_values", "memory_figure", "title_of", "x_range"]

FIGURE_GPUS = ("8 GB", "12 GB", "16 GB (T4, RTX 4080)", "24 GB (RTX 4090, L4)", "48 GB (A6000, L40S)",
               "80 GB (A100, H100)", "141 GB (H200)")  # fmt: skip
COLORS = {"quantized weights": "#4C78A8", "float weights": "#9ECAE9", "KV cache": "#F58518",
          "activations": "#54A24B", "overhead": "#BAB0AC"}  # fmt: skip
MINE = "#E45756"  # the learner's own memory


def bar_values(plans: dict[str, MemoryPlan]) -> dict[str, list[float]]:
    """GiB of each part of `MemoryPlan.parts` (outer keys) for each plan, in the order of `plans`."""
    if not plans:
        raise ValueError("need at least one plan: {label: qviz.memory.plan(...)}")
    return {part: [p.parts[part] / GiB for p in plans.values()] for part in COLORS}


def x_range(plans: dict[str, MemoryPlan], mine: float | None = None) -> list[float]:
    """[0, a little past the largest total or `mine`]: GPU lines further right are off the axis."""
    right = max([p.total / GiB for p in plans.values()] + [mine or 0])
    return [0.0, 1.15 * right]


def title_of(plans: dict[str, MemoryPlan]) -> str:
    """The figure's title: one plan's total and setting, or a general one for several."""
    if len(plans) == 1:
        p = next(iter(plans.values()))
        return (
            f"Will it fit? {p.model}, {p.format}: {p.total / GiB:.1f} GiB at {p.batch} × {p.context:,} tokens"
        )
    return "Will it fit? Memory to run each model, against GPUs"


def memory_figure(
    plans: MemoryPlan | dict[str, MemoryPlan],
    gpus: tuple[str, ...] = FIGURE_GPUS,
    mine: float | None = None,
    *,
    title: str | None = None,
) -> go.Figure:
    """Stacked bars (one per plan, labelled by its key) in GiB; a dotted line per GPU in `gpus` (names of
    `qviz.memory.GPUS`) and, when `mine` is given, a red line at the learner's own memory in GB (shape and
    annotation last, so that a widget can move them)."""
    if isinstance(plans, MemoryPlan):
        plans = {f"{plans.model}, {plans.format}": plans}
    unknown = [g for g in gpus if g not in GPUS]
    if unknown:
        raise ValueError(f"unknown GPUs {unknown}: use names of qviz.memory.GPUS ({list(GPUS)})")
    fig = go.Figure()
    labels = list(plans)
    for part, gib in bar_values(plans).items():
        fig.add_bar(
            y=labels, x=gib, name=part, orientation="h", marker_color=COLORS[part],
            hovertemplate=f"{part}: %{{x:.2f}} GiB<extra>%{{y}}</extra>",
        )  # fmt: skip
    for gpu in gpus:
        fig.add_vline(
            x=GPUS[gpu], line_dash="dot", line_color="#555", annotation_text=gpu.split(" (")[0],
            annotation_position="top", annotation_font_size=11,
        )  # fmt: skip
    if mine is not None:
        fig.add_vline(
            x=mine, line_color=MINE, line_width=2, annotation_text=f"my GPU: {mine:g} GB",
            annotation_position="bottom right", annotation_font_color=MINE,
        )  # fmt: skip
    fig.update_layout(
        title=title or title_of(plans), barmode="stack", template="plotly_white", height=260 + 40 * len(plans),
        legend=dict(orientation="h", y=-0.35), margin=dict(t=80),
    )  # fmt: skip
    fig.update_xaxes(title_text="memory (GiB = 2³⁰ bytes: the GB on a GPU's box)", range=x_range(plans, mine))
    fig.update_yaxes(title_text="model, weight format", autorange="reversed")
    return fig
