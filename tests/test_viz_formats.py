"""The format figures, on a Q4_K super-block written by qviz.kquants (no model needed)."""

import pytest
import torch
from figure_checks import assert_readable

from qviz import kquants
from qviz.gguf import dequantize
from qviz.viz import formats as viz


def test_superblock_data_decodes_the_block_field_by_field():
    W = torch.randn(2, 512, generator=torch.Generator().manual_seed(0)) * 0.05
    t = kquants.quantize(W, "Q4_K")
    data = viz.superblock_data(t, block=1)
    values = torch.tensor(data["values"])
    assert torch.equal(values, dequantize(t).reshape(-1, 256)[1])
    for j in range(256):  # every weight is its sub-block's level for its stored code
        assert data["levels"][j // 32][data["codes"][j]] == pytest.approx(
            data["values"][j], rel=1e-6, abs=1e-9
        )
    assert len(data["scales"]) == len(data["mins"]) == 8 and all(0 <= s < 64 for s in data["scales"])
    assert_readable(viz.superblock_figure(data))


def test_superblock_data_refuses_other_types_and_blocks():
    t = kquants.quantize(torch.zeros(1, 256), "Q8_0")
    with pytest.raises(ValueError, match="Q4_K"):
        viz.superblock_data(t)
    with pytest.raises(ValueError, match="block must be in 0..0"):
        viz.superblock_data(kquants.quantize(torch.zeros(1, 256), "Q4_K"), block=3)


def test_format_error_figure_uses_points_on_its_log_axis():
    rows = [{"label": "MXFP4", "bits": 4.25, "error": 0.01, "rotated": 0.008}]
    fig = viz.format_error_figure(rows, "t")
    assert_readable(fig)
    assert fig.layout.yaxis.type == "log" and all(tr.type == "scatter" for tr in fig.data)
    assert list(fig.data[0].y) == [0.01, 0.008]


def test_superblock_explorer_follows_its_controls():
    from qviz.widgets.formats import SuperBlockExplorer

    g = torch.Generator().manual_seed(1)
    tensors = {
        "a": kquants.quantize(torch.randn(2, 512, generator=g), "Q4_K"),  # 4 super-blocks
        "b": kquants.quantize(torch.randn(1, 256, generator=g), "Q4_K"),  # 1
        "c": kquants.quantize(torch.randn(1, 256, generator=g), "Q8_0"),  # not offered
    }
    explorer = SuperBlockExplorer(tensors)
    assert explorer.tensor.options == ("a", "b") and explorer.block.max == 3
    explorer.set(block=2)
    assert list(explorer.fig.data[-1].y) == dequantize(tensors["a"]).reshape(-1, 256)[2].tolist()
    assert "super-block 2" in explorer.fig.layout.title.text
    explorer.set(name="b")
    assert explorer.block.max == 0 and explorer.block.value == 0
    assert list(explorer.fig.data[-1].y) == dequantize(tensors["b"]).reshape(-1).tolist()
    with pytest.raises(ValueError, match="no Q4_K tensor"):
        SuperBlockExplorer({"c": tensors["c"]})
