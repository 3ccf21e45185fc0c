"""Every cached whole-model result on one chart: size (bits per weight) against error (KL, perplexity), the
Pareto front marked, every point hoverable to its settings (notebook 11)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..choose import Point, pareto_front

METRICS = {  # Point field -> axis title
    "kl": "KL to the float reference (nats/token, log)",
    "ppl": "perplexity (log)",
}


def pareto_figure(points: list[Point], title: str) -> go.Figure:
    """Two panels, KL and perplexity, against bits per decoder-linear weight (scales and zero points included):
    one colour per method, the Pareto front of each panel as a dashed line through its points. Log y axes: the
    errors span two orders of magnitude between INT8 and INT3. Hover: the run's settings and numbers."""
    if not points:
        raise ValueError("no points to draw: run the notebooks (or `qviz prepare`) to fill the cache")
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["KL to the reference", "perplexity"], horizontal_spacing=0.1
    )
    colours = dict(rtn="#7f7f7f", gptq="#1f77b4", awq="#ff7f0e", qat="#2ca02c")
    for col, metric in enumerate(METRICS, start=1):
        ys = [getattr(p, metric) for p in points]
        front = pareto_front([p.bits for p in points], ys)
        for method in dict.fromkeys(p.run.method for p in points):
            mine = [i for i, p in enumerate(points) if p.run.method == method]
            fig.add_scatter(
                x=[points[i].bits for i in mine], y=[ys[i] for i in mine], mode="markers", row=1, col=col,
                name=method.upper(), legendgroup=method, showlegend=col == 1,
                marker=dict(size=[13 if front[i] else 8 for i in mine], color=colours.get(method, "#9467bd"),
                            line=dict(width=[2 if front[i] else 0 for i in mine], color="black")),
                text=[_hover(points[i], front[i]) for i in mine], hovertemplate="%{text}<extra></extra>",
            )  # fmt: skip
        on = sorted((p.bits, y) for p, y, f in zip(points, ys, front, strict=True) if f)
        fig.add_scatter(
            x=[x for x, _ in on], y=[y for _, y in on], mode="lines", line=dict(dash="dash", color="black", width=1),
            name="Pareto front", legendgroup="front", showlegend=col == 1, hoverinfo="skip", row=1, col=col,
        )  # fmt: skip
        fig.update_yaxes(type="log", title_text=METRICS[metric], row=1, col=col)
        fig.update_xaxes(title_text="bits per decoder-linear weight (scales, zeros included)", row=1, col=col)
    reference, xs = points[0].ref_ppl, [p.bits for p in points]  # a trace, not add_hline: on a log axis
    fig.add_scatter(  # an hline's annotation is placed in log10 units and stretches the axis
        x=[min(xs), max(xs)], y=[reference, reference], mode="lines", line=dict(color="grey", dash="dot"),
        name=f"float reference ({reference:.2f})", hoverinfo="skip", row=1, col=2,
    )  # fmt: skip
    fig.update_layout(title=title, height=430, legend=dict(orientation="h", y=-0.22))
    return fig


def _hover(p: Point, on_front: bool) -> str:
    return (
        f"<b>{p.label}</b>{' (Pareto front)' if on_front else ''}<br>{p.settings}<br>"
        f"{p.bits:.3f} bits per weight; weights {p.weights_gb * 1e3:.0f} MB<br>"
        f"KL {p.kl:.4f} (p99 {p.kl_p99:.3f}); perplexity {p.ppl:.2f} (float {p.ref_ppl:.2f}); top-1 {p.top1:.1%}"
    )
