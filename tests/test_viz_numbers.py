"""Number-format figures and the format explorer's pure update, without Jupyter."""

import math

import pytest
from figure_checks import assert_readable

from qviz import formats as F
from qviz.viz import numbers as V
from qviz.widgets.numbers import FormatExplorer, format_explorer_state


def _titled(fig):
    assert_readable(fig)


@pytest.mark.parametrize("value, fmt", [(0.1, "bf16"), (-(2.0**-9), "fp8_e4m3"), (-3, "int4"), (0.3, "nf4")])
def test_bit_layout_data_covers_every_bit_once(value, fmt):
    data = V.bit_layout_data(value, fmt)
    f = F.fields(value, fmt)
    xs = [x for t in data["traces"] for x in t["x"]]
    assert xs == list(range(F.get_format(fmt).bits))
    assert "".join(b for t in data["traces"] for b in t["text"]) == f.bits
    assert repr(f.stored) in data["title"]


def test_bit_layout_golden_bf16():
    sign, exponent, mantissa = V.bit_layout_data(0.1, "bf16")["traces"]
    assert sign["text"] == ["0"] and "".join(exponent["text"]) == "01111011"
    assert exponent["name"] == "exponent 01111011 = 123 - 127 = -4"
    assert mantissa["name"] == "mantissa 1001101: significand 1.6015625"
    sub = V.bit_layout_data(2.0**-9, "fp8_e4m3")["traces"][1]["name"]
    assert "subnormal, 2^-6" in sub


def test_figures_are_titled_and_labelled():
    figs = [
        V.bit_layout_figure(0.1, "bf16"),
        V.number_line_figure(),
        V.number_line_figure("fp8_e4m3", normalize=False),
        V.spacing_figure(),
        V.range_precision_figure(),
    ]
    for fig in figs:
        _titled(fig)
    assert len(figs[1].data[0].x) == 15 and len(figs[2].data[0].x) == 253
    assert figs[3].layout.xaxis.type == "log" and figs[3].layout.yaxis.type == "log"


def test_spacing_curve_doubles_per_binade():
    x, y = V._spacing_curve("fp16")
    assert x[0] == 2.0**-24 and y[0] == 2.0**-24  # subnormal step
    assert y[x.index(1.0)] == 2.0**-10 and y[x.index(1024.0)] == 1.0 and x[-1] == 65504.0
    x, y = V._spacing_curve("int8")
    assert set(y) == {1.0} and x[-1] == 127


def test_explorer_state_golden_and_errors():
    state = format_explorer_state("0.1", "bf16")
    assert state["ok"] and "0.10009765625" in state["label"] and "+9.76562e-05" in state["label"]
    overflow = format_explorer_state("70000", "fp16")
    assert (
        overflow["ok"] and "does not fit" in overflow["label"] and overflow["layout"]["fields"].kind == "inf"
    )
    assert format_explorer_state(" 70_000 ", "bf16")["layout"]["fields"].stored == 70144.0
    bad = format_explorer_state("ten", "fp16")
    assert not bad["ok"] and "not a number" in bad["label"]
    nan = format_explorer_state("nan", "int8")
    assert not nan["ok"] and "no NaN encoding" in nan["label"]


def test_explorer_updates_one_figure_in_place():
    ex = FormatExplorer(0.1, "bf16")
    fig = ex.fig
    assert "".join(ex.fig.data[1].text) == "01111011"
    ex.set(value=448, fmt="fp8_e4m3")
    assert ex.fig is fig and len(fig.data) == 3
    assert "".join(t for trace in fig.data for t in trace.text) == "01111110"
    assert fig.layout.title.text.startswith("448.0 in fp8_e4m3")
    ex.set(value="not a number")  # the figure keeps its last good state, the label explains
    assert "not a number" in ex.summary.value and "".join(fig.data[2].text) == "110"
    ex.set(value=-5, fmt="int4")
    assert fig.data[0].x == () and "".join(fig.data[2].text) == "1011" and not fig.data[0].showlegend
    assert math.isclose(ex.state["layout"]["fields"].stored, -5)


def test_explorer_slider_and_text_stay_in_step():
    ex = FormatExplorer(-0.1, "bf16")
    assert ex.magnitude.value == 0.1
    ex.magnitude.value = 1000.123  # the slider keeps the sign of the typed value, 4 digits
    assert ex.value.value == "-1000.0" and ex.state["layout"]["fields"].stored == -1000.0
    ex.set(value=2.5e-3)
    assert ex.magnitude.value == 2.5e-3 and ex.value.value == "0.0025"
    ex.set(value=1e9)  # outside the slider's range: the slider stays, the figure follows the text
    assert (
        ex.magnitude.value == 2.5e-3 and ex.state["layout"]["fields"].stored == 998244352.0
    )  # 2^29 * 238/128
