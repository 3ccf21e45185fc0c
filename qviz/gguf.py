"""GGUF, the file llama.cpp (and Ollama, LM Studio) runs, read byte by byte: its tensors and the block formats
that hold them, decoded by hand.

A quantized GGUF tensor is a sequence of fixed-size **blocks**; each block holds the codes of a run of consecutive
weights of one row and the numbers that turn them back into floats. Two families:

    legacy (32 weights a block)     Q4_0: w = d·(q − 8)          Q4_1: w = d·q + m       Q5_0: w = d·(q − 16)
                                    Q8_0: w = d·q (q signed)     d, m: float16 per block; q: 4, 5 or 8 bits
    k-quants (256-weight            Q4_K, Q5_K: 8 sub-blocks of 32, each with its own 6-bit scale sc_j and min m_j,
    "super-blocks")                   themselves scaled by the block's float16 d and dmin:  w = (d·sc_j)·q − dmin·m_j
                                    Q6_K: 16 sub-blocks of 16, signed 8-bit scales sc_j:  w = (d·sc_j)·(q − 32)

The k-quants quantize the per-sub-block scales too (6 bits each instead of 16), which is how Q4_K stores 4-bit
codes at 4.5 bits per weight: 4 + (2·16 + 12·8)/256. The byte layouts (`BLOCKS`) are llama.cpp's `block_q4_K`
etc. (ggml-common.h); each decoder below reads its fields at their byte offsets and follows the arithmetic of
llama.cpp's `dequantize_row_*` in float32, so its output equals the `gguf` package's dequantizer bit for bit
(tested on every tensor of both offline models' files and on random blocks).

Symbols -> variables: d, dmin the block's float16 scales; sc, m the sub-block scales and mins (`k4_scales_mins`
unpacks Q4_K/Q5_K's 12 packed bytes); q the codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["BLOCKS", "GGUFTensor", "dequantize", "k4_scales_mins", "read_gguf"]

QK_K = 256  # weights per k-quant super-block

# type -> (weights per block, bytes per block); the float types as blocks of one value
BLOCKS = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 2 + 16),  # d, 32 4-bit codes
    "Q4_1": (32, 2 + 2 + 16),  # d, m, 32 4-bit codes
    "Q5_0": (32, 2 + 4 + 16),  # d, the 32 fifth bits, 32 low nibbles
    "Q8_0": (32, 2 + 32),  # d, 32 signed bytes
    "Q3_K": (QK_K, 32 + 64 + 12 + 2),  # 256 third bits, 256 2-bit pairs, 16 scales in 6 bits, d
    "Q4_K": (QK_K, 2 + 2 + 12 + 128),  # d, dmin, 8 scales + 8 mins in 6 bits, 256 4-bit codes
    "Q5_K": (QK_K, 2 + 2 + 12 + 32 + 128),  # ... plus the 256 fifth bits
    "Q6_K": (QK_K, 128 + 64 + 16 + 2),  # 256 low nibbles, 256 high 2-bit pairs, 16 int8 scales, d
}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file, as stored: `type` ("Q4_K", "F32", ...), `shape` in PyTorch's order (rows,
    columns; GGUF lists the row length first) and `data`, its raw bytes (n_blocks, bytes per block)."""

    name: str
    type: str
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def bits_per_weight(self) -> float:
        """Bytes on disk × 8 / weights: what the format costs, scales and mins included."""
        return 8 * self.data.size / int(np.prod(self.shape))


def read_gguf(path: str | Path, *, offsets: dict | None = None) -> dict[str, GGUFTensor]:
    """The tensors of a GGUF file, by GGUF name ("blk.0.attn_q.weight"), with their raw blocks (memory-mapped).
    offsets: a dict to fill with each tensor's byte offset in the file (where its blocks start)."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, OSError) as err:  # a bad magic number, a cut-off header or data
        raise ValueError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})") from None
    tensors = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in BLOCKS:
            raise ValueError(f"{path}: tensor {t.name} has type {kind}; qviz decodes {', '.join(BLOCKS)}")
        per_block, size = BLOCKS[kind]
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF: (columns, rows, ...)
        if t.n_bytes != int(np.prod(shape)) // per_block * size or t.data.nbytes != t.n_bytes:
            raise ValueError(
                f"{path}: tensor {t.name} holds {t.data.nbytes} bytes, its shape needs {t.n_bytes}"
            )
        tensors[t.name] = GGUFTensor(t.name, kind, shape, np.asarray(t.data).view(np.uint8).reshape(-1, size))
        if offsets is not None:
            offsets[t.name] = int(t.data_offset)
    return tensors


def dequantize(tensor: GGUFTensor) -> torch.Tensor:
    """The tensor's float32 values, in its shape, decoded block by block (`_DECODERS`)."""
    blocks = torch.from_numpy(np.array(tensor.data))  # a copy: the file is memory-mapped read-only
    return _DECODERS[tensor.type](blocks).reshape(tensor.shape)


# --- the block decoders: (n_blocks, bytes) uint8 -> (n_blocks, weights) float32 -----------------------------------


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Two bytes per row, little-endian float16 -> (n, 1) float32."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 2k) 4-bit codes: the k low nibbles, then the k high nibbles (llama.cpp's order)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bits(b: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, k, 8): bit i of each byte (little-endian)."""
    return (b[..., None] >> torch.arange(8, dtype=torch.uint8)) & 1


def _q4_0(b):
    d, q = _f16(b[:, 0:2]), _nibbles(b[:, 2:18])
    return d * (q.float() - 8)


