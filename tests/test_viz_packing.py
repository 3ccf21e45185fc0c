"""The packing figure: bit owners and words come from qviz.pack; checked against words written by hand."""

import pytest
from figure_checks import assert_readable

from qviz.viz import packing as viz
from qviz.viz.packing import PACKING_LAYOUTS, packed_word, packing_bit_owners


def test_words_written_by_hand():
    codes = [1, 2, 3, 4, 5, 6, 7, 8]
    assert packed_word("GPTQ", codes) == 0x87654321
    assert packed_word("compressed-tensors", codes) == 0x87654321
    assert packed_word("AWQ GEMM", codes) == 0x86427531  # nibbles hold codes 0, 2, 4, 6, 1, 3, 5, 7


def test_bit_owners():
    assert packing_bit_owners("GPTQ") == [j for j in range(7, -1, -1) for _ in range(4)]
    assert packing_bit_owners("AWQ GEMM") == [j for j in (7, 5, 3, 1, 6, 4, 2, 0) for _ in range(4)]


def test_figure_has_title_axes_and_one_row_per_layout():
    fig = viz.packing_figure([15, 0, 15, 0, 15, 0, 15, 0])
    heat = fig.data[0]
    assert list(heat.y) == list(PACKING_LAYOUTS) and len(heat.x) == 32 and heat.x[0] == "31"
    assert list(heat.text[0][-4:]) == ["1", "1", "1", "1"]  # GPTQ: code 0 (15) in bits 3..0
    assert_readable(fig)


def test_bad_input():
    with pytest.raises(ValueError, match="layout must be one of"):
        packed_word("EXL2", list(range(8)))
    with pytest.raises(ValueError, match="eight codes in"):
        packed_word("GPTQ", [16] * 8)
