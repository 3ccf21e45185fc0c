"""The bandwidth bound: numbers checked by hand, and the figure's bars, title and axes."""

import math

import pytest
from figure_checks import assert_readable

from qviz.viz import gpu as viz
from qviz.viz.gpu import bandwidth_rows

BYTES = {
    "FP16": {"decoder linears": 200e6, "lm_head": 300e6},
    "INT4": {"decoder linears": 50e6, "lm_head": 300e6},
}
BW = {"H100": 3350.0, "laptop": 100.0}


def test_rows_by_hand():
    rows = {(r["format"], r["device"]): r for r in bandwidth_rows(BYTES, BW)}
    assert len(rows) == 4
    fp16 = rows["FP16", "laptop"]
    assert fp16["bytes_per_token"] == 500e6
    assert math.isclose(fp16["ms_per_token"], 5.0)  # 500 MB / 100 GB/s
    assert math.isclose(fp16["tokens_per_s"], 200.0)
    assert math.isclose(rows["INT4", "H100"]["tokens_per_s"], 3350e9 / 350e6)
    # the speed-up predicted by the bound is the ratio of bytes, the same on every device
    for device in BW:
        ratio = rows["INT4", device]["tokens_per_s"] / rows["FP16", device]["tokens_per_s"]
        assert math.isclose(ratio, 500 / 350)


def test_linears_alone_predict_the_bytes_ratio():
    only = {f: {"decoder linears": parts["decoder linears"]} for f, parts in BYTES.items()}
    rows = bandwidth_rows(only, {"any": 1.0})
    assert math.isclose(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 4.0)


@pytest.mark.parametrize(
    "bytes_per_token, bandwidths, match",
    [
        ({}, BW, "at least one"),
        (BYTES, {}, "at least one"),
        ({"FP16": {"x": 0.0}}, BW, "not all zero"),
        ({"FP16": {"x": -1.0, "y": 2.0}}, BW, ">= 0"),
        (BYTES, {"broken": 0.0}, "must be > 0"),
    ],
    ids=["no-format", "no-device", "zero-bytes", "negative-bytes", "zero-bandwidth"],
)
def test_bad_input(bytes_per_token, bandwidths, match):
    with pytest.raises(ValueError, match=match):
        bandwidth_rows(bytes_per_token, bandwidths)


def test_figure():
    fig = viz.bandwidth_figure(BYTES, BW, title="bound")
    assert fig.layout.title.text == "bound"
    bytes_bars = [t for t in fig.data if t.xaxis == "x"]
    speed_bars = [t for t in fig.data if t.xaxis == "x2"]
    assert [t.name for t in bytes_bars] == ["decoder linears", "lm_head"]
    # stacked by hand: the lm_head bar starts where the linears bar ends (in MB)
    assert list(bytes_bars[1].base) == [200.0, 50.0] and list(bytes_bars[1].y) == [300.0, 300.0]
    assert [t.name for t in speed_bars] == ["FP16 weights", "INT4 weights"]
    assert math.isclose(speed_bars[0].y[1], 200.0) and list(speed_bars[0].x) == ["H100", "laptop"]
    for axis in ("xaxis", "yaxis", "xaxis2", "yaxis2"):
        assert fig.layout[axis].title.text, axis
    assert "MB" in fig.layout.yaxis.title.text and "tokens/s" in fig.layout.yaxis2.title.text
    assert fig.layout.yaxis2.type == "log"
    assert_readable(fig)  # the log-scale panel holds points, not bars


def test_default_bandwidths():
    fig = viz.bandwidth_figure(BYTES)
    assert set(fig.data[-1].x) == set(viz.BANDWIDTHS_GBPS)