def _q4_1(b):
    d, m, q = _f16(b[:, 0:2]), _f16(b[:, 2:4]), _nibbles(b[:, 4:20])
    return d * q.float() + m


def _q5_0(b):
    d, qh, low = _f16(b[:, 0:2]), b[:, 2:6], _nibbles(b[:, 6:22])
    fifth = _bits(qh).reshape(-1, 32)  # bit j of the 32-bit qh is weight j's fifth bit
    return d * ((low | (fifth << 4)).float() - 16)


def _q8_0(b):
    d, q = _f16(b[:, 0:2]), b[:, 2:34].view(torch.int8)
    return d * q.float()


def k4_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins per super-block (llama.cpp's get_scale_min_k4):
    sub-blocks 0-3 keep theirs in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 keep their
    low 4 bits in bytes 8-11 (scale: low nibble, min: high nibble) and their top 2 bits in the spare top bits of
    bytes 0-3 (scales) and 4-7 (mins)."""
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([a & 63, (c & 0x0F) | ((a >> 6) << 4)], dim=-1)
    m = torch.cat([b & 63, (c >> 4) | ((b >> 6) << 4)], dim=-1)
    return sc, m


def _k4(b, q):
    """w = (d·sc_j)·q − dmin·m_j for the 8 sub-blocks of 32 of each Q4_K / Q5_K super-block."""
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, m = k4_scales_mins(b[:, 4:16])
    scale, offset = (d * sc.float())[..., None], (dmin * m.float())[..., None]  # (n, 8, 1)
    return (scale * q.reshape(-1, 8, 32).float() - offset).reshape(-1, QK_K)


def _chunks_of_64(qs: torch.Tensor) -> torch.Tensor:
    """(n, 128) bytes of a k-quant -> (n, 256) low nibbles: each 32-byte chunk holds 64 weights, its low nibbles
    first (sub-block 2i), then its high nibbles (sub-block 2i + 1)."""
    return torch.cat([_nibbles(qs[:, 32 * i : 32 * i + 32]) for i in range(4)], dim=-1)


def _q3_k(b):
    """w = (d·(sc_j − 32))·(q − 4) for the 16 sub-blocks of 16: q's low 2 bits in qs (per 128 weights, 4 runs of 32
    in bit pairs 0, 2, 4, 6 of the same 32 bytes), its third bit in hmask (weight i: byte i % 32, bit i // 32); the
    6-bit scales as 4 low bits (bytes 0-7: sub-block j < 8 low nibble, j + 8 high nibble) plus 2 top bits (byte
    8 + j % 4, bit pair j // 4)."""
    hmask, qs, sc, d = b[:, 0:32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low4 = torch.cat([sc[:, :8] & 0x0F, sc[:, :8] >> 4], dim=-1)  # (n, 16)
    top2 = torch.cat([(sc[:, 8:12] >> (2 * k)) & 3 for k in range(4)], dim=-1)  # j = 4k + i
    scales = (low4 | (top2 << 4)).float() - 32
    low = torch.cat(
        [(qs[:, 32 * h : 32 * h + 32] >> (2 * k)) & 3 for h in range(2) for k in range(4)], dim=-1
    )
    high = torch.cat([(hmask >> k) & 1 for k in range(8)], dim=-1)  # weight 32k + l: bit k of hmask[l]
    q = (low | (high << 2)).float() - 4  # (n, 256)
    return ((d * scales)[..., None] * q.reshape(-1, 16, 16)).reshape(-1, QK_K)


def _q4_k(b):
    return _k4(b, _chunks_of_64(b[:, 16:144]))


def _q5_k(b):
    qh, low = b[:, 16:48], _chunks_of_64(b[:, 48:176])
    fifth = _bits(qh).permute(0, 2, 1).reshape(-1, QK_K)  # bit i of qh[l] is the fifth bit of weight 32i + l
    return _k4(b, low | (fifth << 4))


def _q6_k(b):
    """Two halves of 128 weights; in each, ql's 64 bytes give the low nibbles of weights l and l + 32 (low
    nibble) and l + 64, l + 96 (high nibble), qh's 32 bytes their top 2 bits, in bit pairs 0, 2, 4, 6."""
    ql, qh, scales, d = b[:, 0:128], b[:, 128:192], b[:, 192:208].view(torch.int8), _f16(b[:, 208:210])
    halves = []
    for h in range(2):
        low = ql[:, 64 * h : 64 * h + 64]
        low = torch.cat([low[:, :32] & 0x0F, low[:, 32:] & 0x0F, low[:, :32] >> 4, low[:, 32:] >> 4], dim=-1)
        top = qh[:, 32 * h : 32 * h + 32]
        top = torch.cat([(top >> shift) & 3 for shift in (0, 2, 4, 6)], dim=-1)
        halves.append(low | (top << 4))
    q = torch.cat(halves, dim=-1).view(torch.int8) - 32  # (n, 256), codes -32 .. 31
    scale = (d * scales.float())[..., None]  # (n, 16, 1): one per sub-block of 16
    return (scale * q.reshape(-1, 16, 16).float()).reshape(-1, QK_K)


_DECODERS = {
    "F32": lambda b: b.contiguous().view(torch.float32),
    "F16": lambda b: b.contiguous().view(torch.float16).float(),
    "BF16": lambda b: b.contiguous().view(torch.bfloat16).float(),
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q8_0": _q8_0,
    "Q3_K": _q3_k,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}
