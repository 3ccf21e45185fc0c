"""Block-scaled 4-bit formats: MXFP4 and NVFP4, the weight formats of the newest accelerators, and NF4 as
bitsandbytes stores it (the "bnb-4bit" models, QLoRA's format).

Both store each weight as FP4 E2M1 (a sign and the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6; `qviz.formats`) times
a scale shared by a small block of consecutive weights of a row. They differ in the block and the scale:

    MXFP4 (OCP Microscaling, 2023)   blocks of 32; the scale is a power of two stored as E8M0 (8 bits):
                                     X = 2^(floor(log2 max|w|) − 2), so the block's largest binade meets E2M1's
                                     largest (4..6); values beyond 6·X saturate to ±6·X.      4 + 8/32 = 4.25 bits
    NVFP4 (NVIDIA Blackwell)         blocks of 16; the scale is FP8 E4M3 (8 bits, 3 mantissa bits: not just
                                     powers of two), s_b = max|w|/6 rounded to E4M3, times one FP32 scale per
                                     tensor, max|W|/(6·448), that brings the block scales into E4M3's range.
                                                                                          4 + 8/16 = 4.5 bits

The power-of-two scale costs MXFP4: a block whose largest weight is just above a power of two uses the grid
up to 6 of its 8 (the top binade is [4, 8), E2M1 stops at 6), and a block whose largest weight is just below
rounds it to 6·X from up to 8·X. NVFP4's E4M3 scale tracks max|w| within 1/16, and its blocks are half as long.
A rotation (Hadamard) spreads outliers over the block, so that every weight's block maximum is closer to
typical: that helps the coarse scale more.

Rounding to E2M1 is round-to-nearest, ties to even (`qviz.formats.round_to`), as the OCP spec asks
(llama.cpp's MXFP4 writer sends ties to the smaller magnitude; it changes a few codes in a million).

    NF4 (bitsandbytes)               blocks of 64; w ≈ absmax · NF4[q], the 16 NormalFloat values of the QLoRA
                                     paper (`qviz.formats.NF4_VALUES`), absmax in float32: 4 + 32/64 = 4.5 bits;
                                     with "double quantization" the absmaxes are stored in 8 bits (blocks of
                                     256, one float32 each): 4 + 8/64 + 32/(64·256) ≈ 4.127 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .formats import FORMATS, NF4_VALUES, round_to
from .quant import block_rows

__all__ = [
    "FP4_FORMATS",
    "BlockFP4",
    "bits_per_weight",
    "dequantize_nf4",
    "pack_nf4",
    "quantize_fp4",
    "quantize_nf4",
]

E2M1_MAX = 6.0
E4M3_MAX = FORMATS["fp8_e4m3"].max  # 448
FP4_FORMATS = {"mxfp4": 32, "nvfp4": 16}  # format -> block length


@dataclass(frozen=True)
class BlockFP4:
    """A weight (rows, columns) in MXFP4 or NVFP4: `values` the E2M1 numbers (as float32, ±{0, ..., 6}),
    `scales` one per block (rows, columns / block), `tensor_scale` the FP32 scale per tensor (1 for MXFP4).
    w ≈ values · scales (repeated over each block) · tensor_scale."""

    format: str
    values: torch.Tensor
    scales: torch.Tensor
    tensor_scale: float

    @property
    def block(self) -> int:
        return FP4_FORMATS[self.format]

    def dequantize(self) -> torch.Tensor:
        return self.values * self.scales.repeat_interleave(self.block, dim=1) * self.tensor_scale


def quantize_fp4(W: torch.Tensor, fmt: str) -> BlockFP4:
    """W (rows, columns) in `fmt` ("mxfp4" or "nvfp4"), rows in blocks of 32 or 16 (see the module notes)."""
    if fmt not in FP4_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FP4_FORMATS)}")
    block = FP4_FORMATS[fmt]
    x = block_rows(W, block, fmt)
    blocks = x.reshape(x.shape[0], -1, block)  # (rows, blocks, block)
    amax = blocks.abs().amax(-1)  # (rows, blocks)
    if fmt == "mxfp4":
        tensor_scale = 1.0
        exponent = torch.floor(torch.log2(amax.double())) - 2  # E2M1's largest binade is 2^2
        scales = torch.exp2(exponent.clamp(-127, 127)).where(amax > 0, 1.0).float()  # E8M0: 2^-127 .. 2^127
    else:
        tensor_scale = (x.abs().max() / (E2M1_MAX * E4M3_MAX)).item() or 1.0
        scales = round_to(amax / E2M1_MAX / tensor_scale, "fp8_e4m3")  # the stored E4M3 block scales
    scale = scales[..., None] * tensor_scale
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    values = torch.where(scale > 0, round_to(blocks / safe, "fp4_e2m1"), torch.zeros_like(blocks))
    return BlockFP4(fmt, values.reshape(x.shape), scales, tensor_scale)


def bits_per_weight(fmt: str, n_weights: int | None = None) -> float:
    """Storage per weight: 4 bits of E2M1 plus the 8-bit block scale shared by the block, plus for NVFP4 the
    32-bit tensor scale shared by `n_weights` (omitted when None: it vanishes for any real tensor)."""
    if fmt not in FP4_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FP4_FORMATS)}")
    bits = 4 + 8 / FP4_FORMATS[fmt]
    return bits + (32 / n_weights if fmt == "nvfp4" and n_weights else 0.0)


def quantize_nf4(W: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """W (rows, columns) as bitsandbytes' NF4 without double quantization: (codes, absmax), codes (rows, columns)
    uint8 in 0..15, the index of the nearest NF4 value to w / absmax (a tie goes to the smaller value, as
    bitsandbytes' decision tree), absmax (rows, columns / block) float32. w ≈ NF4_VALUES[code] · absmax."""
    x = block_rows(W, block, "NF4")
    blocks = x.reshape(x.shape[0], -1, block)
    absmax = blocks.abs().amax(-1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    table = torch.tensor(NF4_VALUES, dtype=torch.float32)
    midpoints = (table[1:] + table[:-1]) / 2
    codes = torch.searchsorted(midpoints, (blocks / safe[..., None]).contiguous())
    return codes.reshape(x.shape).to(torch.uint8), absmax


def dequantize_nf4(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """NF4_VALUES[code] · absmax of its block: the float32 weights `quantize_nf4`'s output stands for."""
    table = torch.tensor(NF4_VALUES, dtype=torch.float32)
    block = codes.shape[1] // absmax.shape[1]
    return table[codes.long()] * absmax.repeat_interleave(block, dim=1)


def pack_nf4(codes: torch.Tensor) -> torch.Tensor:
    """Codes (rows, columns) -> bytes as bitsandbytes stores them: the row-major codes in pairs, the first of each
    pair in the high nibble."""
    flat = codes.reshape(-1, 2).to(torch.uint8)
    return (flat[:, 0] << 4) | flat[:, 1]
