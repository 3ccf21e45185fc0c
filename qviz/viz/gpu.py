"""Why batch-1 decoding is limited by memory bandwidth, and what that predicts for 4-bit weights.

To produce one token at batch 1, the model multiplies one activation vector by every weight matrix, so every
weight is read from memory once per token (the lm_head too; the embedding lookup reads one row only). Each
weight read feeds only 2 FLOPs (a multiply and an add), far too little work to keep the arithmetic units busy,
so the time per token is bounded below by the bytes moved:

    t_token >= bytes_per_token / bandwidth          tokens/s <= bandwidth / bytes_per_token

Halving the bytes halves the bound. `bandwidth_rows` computes it (pure numbers, unit-tested);
`bandwidth_figure` draws it.

>>> rows = bandwidth_rows({"FP16": {"linears": 2e9}}, {"laptop": 100})
>>> round(rows[0]["tokens_per_s"], 1), round(rows[0]["ms_per_token"], 1)
(50.0, 20.0)
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["BANDWIDTHS_GBPS", "bandwidth_rows", "bandwidth_figure"]

# Peak memory bandwidth in GB/s (1 GB = 1e9 bytes): an H100 SXM's HBM3, and a typical laptop's dual-channel DDR5
BANDWIDTHS_GBPS = {"H100 (HBM3, 3350 GB/s)": 3350.0, "laptop (DDR5, 100 GB/s)": 100.0}
_COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2"]


def bandwidth_rows(
    bytes_per_token: dict[str, dict[str, float]], bandwidths_gbps: dict[str, float]
) -> list[dict]:
    """The bandwidth bound for every (weight format, device).

    bytes_per_token: format -> {component -> bytes read per token}, e.g.
        {"FP16": {"decoder linears": 2.0e8, "lm_head": 3.4e8}, "INT4": {...}}
    bandwidths_gbps: device -> bandwidth in GB/s (1e9 bytes per second).
    Returns one dict per (format, device), formats outer: {"format", "device", "bytes_per_token",
    "bandwidth_gbps", "ms_per_token" (the lower bound), "tokens_per_s" (the upper bound)}.
    """
    if not bytes_per_token or not bandwidths_gbps:
        raise ValueError("need at least one weight format and one device")
    rows = []
    for fmt, parts in bytes_per_token.items():
        total = float(sum(parts.values()))
        if not parts or total <= 0 or min(parts.values()) < 0:
            raise ValueError(f"{fmt}: bytes per token must be >= 0 and not all zero, got {parts}")
        for device, gbps in bandwidths_gbps.items():
            if gbps <= 0:
                raise ValueError(f"{device}: bandwidth must be > 0 GB/s, got {gbps}")
            seconds = total / (gbps * 1e9)
            rows.append(
                dict(
                    format=fmt,
                    device=device,
                    bytes_per_token=total,
                    bandwidth_gbps=float(gbps),
                    ms_per_token=seconds * 1e3,
                    tokens_per_s=1 / seconds,
                )
            )
    return rows


def bandwidth_figure(
    bytes_per_token: dict[str, dict[str, float]],
    bandwidths_gbps: dict[str, float] | None = None,
    *,
    title: str = "Batch-1 decoding is bounded by the bytes of weights read per token",
) -> go.Figure:
    """Left: MB read per token, one stacked bar per format (one colour per component).
    Right: the predicted upper bound on tokens/s, bandwidth / bytes, one point per format and device (log
    scale)."""
    bandwidths_gbps = BANDWIDTHS_GBPS if bandwidths_gbps is None else bandwidths_gbps
    rows = bandwidth_rows(bytes_per_token, bandwidths_gbps)
    formats = list(bytes_per_token)
    components = list(dict.fromkeys(c for parts in bytes_per_token.values() for c in parts))
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.14,
        subplot_titles=("weights read per token", "predicted upper bound on decoding speed"),
    )
    # left: stacked by hand (one offset group; each component starts where the previous one ended)
    base = [0.0] * len(formats)
    for i, comp in enumerate(components):
        mb = [bytes_per_token[f].get(comp, 0.0) / 1e6 for f in formats]
        fig.add_bar(
            x=formats, y=mb, base=list(base), name=comp, marker_color=_COLORS[i % len(_COLORS)],
            offsetgroup="bytes", hovertemplate=f"{comp}: %{{y:.1f}} MB<extra>%{{x}}</extra>", row=1, col=1,
        )  # fmt: skip
        base = [b + m for b, m in zip(base, mb)]
    for i, fmt in enumerate(formats):  # points on a log axis (devices differ 30x): bars would exaggerate
        mine = [r for r in rows if r["format"] == fmt]
        fig.add_scatter(
            x=[r["device"] for r in mine], y=[r["tokens_per_s"] for r in mine], name=f"{fmt} weights",
            mode="markers+text", marker=dict(color=_COLORS[(len(components) + i) % len(_COLORS)], size=12),
            text=[f"{r['tokens_per_s']:,.0f}" for r in mine], textposition="middle right" if i else "middle left",
            hovertemplate=f"{fmt}: %{{y:,.0f}} tokens/s<extra>%{{x}}</extra>", row=1, col=2,
        )  # fmt: skip
    fig.update_layout(title=title, barmode="group", template="plotly_white", height=460)
    fig.update_xaxes(title_text="weight format", row=1, col=1)
    fig.update_yaxes(title_text="MB read per token (1 MB = 1e6 bytes)", row=1, col=1)
    fig.update_xaxes(title_text="device (memory bandwidth)", row=1, col=2)
    fig.update_yaxes(title_text="tokens/s at batch 1 (upper bound, log scale)", type="log", row=1, col=2)
    return fig
