"""A W4A16 matmul in Triton, written to be read: 4-bit weights, 16-bit activations, fp32 accumulation.

    y (M, N) = x (M, K) @ W.T        W (N, K) stored as 4-bit codes, 8 to an int32 word

Why a kernel at all? Decoding one token multiplies a (1, K) activation by every weight matrix: the GPU
spends its time *reading weights*, not multiplying. A float16 W costs 2 bytes per weight to read; the
packed codes cost 0.5 byte. A kernel that reads the packed words and turns them into floats *in registers*
(never writing a float W back to memory) can approach a 4x speed-up; unpacking first, then calling a
float matmul, cannot, because it writes and re-reads the full float W.

Memory layout (GPTQ-style, packed along K):

    qweight     int32 (K/8, N)   word [k // 8, n] holds code (k, n) in bits 4*(k % 8) .. 4*(k % 8) + 3
    scales      (K/G, N)         one scale per group of G input rows and output column
    zero_point  uint8 (K/G, N)   unsigned zero point z; w = (q - z) * scale
    g_idx       int32 (K,)       optional (GPTQ act-order): the group of row k; without it, k // G

Tiling: the output is cut into BLOCK_M x BLOCK_N tiles, one program (one thread block) per tile. Each
program walks K in steps of BLOCK_K: it loads a (BLOCK_M, BLOCK_K) tile of x and the (BLOCK_K, BLOCK_N)
tile of W, which in memory is only (BLOCK_K / 8, BLOCK_N) words, unpacks and dequantizes W there and
then, and accumulates x_tile @ W_tile into a float32 (BLOCK_M, BLOCK_N) accumulator.

Running on a CPU: set the environment variable TRITON_INTERPRET=1 *before* triton is imported; the same
kernel then runs on CPU tensors through Triton's numpy interpreter (slowly, but exactly the same code).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["w4a16_matmul", "interpreter_active"]


def interpreter_active() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _w4a16_kernel(
    x_ptr, qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, y_ptr,
    M, N, K, group_size, k_per_split,
    stride_xm, stride_xk, stride_qk, stride_qn, stride_sg, stride_sn, stride_ym, stride_yn,
    HAS_G_IDX: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # Which output tile is this program's? Rows offs_m of y, columns offs_n.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)  # split-K: this program sums only K rows [pid_k * k_per_split, + k_per_split)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask_m = offs_m < M
    mask_n = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * k_per_split, tl.minimum((pid_k + 1) * k_per_split, K), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,) input rows handled in this step
        mask_k = offs_k < K

        # 1. Activations: an ordinary (BLOCK_M, BLOCK_K) tile of x.
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )

        # 2. Packed weights: row k lives in word row k // 8. Eight neighbouring k share a word, so the
        #    (BLOCK_K, BLOCK_N) gather below reads each word 8 times from cache but once from memory.
        words = tl.load(
            qweight_ptr + (offs_k[:, None] // 8) * stride_qk + offs_n[None, :] * stride_qn,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0,
        )

        # 3. Unpack nibbles: shift code (k % 8) down to bits 3..0, keep 4 bits. `>>` on int32 copies the
        #    sign bit in from the left (for codes in the top nibble), and the mask removes those copies.
        q = (words >> ((offs_k[:, None] % 8) * 4)) & 0xF  # (BLOCK_K, BLOCK_N) integers in [0, 15]

        # 4. Dequantize in registers: each row k uses the scale and zero point of its group.
        if HAS_G_IDX:
            g = tl.load(g_idx_ptr + offs_k, mask=mask_k, other=0)
        else:
            g = offs_k // group_size
        s_offs = g[:, None] * stride_sg + offs_n[None, :] * stride_sn
        s_mask = mask_k[:, None] & mask_n[None, :]
        scale = tl.load(scales_ptr + s_offs, mask=s_mask, other=0.0).to(tl.float32)
        zero = tl.load(zeros_ptr + s_offs, mask=s_mask, other=0).to(tl.float32)
        w = (q.to(tl.float32) - zero) * scale  # (BLOCK_K, BLOCK_N) floats, never written to memory

        # 5. Multiply-accumulate on the tensor cores in the activations' precision, summing in float32.
        acc += tl.dot(x, w.to(x.dtype))

    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    y_mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:  # several programs own this tile: add partial sums into a float32 output, zeroed beforehand
        tl.atomic_add(y_ptrs, acc, mask=y_mask)


def w4a16_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zero_point: torch.Tensor,
    group_size: int,
    g_idx: torch.Tensor | None = None,
    block_m: int = 16,
    block_n: int = 32,
    block_k: int = 64,
    split_k: int | None = None,
) -> torch.Tensor:
    """y (M, N) = x (M, K) @ W.T, W given as qweight (K/8, N) int32, scales (K/G, N), zero_point (K/G, N).

    Block sizes must be powers of two, at least 16 (the smallest tile `tl.dot` accepts); block_k a multiple of 8.
    split_k: programs sharing one output tile, each summing a slice of K. At batch 1 there are only N/block_n
    tiles, too few to keep every streaming multiprocessor reading weights; None picks it from the GPU's SM
    count (1 on the CPU interpreter and for batches over 16).
    """
    if x.device.type == "cpu" and not interpreter_active():
        raise ValueError(
            "the Triton kernel runs on CPU tensors only under the interpreter: set TRITON_INTERPRET=1 "
            "before importing triton, or use backend='reference' / 'torch_int4'"
        )
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        raise ValueError(
            "Triton's CPU interpreter computes bfloat16 wrongly (numpy has no bfloat16): use float16 or float32"
        )
    if x.dim() != 2 or qweight.dtype != torch.int32 or qweight.shape[0] * 8 != x.shape[1]:
        raise ValueError(
            f"expected x (M, K) and int32 qweight (K/8, N), got {tuple(x.shape)} and {tuple(qweight.shape)}"
        )
    M, K = x.shape
    N = qweight.shape[1]
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
    if split_k is None:
        split_k = _default_split_k(x.device, tiles, M, K, block_k)
    k_per_split = triton.cdiv(triton.cdiv(K, split_k), block_k) * block_k  # a whole number of K blocks
    if split_k == 1:
        y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    else:
        y = torch.zeros(M, N, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n), split_k)
    _w4a16_kernel[grid](
        x, qweight, scales, zero_point, g_idx if g_idx is not None else qweight, y,
        M, N, K, group_size, k_per_split,
        x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1), y.stride(0), y.stride(1),
        HAS_G_IDX=g_idx is not None, SPLIT_K=split_k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return y.to(x.dtype)


def _default_split_k(device: torch.device, tiles: int, M: int, K: int, block_k: int) -> int:
    """Enough K slices for about two programs per SM at small batch (a guess to tune with bench/gpu_check)."""
    if device.type != "cuda" or M > 16:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    split = 1
    while tiles * split < 2 * sms and split < 8 and K // (2 * split) >= block_k:
        split *= 2
    return split
