"""How eight 4-bit codes sit in one 32-bit word, in the GPTQ, AWQ and compressed-tensors layouts.

The bit positions come from qviz.pack itself (pack one-hot codes and see which bits light up), so the figure
cannot drift from the code that writes checkpoints.
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from ..pack import pack_awq, pack_compressed_tensors, pack_gptq
from ..quant import QuantizedTensor, QuantSpec

__all__ = ["PACKING_LAYOUTS", "packed_word", "packing_bit_owners", "packing_figure"]

PACKING_LAYOUTS = ("GPTQ", "AWQ GEMM", "compressed-tensors")
_AXIS = {"GPTQ": "k", "AWQ GEMM": "n", "compressed-tensors": "k"}  # which index of W the 8 codes run along


def packed_word(layout: str, codes: list[int]) -> int:
    """The 32-bit word (as an unsigned int) a layout writes for eight unsigned 4-bit codes in [0, 15].

    codes[j] is the j-th code along the packed axis: input index k for GPTQ and compressed-tensors (which
    stores signed c = u - 8 as c + 8, i.e. the same bits), output index n for AWQ.
    """
    if layout not in PACKING_LAYOUTS:
        raise ValueError(f"layout must be one of {PACKING_LAYOUTS}, got {layout!r}")
    u = torch.tensor(codes, dtype=torch.int32)
    if u.shape != (8,) or u.min() < 0 or u.max() > 15:
        raise ValueError(f"pass eight codes in [0, 15], got {codes}")
    spec = QuantSpec(bits=4, symmetric=False)

    def qt(c):  # unsigned codes, one group per row, zero point 8 (only the codes are drawn)
        zero_point = torch.full((c.shape[0], 1), 8, dtype=torch.int32)
        return QuantizedTensor(c, torch.ones(c.shape[0], 1), zero_point, spec)

    if layout == "GPTQ":  # W (N=8, K=8): qweight[0, n] packs k = 0..7 of row n
        word = pack_gptq(qt(u.repeat(8, 1)))["qweight"][0, 0]
    elif layout == "AWQ GEMM":  # W (N=8, K=1): qweight[k, 0] packs n = 0..7
        word = pack_awq(qt(u.reshape(8, 1)))["qweight"][0, 0]
    else:  # W (N=1, K=8): weight_packed[n, 0] packs k = 0..7
        word = pack_compressed_tensors(qt(u.reshape(1, 8)))["weight_packed"][0, 0]
    return int(word) & 0xFFFFFFFF


def packing_bit_owners(layout: str) -> list[int]:
    """For bit positions 31..0 (most significant first), the index j of the code that holds the bit."""
    owners = [-1] * 32
    for j in range(8):
        word = packed_word(layout, [15 if i == j else 0 for i in range(8)])
        for bit in range(32):
            if word >> bit & 1:
                owners[31 - bit] = j
    return owners


def packing_figure(codes: list[int] | None = None) -> go.Figure:
    """One row per layout, one cell per bit (31..0), coloured by the code that owns it; cells show bit values.

    codes: eight unsigned 4-bit codes (default 1, 2, ..., 8) to pack; hover shows code index and value.
    """
    codes = list(range(1, 9)) if codes is None else list(codes)
    z, text, hover = [], [], []
    for layout in PACKING_LAYOUTS:
        owners, word = packing_bit_owners(layout), packed_word(layout, codes)
        z.append(owners)
        text.append([str(word >> (31 - i) & 1) for i in range(32)])
        hover.append(
            [
                f"{layout}<br>bit {31 - i}: code {_AXIS[layout]}={j} (value {codes[j]})<br>word 0x{word:08X}"
                for i, j in enumerate(owners)
            ]
        )
    colors = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#9D755D"]
    scale = [[v, colors[c]] for c in range(8) for v in (c / 8, (c + 1) / 8)]  # 8 flat colour bands
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(b) for b in range(31, -1, -1)],
            y=list(PACKING_LAYOUTS),
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hoverinfo="text",
            colorscale=scale,
            zmin=-0.5,  # code j sits in the middle of band j
            zmax=7.5,
            xgap=2,
            ygap=6,
            colorbar=dict(
                title="code index j",
                tickvals=list(range(8)),
                ticktext=[str(j) for j in range(8)],
            ),
        )
    )
    fig.update_layout(
        title=f"Eight 4-bit codes {codes} in one 32-bit word (GPTQ and compressed-tensors along k, AWQ along n)",
        xaxis_title="bit position in the int32 word (31 = most significant)",
        yaxis=dict(title="layout", autorange="reversed"),
        height=320,
    )
    return fig
