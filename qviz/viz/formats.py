"""The formats people download: one GGUF k-quant super-block with its sub-block grids, and 4-bit formats placed
by what they cost (bits per weight) against what they lose (weight error)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from ..gguf import QK_K, GGUFTensor, _chunks_of_64, dequantize, k4_scales_mins

__all__ = ["format_error_figure", "superblock_data", "superblock_figure"]


def superblock_data(tensor: GGUFTensor, block: int = 0) -> dict:
    """One Q4_K super-block of `tensor` decoded field by field: d and dmin (float16), the 8 six-bit scales and
    mins, the 256 codes, each sub-block's 16 grid levels d·sc_j·q − dmin·m_j (q = 0..15), and the weights."""
    if tensor.type != "Q4_K":
        raise ValueError(f"superblock_data draws Q4_K super-blocks; {tensor.name} is {tensor.type}")
    n_blocks = len(tensor.data)
    if not 0 <= block < n_blocks:
        raise ValueError(f"block must be in 0..{n_blocks - 1} for {tensor.name}, got {block}")
    raw = torch.from_numpy(tensor.data[block : block + 1].copy())
    d, dmin = (raw[:, i : i + 2].view(torch.float16).float().item() for i in (0, 2))
    sc, m = k4_scales_mins(raw[:, 4:16])
    one = GGUFTensor(tensor.name, "Q4_K", (1, QK_K), tensor.data[block : block + 1])
    values = dequantize(one)[0]
    q = torch.arange(16, dtype=torch.float32)
    levels = [(d * sc[0, j].item()) * q - dmin * m[0, j].item() for j in range(8)]
    codes = _chunks_of_64(raw[:, 16:144])[0].tolist()  # the stored 4-bit codes
    return {"d": d, "dmin": dmin, "scales": sc[0].tolist(), "mins": m[0].tolist(), "codes": codes,
            "levels": [lv.tolist() for lv in levels], "values": values.tolist(), "name": tensor.name,
            "block": block}  # fmt: skip


def superblock_figure(data: dict) -> go.Figure:
    """The 256 weights of a super-block (points) over the 16 levels of their sub-block's grid (lines): each
    sub-block of 32 has its own step d·sc_j and offset dmin·m_j."""
    fig = go.Figure()
    for j, levels in enumerate(data["levels"]):
        xs, ys = [], []
        for level in levels:
            xs += [32 * j - 0.5, 32 * j + 31.5, None]
            ys += [level, level, None]
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="rgba(120,120,120,0.35)", width=1),
                       name="grid levels" if j == 0 else None, showlegend=j == 0, hoverinfo="skip")
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=list(range(QK_K)), y=data["values"], mode="markers", marker=dict(size=4, color="#1f77b4"),
            name="weights (decoded)",
            customdata=[[c, j // 32] for j, c in enumerate(data["codes"])],
            hovertemplate="weight %{x}: %{y:.4g}<br>code %{customdata[0]}, sub-block %{customdata[1]}<extra></extra>",
        )
    )  # fmt: skip
    for j in range(1, 8):  # the sub-block boundaries
        fig.add_vline(x=32 * j - 0.5, line=dict(color="rgba(200,80,80,0.6)", width=1, dash="dot"))
    fig.update_layout(
        title=f"{data['name']}, super-block {data['block']}: 8 sub-blocks of 32, each on its own 16-level grid",
        xaxis_title="weight index in the super-block", yaxis_title="weight value",
        height=380, margin=dict(l=60, r=20, t=50, b=50),
    )  # fmt: skip
    return fig


def format_error_figure(rows: list[dict], title: str) -> go.Figure:
    """Each format as two points, plain and after a Hadamard rotation, at its bits per weight (x) and relative
    weight error (y, log scale: points, not bars). rows: dicts with "label", "bits", "error", "rotated"."""
    fig = go.Figure()
    seen: dict[float, int] = {}  # formats of equal cost are drawn side by side, 0.04 bits apart
    for row in rows:
        x = row["bits"] + 0.04 * seen.get(row["bits"], 0)
        seen[row["bits"]] = seen.get(row["bits"], 0) + 1
        fig.add_trace(
            go.Scatter(
                x=[x, x], y=[row["error"], row["rotated"]], mode="lines+markers+text",
                name=row["label"], text=["", "rotated"], textposition="middle right",
                marker=dict(size=[10, 8], symbol=["circle", "circle-open"]),
                hovertemplate=f"{row['label']}<br>{row['bits']:.3f} bits/weight<br>relative error %{{y:.3g}}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        title=title, xaxis_title="bits per weight (codes + scales; formats of equal cost side by side)",
        yaxis_title="relative weight error Σ(W−Q)²/ΣW²",
        yaxis_type="log", height=420, margin=dict(l=70, r=20, t=50, b=50),
    )  # fmt: skip
    return fig
