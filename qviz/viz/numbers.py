"""Figures about number formats: the bits of one value, the grid of a small format, spacing and range.

`bit_layout_data` is the pure part of the bit-box figure (a value in, lists out); the format explorer
widget writes it into an existing FigureWidget, `bit_layout_figure` into a new figure.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import torch

from qviz.formats import (
    FloatFormat,
    IntFormat,
    fields,
    get_format,
    range_and_spacing,
    representable_values,
    spacing,
)

__all__ = [
    "bit_layout_data",
    "bit_layout_figure",
    "number_line_figure",
    "spacing_figure",
    "range_precision_figure",
    "FIELD_COLORS",
]

FIELD_COLORS = ("#e45756", "#4c78a8", "#54a24b")  # sign, exponent, mantissa (integer bits, table index)


def _exponent_label(f, fmt: FloatFormat) -> str:
    field = int(f.exponent, 2)
    if f.kind in ("inf", "nan"):
        return f"exponent {f.exponent}: all ones = {f.kind}"
    if field == 0:
        return f"exponent {f.exponent}: {'zero' if f.kind == 'zero' else 'subnormal'}, 2^{fmt.min_exp}"
    return f"exponent {f.exponent} = {field} - {fmt.bias} = {f.exponent_value}"


def bit_layout_data(value: float, fmt) -> dict:
    """What the bit-box figure draws for `value` stored in `fmt`: three traces (sign, exponent, mantissa).

    Returns {"traces": [dict(x, text, name, hovertext) x 3], "title": str, "fields": BitFields}; x is the
    bit position counted from the left (most significant bit = 0). Integers and NF4 fill only the third
    trace, with all their bits (two's complement) or the 4-bit table index.
    """
    fmt = get_format(fmt)
    f = fields(value, fmt)
    groups = [f.sign, f.exponent, f.mantissa]
    starts = [0, len(f.sign), len(f.sign) + len(f.exponent)]
    if isinstance(fmt, FloatFormat):
        names = [
            f"sign {f.sign}: {'-' if f.sign == '1' else '+'}",
            _exponent_label(f, fmt),
            f"mantissa {f.mantissa}" + ("" if f.significand is None else f": significand {f.significand!r}"),
        ]
    elif isinstance(fmt, IntFormat):
        kind = "two's complement" if fmt.signed else "unsigned binary"
        names = ["", "", f"{kind} {f.mantissa} = {int(f.stored)}"]
    else:
        names = ["", "", f"table index {f.mantissa} = {int(f.mantissa, 2)} -> {f.stored!r}"]
    traces = [
        dict(x=list(range(s, s + len(g))), text=list(g), name=n, hovertext=[n] * len(g))
        for g, s, n in zip(groups, starts, names)
    ]
    error = f" (error {f.error:+.3g})" if math.isfinite(f.error) else ""
    title = f"{value!r} in {fmt.name}: stored {f.stored!r}{error}"
    return {"traces": traces, "title": title, "fields": f}


def bit_layout_figure(value: float, fmt="bf16") -> go.Figure:
    """Coloured boxes for the bits of `value` in `fmt`, one colour per field; the legend reads the fields."""
    data = bit_layout_data(value, fmt)
    fig = go.Figure()
    for trace, color in zip(data["traces"], FIELD_COLORS):
        fig.add_bar(
            **trace, y=[1] * len(trace["x"]), showlegend=bool(trace["x"]), marker_color=color, width=0.92, textposition="inside",
            insidetextanchor="middle", textfont=dict(size=16, color="white"), hoverinfo="text",
        )  # fmt: skip
    fig.update_layout(
        title=data["title"], template="plotly_white", height=260, bargap=0, showlegend=True,
        legend=dict(orientation="h", y=-0.45), margin=dict(t=50, b=10),
        xaxis=dict(title="bit position (0 = most significant, stored leftmost)", dtick=1),
        yaxis=dict(visible=False, range=[0, 1.05]),
    )  # fmt: skip
    return fig


def number_line_figure(formats=("fp4_e2m1", "nf4", "int4"), normalize: bool = True) -> go.Figure:
    """Every representable value of each small format as a tick on its own number line.

    normalize=True divides each format by its largest value, so grids of different ranges (FP4 up to 6,
    NF4 up to 1, INT4 up to 7) can be compared as shapes on [-1, 1].
    """
    formats = [formats] if isinstance(formats, str) else list(formats)
    fig = go.Figure()
    for row, name in enumerate(formats):
        v = representable_values(name)
        x = v / v.abs().max() if normalize else v
        fig.add_scatter(
            x=x.tolist(), y=[row] * len(v), mode="markers", name=f"{name} ({len(v)} values)",
            marker=dict(symbol="line-ns-open", size=18, line_width=2),
            hovertext=[f"{name}: {val:g}" for val in v.tolist()], hoverinfo="text",
        )  # fmt: skip
    fig.update_layout(
        title="Representable values" + (" (each format divided by its largest value)" if normalize else ""),
        template="plotly_white", height=120 + 60 * len(formats),
        xaxis_title="value / max value of the format" if normalize else "value (the number itself, unitless)",
        yaxis=dict(title="format", tickvals=list(range(len(formats))), ticktext=formats, range=[-0.6, len(formats) - 0.4]),
    )  # fmt: skip
    return fig


def _spacing_curve(name) -> tuple[list, list]:
    """(magnitudes, gap to the next value up) along the positive range, as the corners of a step curve."""
    fmt = get_format(name)
    if isinstance(fmt, FloatFormat):  # one step per binade: the gap is 2^(e - M) for all of [2^e, 2^(e+1))
        r = range_and_spacing(fmt)
        x = torch.exp2(torch.arange(fmt.min_exp, fmt.max_exp + 1, dtype=torch.float64))
        x = torch.cat([torch.tensor([r.min_subnormal], dtype=torch.float64), x, torch.tensor([r.max])])
    else:
        v = representable_values(fmt)
        x = v[v > 0]
    return x.tolist(), spacing(x, fmt).tolist()


def spacing_figure(
    formats=("fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8"), x_range=(2.0**-26, 2.0**18)
) -> go.Figure:
    """Gap between neighbouring representable values across each format's range (log-log).

    A float's gap doubles at every power of two (a constant *relative* precision, slope 1 on log-log);
    an integer's gap is 1 everywhere (constant absolute precision). Curves are cut to `x_range` (None: the
    full range; BF16 and FP32 reach 3.4e38 and would squeeze the others into a corner).
    """
    fig = go.Figure()
    for name in formats:
        x, y = _spacing_curve(name)
        label = name
        if x_range is not None:
            keep = [i for i, v in enumerate(x) if x_range[0] <= v <= x_range[1]]
            label += " (cut to the view)" if len(keep) < len(x) else ""
            x, y = [x[i] for i in keep], [y[i] for i in keep]
        fig.add_scatter(x=x, y=y, mode="lines+markers", marker_size=4, line_shape="hv", name=label)
    fig.update_layout(
        title="Spacing between neighbouring representable values (log-log)", template="plotly_white",
        xaxis=dict(title="magnitude |x| (unitless, log scale)", type="log", exponentformat="power"),
        yaxis=dict(title="gap to the next value up (same units as x, log scale)", type="log", exponentformat="power"),
    )  # fmt: skip
    return fig


def range_precision_figure(
    formats=("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int8", "int4"),
) -> go.Figure:
    """Each format as a point: how many powers of two it spans versus how many significant bits it keeps."""
    rows = [(name, range_and_spacing(name)) for name in formats]
    fig = go.Figure()
    fig.add_scatter(
        x=[r.dynamic_range_binades for _, r in rows], y=[r.significant_bits for _, r in rows],
        mode="markers+text", text=list(formats), textposition="top center", marker=dict(size=12),
        hovertext=[f"{n}: max {r.max:.4g}, smallest {r.min_subnormal:.3g}, eps {r.eps:.3g}" for n, r in rows],
        hoverinfo="text", showlegend=False,
    )  # fmt: skip
    fig.update_layout(
        title="Dynamic range versus precision", template="plotly_white",
        xaxis=dict(title="dynamic range (binades: log2 of max / smallest positive value)", type="log"),
        yaxis=dict(title="precision (significant bits; magnitude bits for integers)"),
    )  # fmt: skip
    return fig
