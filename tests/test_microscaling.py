"""qviz.microscaling: MXFP4 and NVFP4. Oracles: the gguf package's MXFP4 quantizer (llama.cpp's), hand-computed
blocks, and a brute-force nearest-value search over the E2M1 grid."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from qviz import formats
from qviz.microscaling import FP4_FORMATS, bits_per_weight, quantize_fp4

E2M1 = torch.tensor(sorted({s * v for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6) for s in (-1, 1)}))


def test_mxfp4_block_by_hand():
    """max|w| = 5: floor(log2 5) = 2, so the scale is 2^0 = 1 and the values are E2M1 itself; 7 saturates."""
    w = torch.zeros(1, 32)
    w[0, :6] = torch.tensor([5.0, -0.7, 2.6, 0.24, 0.26, 1.25])
    q = quantize_fp4(w, "mxfp4")
    assert q.scales.tolist() == [[1.0]]
    assert q.values[0, :6].tolist() == [4.0, -0.5, 3.0, 0.0, 0.5, 1.0]  # 1.25: a tie, to the even 1.0
    w[0, 0] = 7.9  # floor(log2 7.9) = 2 still: 7.9 saturates to 6
    assert quantize_fp4(w, "mxfp4").dequantize()[0, 0].item() == 6.0


def test_mxfp4_equals_llama_cpp_quantizer():
    """The same scale rule and the nearest E2M1 value as llama.cpp's writer (gguf.quants), on random weights
    (no exact ties, where llama.cpp rounds towards the smaller magnitude)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 256, generator=g) * torch.rand(16, 1, generator=g) * 0.1
    theirs = quants.dequantize(
        quants.quantize(W.numpy(), GGMLQuantizationType.MXFP4), GGMLQuantizationType.MXFP4
    )
    assert torch.equal(
        quantize_fp4(W, "mxfp4").dequantize(), torch.from_numpy(np.asarray(theirs)).reshape(W.shape)
    )


@pytest.mark.parametrize("fmt", list(FP4_FORMATS))
def test_values_are_the_nearest_e2m1_given_the_scale(fmt):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(8, 64, generator=g)
    W[0, 5] = 30.0  # an outlier
    q = quantize_fp4(W, fmt)
    scale = q.scales.repeat_interleave(q.block, dim=1) * q.tensor_scale
    # brute force: the grid value nearest to w/scale, saturating at ±6
    nearest = E2M1[(W / scale)[..., None].sub(E2M1).abs().argmin(-1)]
    assert torch.equal(q.values, nearest)
    if fmt == "mxfp4":
        assert torch.equal(q.scales, torch.exp2(torch.log2(q.scales).round()))  # powers of two
    else:
        assert torch.equal(q.scales, formats.round_to(q.scales, "fp8_e4m3"))  # E4M3 numbers
        assert q.tensor_scale == pytest.approx(W.abs().max().item() / (6 * 448))


def test_nvfp4_is_finer_than_mxfp4_and_rotation_helps_mxfp4_more():
    """With outlier columns: NVFP4 (16-blocks, E4M3 scales) has the smaller error; a Hadamard rotation (W·H,
    orthogonal, so the error of the rotated weight is the error of the weight) helps MXFP4's power-of-two scales
    much more than NVFP4's."""
    from qviz.rotate import hadamard

    g = torch.Generator().manual_seed(2)
    W = torch.randn(256, 256, generator=g)
    W[:, ::37] *= 12  # outlier columns
    H = hadamard(256)

    def err(X, fmt):
        return ((quantize_fp4(X, fmt).dequantize() - X).pow(2).sum() / X.pow(2).sum()).item()

    mx, nv = err(W, "mxfp4"), err(W, "nvfp4")
    mx_rot, nv_rot = err(W @ H, "mxfp4"), err(W @ H, "nvfp4")
    assert nv < mx and mx_rot < mx
    assert mx / mx_rot > 1.5 * (nv / nv_rot)  # here 2.4x for MXFP4, 0.95x (slightly worse) for NVFP4


def test_bits_per_weight():
    assert bits_per_weight("mxfp4") == 4.25 and bits_per_weight("nvfp4") == 4.5
    assert bits_per_weight("nvfp4", 1024) == 4.5 + 32 / 1024


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(2, 48), "mxfp4"), "blocks of 32"),
        ((torch.zeros(2, 32), "fp4"), "mxfp4, nvfp4"),
        ((torch.full((2, 32), float("inf")), "nvfp4"), "NaN or Inf"),
        ((torch.zeros(32), "mxfp4"), "2-D"),
    ],
)
def test_bad_input_is_refused(args, match):
    with pytest.raises(ValueError, match=match):
        quantize_fp4(*args)


def test_all_zero_blocks_stay_zero():
    W = torch.zeros(2, 32)
    W[1, 16:] = 1.0
    for fmt in FP4_FORMATS:
        out = quantize_fp4(W, fmt).dequantize()
        assert torch.equal(out[0], W[0]) and torch.isfinite(out).all()


def test_nf4_block_and_bytes_as_bitsandbytes_writes_them():
    """Golden bytes from bitsandbytes 0.50.2 (quantize_4bit, nf4, blocksize 64, no double quantization) for
    [0.5, -1.0, 0.1, 0.0, 0, ...]: absmax 1; codes 12, 0, 8, 7 (0.5 is nearer 0.4407 than 0.5626); bytes 192, 135
    (the first code of each pair in the high nibble). bench/peer_nf4_bitsandbytes.py checks random weights."""
    from qviz.formats import NF4_VALUES
    from qviz.microscaling import dequantize_nf4, pack_nf4, quantize_nf4

    w = torch.zeros(1, 64)
    w[0, :4] = torch.tensor([0.5, -1.0, 0.1, 0.0])
    codes, absmax = quantize_nf4(w)
    assert absmax.tolist() == [[1.0]] and codes[0, :4].tolist() == [12, 0, 8, 7]
    assert pack_nf4(codes)[:2].tolist() == [192, 135]
    assert dequantize_nf4(codes, absmax)[0, 0].item() == pytest.approx(NF4_VALUES[12])
    g = torch.Generator().manual_seed(3)
    W = torch.randn(8, 128, generator=g)
    codes, absmax = quantize_nf4(W)
    table = torch.tensor(NF4_VALUES)
    nearest = (W.reshape(8, 2, 64) / absmax[..., None])[..., None].sub(table).abs().argmin(-1).reshape(8, 128)
    assert torch.equal(codes.long(), nearest)
    with pytest.raises(ValueError, match="blocks of 64"):
        quantize_nf4(torch.zeros(2, 100))
