"""Beyond the mean: the per-token KL's tail, task accuracy with its confidence intervals, a QAT loss curve, and a
passage coloured token by token (notebook 10)."""

from __future__ import annotations

import html

import plotly.graph_objects as go
import torch

from ..tasks import TaskScore, paired_change


def kl_tail_figure(
    token_kls: dict[str, list[float]], title: str = "The tail of the per-token KL"
) -> go.Figure:
    """For each model, the fraction of tokens whose KL exceeds x, against x (both log): curves that cross show
    two models with one mean but different tails."""
    fig = go.Figure()
    for label, kl in token_kls.items():
        kl = torch.as_tensor(kl, dtype=torch.float64)
        x = kl.clamp(min=1e-6).sort().values  # a log axis: KL of 0 drawn at 1e-6
        above = 1 - torch.arange(len(x), dtype=torch.float64) / len(x)  # fraction of tokens with KL ≥ x[i]
        fig.add_scatter(x=x.tolist(), y=above.tolist(), mode="lines", name=f"{label} (mean {kl.mean():.3f})")
    fig.update_layout(
        title=title, height=380, legend=dict(x=0.01, y=0.02),
        xaxis=dict(title="KL(p_float ‖ p_quantized) of one token (nats)", type="log"),
        yaxis=dict(title="fraction of tokens with at least this KL", type="log"),
    )  # fmt: skip
    return fig


def task_change_figure(
    scores: dict[str, dict[str, TaskScore]],
    reference: str,
    title: str = "Accuracy change against the float model",
) -> go.Figure:
    """Per task (one colour each), each model's accuracy minus the reference's on the same items, in percentage
    points, with its 95% interval (`tasks.paired_change`). scores: {model label: {task: TaskScore}}."""
    fig = go.Figure()
    labels = [label for label in scores if label != reference]
    for task in scores[reference]:
        changes = [paired_change(scores[reference][task], scores[label][task]) for label in labels]
        fig.add_scatter(
            x=labels, y=[100 * c for c, _ in changes], mode="markers", marker=dict(size=10),
            error_y=dict(type="data", array=[100 * h for _, h in changes]),
            name=f"{task} (float {scores[reference][task].accuracy:.0%}, chance {scores[reference][task].chance:.0%})",
        )  # fmt: skip
    fig.add_hline(y=0, line=dict(color="grey", dash="dot"))
    fig.update_layout(
        title=title, height=400, xaxis_title="quantized model",
        yaxis_title="accuracy change (points, 95% interval)",
    )  # fmt: skip
    return fig


def loss_figure(title: str = "QAT: distillation loss per step") -> go.FigureWidget:
    """An empty loss curve to fill while training runs: `fig.data[0]` gets one point per step (`loss_appender`)."""
    fig = go.FigureWidget()
    fig.add_scatter(x=[], y=[], mode="lines", name="KL on the training batch")
    fig.update_layout(
        title=title, height=360, xaxis_title="step",
        yaxis_title="KL on its batch (nats/token)", showlegend=False,
    )  # fmt: skip
    return fig


def loss_appender(fig: go.FigureWidget, every: int = 1):
    """An `on_step(step, loss)` for `qat.quantize_model` that appends each step's loss to `fig` (redrawn every
    `every` steps)."""
    xs, ys = [], []

    def on_step(step: int, loss: float) -> None:
        xs.append(step + 1)
        ys.append(loss)
        if (step + 1) % every == 0:
            with fig.batch_update():
                fig.data[0].x, fig.data[0].y = list(xs), list(ys)

    return on_step


def token_delta_html(
    tokens: list[str], delta: list[float], flipped: list[bool] | None = None, scale: float = 2.0
) -> str:
    """The passage token by token, each on a colour for log p_quantized − log p_float: red where quantization made
    the true token less likely, blue where more, white where unchanged (full colour at ±`scale` nats). Tokens
    whose top-1 prediction flipped are underlined. Hover shows the number."""
    flipped = flipped or [False] * len(tokens)
    spans = []
    for token, d, flip in zip(tokens, delta, flipped, strict=True):
        a = min(abs(d) / scale, 1.0)
        colour = f"rgba(214,39,40,{a:.2f})" if d < 0 else f"rgba(31,119,180,{a:.2f})"
        underline = "text-decoration:underline;" if flip else ""
        tip = f"Δlog p = {d:+.2f} nats" + (" (top-1 changed)" if flip else "")
        text = html.escape(token).replace("\n", "↵<br>")
        spans.append(
            f'<span title="{tip}" style="background:{colour};{underline}white-space:pre-wrap">{text}</span>'
        )
    legend = (
        "<div style='font-size:85%;margin-top:6px'>colour: log p_quantized − log p_float of each true token "
        f"(<span style='background:rgba(214,39,40,1)'>&nbsp;−{scale:g} nats&nbsp;</span> … "
        f"<span style='background:rgba(31,119,180,1)'>&nbsp;+{scale:g}&nbsp;</span>); underlined: the top-1 "
        "prediction changed; hover for the number</div>"
    )
    return f"<div style='font-family:monospace;line-height:1.8'>{''.join(spans)}</div>{legend}"
