"""Bit packing: integer codes into int32 words, in the three on-disk layouts people meet.

A 4-bit code needs half a byte, but tensors hold whole bytes, so eight codes share one 32-bit word.
Every layout here writes codes **low bits first**: code 0 of a word sits in bits 3..0, code 1 in bits 7..4, ...

    word = c0 | c1 << 4 | c2 << 8 | ... | c7 << 28          (4-bit; 2-bit: 16 codes a word; 8-bit: 4)

3-bit codes do not divide 32, so 32 codes fill exactly 3 words and some codes straddle two words (code 10
sits in bits 31..30 of word 0 and bit 0 of word 1). `pack_bits` treats every width alike: the codes form one
long little-endian bit stream that is cut into 32-bit words.

The layouts differ in which axis is packed, how codes are made unsigned, and where zero points go.
W is (out_features, in_features) = (N, K); g is the group size; `g_idx[k]` is the group of input column k.

==================  =========================  ========================  ==================================
layout              packed codes               zero points               scales
==================  =========================  ========================  ==================================
GPTQ v1             qweight int32 [K/p, N],    qzeros int32 [K/g, N/p],  scales fp16 [K/g, N];
                    packed along K             stored as zero - 1 (!)    g_idx int32 [K]
AWQ GEMM (4-bit)    qweight int32 [K, N/8],    qzeros int32 [K/g, N/8]   scales fp16 [K/g, N]
                    along N, order 0,2,4,6,    raw, same order
                    1,3,5,7
compressed-tensors  weight_packed int32        weight_zero_point int32   weight_scale [N, K/g];
pack-quantized      [N, ceil(K*b/32)], codes   [ceil(N*b/32), K/g],      weight_shape [2]
                    offset by 2^(b-1)          packed along N (asym)
==================  =========================  ========================  ==================================

(p = 32 / bits codes a word.) GPTQ and AWQ store unsigned codes u in [0, 2^b - 1]: a symmetric qviz code c
in [-2^(b-1), 2^(b-1) - 1] becomes u = c + 2^(b-1) with zero point 2^(b-1). compressed-tensors stores
signed codes, offset by 2^(b-1) only to pack them, so an asymmetric qviz code u becomes u - 2^(b-1).
In every case (codes - zero_point) * scale, the float weight, is unchanged.

>>> hex(pack_bits(torch.tensor([1, 2, 3, 4, 5, 6, 7, 8]), bits=4).item() & 0xFFFFFFFF)
'0x87654321'
"""

from __future__ import annotations

import math
import warnings

import torch

from .quant import QuantizedTensor, QuantSpec, check_quantized

__all__ = [
    "pack_bits",
    "unpack_bits",
    "to_unsigned",
    "pack_gptq",
    "unpack_gptq",
    "pack_awq",
    "unpack_awq",
    "pack_compressed_tensors",
    "unpack_compressed_tensors",
    "AWQ_ORDER",
    "LAYOUT_BITS",
]

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column AWQ_ORDER[i] of its 8
AWQ_REVERSE_ORDER = tuple(
    AWQ_ORDER.index(j) for j in range(8)
)  # column j sits in nibble (0, 4, 1, 5, ...)[j]
LAYOUT_BITS = {"gptq": (2, 3, 4, 8), "awq": (4,), "compressed-tensors": (2, 3, 4, 5, 6, 7, 8)}


def _check_bits(bits: int, layout: str) -> None:
    if bits not in LAYOUT_BITS[layout]:
        raise ValueError(f"the {layout} layout stores {LAYOUT_BITS[layout]}-bit codes, got bits={bits}")


# --- the bit stream ------------------------------------------------------------------------------------------


