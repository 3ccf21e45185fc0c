"""torch's built-in INT4 matmul (the "tinygemm" kernels): layout conversion and the call.

tinygemm stores a 4-bit weight W (N, K) in its own tiled format (`_convert_weight_to_int4pack`) and one
(scale, zero) pair per group as a tensor `scales_and_zeros` of shape (K/G, N, 2). It dequantizes as

    w = (q - 8) * scale + zero            q in [0, 15] unsigned

whereas qviz dequantizes as w = (q - z) * scale with an integer zero point z in [0, 15]. Expanding ours,
(q - z) * s = (q - 8) * s + (8 - z) * s, so the conversion is exact: same scale, zero = (8 - z) * scale.
(Symmetric qviz codes c in [-8, 7] are q = c + 8 with z = 8, hence zero = 0.)

Constraints (torch 2.4+): 4-bit only; G in {32, 64, 128, 256}; N divisible by 16 and K by 16 * inner_k_tiles.
On CUDA the activations must be bfloat16. On CPU (`..._for_cpu`, torch 2.13 measured here) bfloat16, float16
and float32 all run; float32 matches the dequantized reference to ~1e-5, bf16 only to bf16 rounding. CPU int4
is not faster than a dense matmul on this machine: the win is on GPUs, where decoding is bandwidth-bound.
"""

from __future__ import annotations

import torch

__all__ = ["check_int4_shapes", "to_tinygemm", "int4_mm"]

GROUP_SIZES = (32, 64, 128, 256)


def _inner_k_tiles(k: int) -> int:
    for tiles in (8, 4, 2):
        if k % (16 * tiles) == 0:
            return tiles
    raise ValueError(f"torch int4 needs in_features divisible by 32, got {k}")


def check_int4_shapes(n: int, k: int, group_size: int, bits: int) -> None:
    """Raise ValueError unless tinygemm can run a (n, k) weight with this group size and bit width."""
    if bits != 4:
        raise ValueError(f"torch's int4 kernels run 4-bit weights only, got bits={bits}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"torch int4 needs group_size in {GROUP_SIZES}, got {group_size}")
    if n % 16:
        raise ValueError(f"torch int4 needs out_features divisible by 16, got {n}")
    _inner_k_tiles(k)


def to_tinygemm(
    u: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed weight, scales_and_zeros (K/G, N, 2)) from unsigned codes u (N, K) and per-group
    scale / unsigned zero_point (K/G, N), on u's device."""
    n, k = u.shape
    check_int4_shapes(n, k, group_size, 4)
    tiles = _inner_k_tiles(k)
    if u.device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32).contiguous(), tiles)
    else:  # the CUDA op takes two codes per byte, the even column in the high nibble
        u8 = (u[:, ::2] << 4 | u[:, 1::2]).to(torch.uint8).contiguous()
        packed = torch.ops.aten._convert_weight_to_int4pack(u8, tiles)
    s = scale.float()
    zero = (8 - zero_point.float()) * s  # exact in float32: at most 5 significant bits times a float
    return packed, torch.stack([s, zero], dim=-1).to(dtype).contiguous()


def int4_mm(
    x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor
) -> torch.Tensor:
    """x (M, K) @ W.T -> (M, N) with W held by tinygemm. x's dtype must equal scales_and_zeros'."""
    if x.device.type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)
    return torch.ops.aten._weight_int4pack_mm(x, packed, group_size, scales_and_zeros)