def pack_bits(values: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """Pack unsigned integers in [0, 2^bits) along `dim` into int32 words, low bits first.

    n values along `dim` become ceil(n * bits / 32) words (the tail is zero-padded). Code i of every block of
    32 starts at bit i*bits of the block's `bits` words: word (i*bits) // 32, offset (i*bits) % 32.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"pack_bits packs 1- to 8-bit values, got bits={bits}")
    if values.dtype.is_floating_point or values.dtype == torch.bool:
        raise ValueError(f"pack_bits needs an integer tensor, got {values.dtype}")
    if values.numel() and (values.min() < 0 or values.max() >= 2**bits):
        raise ValueError(
            f"{bits}-bit packing needs values in [0, {2**bits - 1}], got [{values.min()}, {values.max()}]"
        )
    v = values.movedim(dim, -1).to(torch.int32)
    n = v.shape[-1]
    if 32 % bits == 0:  # 2, 4, 8 bits: whole values per word, all shifts at once (as in unpack_bits)
        return _pack_whole_words(v, bits).movedim(-1, dim).contiguous()
    v = torch.nn.functional.pad(v, (0, -n % 32)).reshape(*v.shape[:-1], -1, 32)  # (..., blocks, 32 codes)
    words = torch.zeros(*v.shape[:-1], bits, dtype=torch.int32, device=v.device)  # (..., blocks, bits)
    for i in range(32):
        word, offset = divmod(i * bits, 32)
        words[..., word] |= v[..., i] << offset  # int32 shifts wrap: bit 31 set means a negative int32
        if offset + bits > 32:  # the code straddles a word boundary: its high bits start the next word
            words[..., word + 1] |= v[..., i] >> (32 - offset)
    words = words.reshape(*v.shape[:-2], -1)[..., : math.ceil(n * bits / 32)]
    return words.movedim(-1, dim).contiguous()


def _pack_whole_words(v: torch.Tensor, bits: int) -> torch.Tensor:
    """pack_bits along the last dim when `bits` divides 32: each word holds 32/bits codes, code k at bit k*bits.

    The shifted codes occupy disjoint bits, so their sum is their OR; it is formed in int64 (no overflow) and
    mapped to the int32 with the same 32 bits (values >= 2^31 become negative), exactly the loop's words.
    """
    per_word = 32 // bits
    v = torch.nn.functional.pad(v, (0, -v.shape[-1] % per_word)).reshape(*v.shape[:-1], -1, per_word)
    shifts = torch.arange(0, 32, bits, dtype=torch.int64, device=v.device)
    words = (v.to(torch.int64) << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bits(words: torch.Tensor, bits: int, n: int, dim: int = -1) -> torch.Tensor:
    """Inverse of `pack_bits`: the first n unsigned values (int32) packed along `dim` of int32 `words`."""
    if not 1 <= bits <= 8:
        raise ValueError(f"unpack_bits unpacks 1- to 8-bit values, got bits={bits}")
    if words.dtype != torch.int32:
        raise ValueError(f"packed words must be int32, got {words.dtype}")
    w = words.movedim(dim, -1)
    if w.shape[-1] != math.ceil(n * bits / 32):
        raise ValueError(f"{n} {bits}-bit values need {math.ceil(n * bits / 32)} words, got {w.shape[-1]}")
    mask = (1 << bits) - 1
    if 32 % bits == 0:  # 2, 4, 8 bits: whole values per word, all shifts at once
        shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=w.device)
        values = ((w.unsqueeze(-1) >> shifts) & mask).reshape(*w.shape[:-1], -1)[..., :n]
        return values.movedim(-1, dim).contiguous()
    w = torch.nn.functional.pad(w, (0, -w.shape[-1] % bits)).reshape(*w.shape[:-1], -1, bits)
    out = []
    for i in range(32):
        word, offset = divmod(i * bits, 32)
        low_bits = min(bits, 32 - offset)  # `>>` is arithmetic on int32: mask off the sign copies
        v = (w[..., word] >> offset) & ((1 << low_bits) - 1)
        if offset + bits > 32:
            v = v | ((w[..., word + 1] << (32 - offset)) & mask)
        out.append(v)
    values = torch.stack(out, dim=-1).reshape(*w.shape[:-2], -1)[..., :n]
    return values.movedim(-1, dim).contiguous()


# --- from qviz's QuantizedTensor to unsigned (codes, zero points) ---------------------------------------------


def _per_row(qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """scale, zero_point as (N, n_groups) for a 2-D weight, and the group size along K (K for one group)."""
    if qt.codes.dim() != 2:
        raise ValueError(
            f"layouts store 2-D weights (out_features, in_features), got shape {tuple(qt.codes.shape)}"
        )
    n, k = qt.codes.shape
    scale, zero_point = qt.scale.expand(n, -1), qt.zero_point.expand(n, -1)  # "tensor": (1, 1) -> (N, 1)
    return scale, zero_point, k // scale.shape[1]


def to_unsigned(qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and zero points shifted into [0, 2^b - 1]: u = c - qmin (symmetric: c + 2^(b-1), zero 2^(b-1)).

    Raises ValueError for codes or zero points outside the code range (a zero point of 300 would otherwise be
    masked or wrapped into b bits) and for anything else `qviz.quant.check_quantized` refuses."""
    _, zero_point, _ = _per_row(qt)
    check_quantized(qt)
    return qt.codes - qt.spec.qmin, zero_point - qt.spec.qmin


def _scales_as(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`scale` in the dtype a layout stores, refused where the cast would do more than round: a scale past
    the dtype's largest value becomes inf, one below its smallest subnormal becomes 0 (float16: 65504, 6e-8)."""
    stored = scale.to(dtype)
    if not torch.isfinite(stored).all() or (stored == 0).any():
        fi = torch.finfo(dtype)
        raise ValueError(
            f"scales in [{scale.min().item():.3g}, {scale.max().item():.3g}] do not fit {dtype} (from "
            f"{fi.tiny * fi.eps:.3g} to {fi.max:.6g}): keep them in float32 (scale_dtype=torch.float32, "
            "e.g. save_quantized(..., format='compressed-tensors', scale_dtype=torch.float32); the GPTQ format "
            "stores float16), or rescale the weights"
        )
    return stored


def _required(tensors: dict, layout: str, names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"{layout} needs the tensors {list(names)}; missing {missing}")


def _from_unsigned(
    u, uz, scale, bits: int, symmetric: bool, group_size: int | None, dtype, g_idx=None
) -> QuantizedTensor:
    """The QuantizedTensor (codes (N, K), scale/zero_point (N, n_groups)) for unsigned codes u and zeros uz."""
    spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=group_size)
    if symmetric and not bool((uz == -spec.qmin).all()):
        raise ValueError(f"symmetric={symmetric} but stored zero points are not all {-spec.qmin}")
    qt = QuantizedTensor(
        (u + spec.qmin).to(torch.int32), scale.float(), (uz + spec.qmin).to(torch.int32), spec, dtype, g_idx
    )
    check_quantized(qt)  # shapes that disagree with each other, scales that are not positive and finite
    return qt


def _check_contiguous_groups(qt: QuantizedTensor, layout: str) -> None:
    if qt.g_idx is not None:
        raise ValueError(
            f"the {layout} layout stores contiguous groups (column k in group k // group_size), but this weight "
            "has a g_idx (GPTQ act-order without static groups): use the 'gptq' layout, which stores g_idx, or "
            "quantize with static_groups=True"
        )


def _group_size_or_none(n_groups: int, k: int) -> int | None:
    return None if n_groups == 1 else k // n_groups


# --- GPTQ v1 -------------------------------------------------------------------------------------------------


def pack_gptq(qt: QuantizedTensor, scale_dtype=torch.float16) -> dict[str, torch.Tensor]:
    """GPTQ v1 tensors {qweight, qzeros, scales, g_idx} for a (N, K) weight.

    qweight [K*b/32, N] packs the transposed codes along K; 3-bit streams 32 codes into 3 words.
    qzeros [K/g, N*b/32] holds zero_point - 1 (the v1 quirk; readers add 1 back), masked to b bits, so a
    zero point of 0 is stored as 2^b - 1. v1 readers that add 1 without wrapping read it as 2^b: use zero
    points >= 1 (symmetric specs always have 2^(b-1)) when the checkpoint goes to other tools.
    g_idx [K]: group of each input column: `qt.g_idx` (GPTQ act-order without static groups), else k // g.
    """
    bits = qt.spec.bits
    _check_bits(bits, "gptq")
    scale, _, group_size = _per_row(qt)
    u, uz = to_unsigned(qt)
    n, k = u.shape
    per_word = 32 if bits == 3 else 32 // bits
    if k % per_word or n % per_word:
        raise ValueError(
            f"GPTQ {bits}-bit needs in_features and out_features divisible by {per_word}, got {n}x{k}"
        )
    if bool((uz == 0).any()):
        warnings.warn(
            "a zero point of 0 is stored as zero - 1 = 2^b - 1 in GPTQ v1; qviz reads it back exactly, but other "
            "v1 readers (and v1 -> v2 converters) see 2^b. Prefer symmetric specs or compressed-tensors for export.",
            stacklevel=2,
        )
    g_idx = qt.g_idx
    if g_idx is None:
        g_idx = torch.arange(k, device=u.device) // group_size
    elif g_idx.shape != (k,) or g_idx.min() < 0 or g_idx.max() >= scale.shape[1]:
        raise ValueError(f"g_idx must have shape ({k},) with values in [0, {scale.shape[1] - 1}]")
    return {
        "qweight": pack_bits(u.T, bits, dim=0),
        "qzeros": pack_bits((uz.T - 1) & (2**bits - 1), bits, dim=1),
        "scales": _scales_as(scale.T, scale_dtype).contiguous(),
        "g_idx": g_idx.to(torch.int32).clone(),  # its own storage: linears of one stack share one g_idx
    }


def unpack_gptq(
    tensors: dict[str, torch.Tensor], bits: int, symmetric: bool, dtype=torch.float16
) -> QuantizedTensor:
    """Inverse of `pack_gptq`; the QuantizedTensor's g_idx is None when the stored one is the plain k // g."""
    _check_bits(bits, "gptq")
    _required(tensors, "GPTQ", ("qweight", "qzeros", "scales"))
    scales = tensors["scales"]
    n_groups, n = scales.shape
    k = tensors["qweight"].shape[0] * 32 // bits
    u = unpack_bits(tensors["qweight"], bits, k, dim=0).T
    uz = (unpack_bits(tensors["qzeros"], bits, n, dim=1).T + 1) & (2**bits - 1)
    g_idx = tensors.get("g_idx")
    group_size = _group_size_or_none(n_groups, k)
    if g_idx is not None:
        plain = torch.arange(k, device=g_idx.device) // (group_size or k)
        g_idx = None if torch.equal(g_idx.long(), plain) else g_idx.to(torch.int32)
    if g_idx is not None and group_size is None:
        group_size = k // n_groups
    return _from_unsigned(u, uz, scales.T, bits, symmetric, group_size, dtype, g_idx)


# --- AWQ GEMM ------------------------------------------------------------------------------------------------


def _awq_pack_columns(u: torch.Tensor) -> torch.Tensor:
    """u (rows, N) unsigned 4-bit -> (rows, N/8) words; word nibble i holds column AWQ_ORDER[i] of its 8."""
    rows, n = u.shape
    if n % 8:
        raise ValueError(f"AWQ packs 8 output columns per word: out_features must be divisible by 8, got {n}")
    return pack_bits(u.reshape(rows, n // 8, 8)[..., list(AWQ_ORDER)].reshape(rows, n), 4)


def _awq_unpack_columns(words: torch.Tensor) -> torch.Tensor:
    rows, n = words.shape[0], words.shape[1] * 8
    return unpack_bits(words, 4, n).reshape(rows, n // 8, 8)[..., list(AWQ_REVERSE_ORDER)].reshape(rows, n)


def pack_awq(qt: QuantizedTensor, scale_dtype=torch.float16) -> dict[str, torch.Tensor]:
    """AWQ GEMM tensors {qweight [K, N/8], qzeros [K/g, N/8], scales [K/g, N]} for a 4-bit (N, K) weight."""
    _check_bits(qt.spec.bits, "awq")
    _check_contiguous_groups(qt, "AWQ GEMM")
    scale, _, _ = _per_row(qt)
    u, uz = to_unsigned(qt)
    return {
        "qweight": _awq_pack_columns(u.T.contiguous()),
        "qzeros": _awq_pack_columns(uz.T.contiguous()),
        "scales": _scales_as(scale.T, scale_dtype).contiguous(),
    }


def unpack_awq(
    tensors: dict[str, torch.Tensor], symmetric: bool = False, dtype=torch.float16
) -> QuantizedTensor:
    """Inverse of `pack_awq` (AWQ checkpoints are asymmetric; symmetric=True maps zero 8 back to codes -8..7)."""
    _required(tensors, "AWQ GEMM", ("qweight", "qzeros", "scales"))
    u = _awq_unpack_columns(tensors["qweight"]).T
    uz = _awq_unpack_columns(tensors["qzeros"]).T
    scales = tensors["scales"].T
    return _from_unsigned(
        u, uz, scales, 4, symmetric, _group_size_or_none(scales.shape[1], u.shape[1]), dtype
    )


# --- compressed-tensors pack-quantized -----------------------------------------------------------------------


def pack_compressed_tensors(qt: QuantizedTensor, scale_dtype=torch.float16) -> dict[str, torch.Tensor]:
    """compressed-tensors "pack-quantized" tensors for one Linear (names without the "weight_" module prefix).

    weight_packed [N, ceil(K*b/32)]: signed codes c (for asymmetric specs u - 2^(b-1)) stored as c + 2^(b-1);
    weight_scale [N, n_groups]; weight_shape [2]; weight_zero_point (asymmetric only) [ceil(N*b/32), n_groups],
    signed zero points offset and packed along N (dim 0), as compressed-tensors does.
    """
    bits = qt.spec.bits
    _check_bits(bits, "compressed-tensors")
    _check_contiguous_groups(qt, "compressed-tensors")
    scale, _, _ = _per_row(qt)
    u, uz = to_unsigned(qt)  # unsigned = signed + 2^(b-1) for every spec, since qmin is 0 or -2^(b-1)
    out = {
        "weight_packed": pack_bits(u, bits, dim=1),
        "weight_scale": _scales_as(scale, scale_dtype).contiguous(),
        "weight_shape": torch.tensor(list(u.shape)),
    }
    if not qt.spec.symmetric:
        out["weight_zero_point"] = pack_bits(uz, bits, dim=0)
    return out


def unpack_compressed_tensors(
    tensors: dict[str, torch.Tensor], bits: int, symmetric: bool, dtype=torch.float16
) -> QuantizedTensor:
    """Inverse of `pack_compressed_tensors`."""
    _check_bits(bits, "compressed-tensors")
    names = ("weight_packed", "weight_scale", "weight_shape") + (() if symmetric else ("weight_zero_point",))
    _required(tensors, "compressed-tensors" + ("" if symmetric else " (asymmetric)"), names)
    if tensors["weight_shape"].numel() != 2:
        raise ValueError(f"weight_shape must hold [out_features, in_features], got {tensors['weight_shape']}")
    n, k = (int(x) for x in tensors["weight_shape"])
    scale = tensors["weight_scale"]
    u = unpack_bits(tensors["weight_packed"], bits, k, dim=1)
    if u.shape[0] != n:
        raise ValueError(f"weight_shape says {n} output rows, but weight_packed holds {u.shape[0]}")
    if symmetric:
        uz = torch.full(scale.shape, 2 ** (bits - 1), dtype=torch.int32, device=u.device)
    else:
        uz = unpack_bits(tensors["weight_zero_point"], bits, n, dim=0)
    return _from_unsigned(u, uz, scale, bits, symmetric, _group_size_or_none(scale.shape[1], k), dtype)
