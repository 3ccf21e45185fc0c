"""A method's own result (codes, scales, zero points) in GGUF's legacy block types, exactly, so that llama.cpp
runs the model GPTQ or AWQ made: `gguf_tensors(model, result)` feeds `qviz.export.save_quantized(name, tensors,
path, format="gguf")`. The k-quants (Q4_K, ...) have two-level scales no INT-g32 grid maps onto: `qviz.kquants`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .arch import family_of
from .gguf import GGUFTensor
from .models import gguf_name

__all__ = ["GGUF_BLOCK", "GGUF_LAYOUTS", "GGUF_TYPES", "gguf_blocks", "gguf_tensors"]

# GGUF's legacy types hold qviz's own affine grids: blocks of 32 weights of one row, a float16 scale d per block
# (and Q4_1's float16 min m). (bits, symmetric) -> type:  Q4_0 w = d·(q − 8)   Q4_1 w = d·q + m
#                                                         Q5_0 w = d·(q − 16)  Q8_0 w = d·q (q signed)
GGUF_TYPES = {(4, True): "Q4_0", (4, False): "Q4_1", (5, True): "Q5_0", (8, True): "Q8_0"}
GGUF_BLOCK = 32


class GGUFLayout(NamedTuple):
    """Where llama.cpp's converter (convert_hf_to_gguf.py) puts a model type's tensors, beyond `gguf_name`."""

    permuted: dict[str, str]  # linear -> config field: its rows are reordered per head for llama.cpp's rotary
    norms: dict[str, str]  # transformers norm name -> GGUF name; stored: its value + ArchFamily.norm_offset


GGUF_LAYOUTS = {  # the offline models' types: format="gguf" writes an offline model's file
    "llama": GGUFLayout(
        {"self_attn.q_proj": "num_attention_heads", "self_attn.k_proj": "num_key_value_heads"},
        {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"},
    ),
    "gemma3_text": GGUFLayout(
        {},
        {
            "input_layernorm": "attn_norm",
            "post_attention_layernorm": "post_attention_norm",
            "pre_feedforward_layernorm": "ffn_norm",
            "post_feedforward_layernorm": "post_ffw_norm",
        },
    ),
}


def gguf_blocks(qt) -> torch.Tensor:
    """A QuantizedTensor on a GGUF grid (`GGUF_TYPES`, contiguous groups of 32) as that type's blocks,
    (rows, blocks per row, bytes) uint8: its codes exactly, its scales (and Q4_1's m = −scale·zero_point) in
    float16 as GGUF stores them. Layout of `qviz.gguf.BLOCKS`: d first; then 32 codes q = code − qmin, the low
    nibbles of 16 bytes holding weights 0–15 and the high nibbles 16–31; Q5_0's fifth bits before them in one
    little-endian 32-bit word; Q8_0's codes as signed bytes."""
    import torch

    kind, rows = GGUF_TYPES[(qt.spec.bits, qt.spec.symmetric)], qt.codes.shape[0]
    f16 = lambda v: v.to(torch.float16).reshape(rows, -1, 1).view(torch.uint8)  # (rows, blocks, 2)
    parts = [f16(qt.scale)]
    if kind == "Q4_1":
        parts.append(f16(-qt.scale * qt.zero_point))
    if kind == "Q8_0":
        parts.append(qt.codes.to(torch.int8).reshape(rows, -1, GGUF_BLOCK).view(torch.uint8))
        return torch.cat(parts, -1)
    q = (qt.codes - qt.spec.qmin).to(torch.uint8).reshape(rows, -1, GGUF_BLOCK)  # (rows, blocks, 32)
    if kind == "Q5_0":  # bit j of the 32-bit word: the fifth bit of q_j
        fifth = (q >> 4).reshape(rows, -1, 4, 8).to(torch.int32) << torch.arange(8)
        parts.append(fifth.sum(-1).to(torch.uint8))
    low = q & 0x0F
    parts.append(low[..., :16] | (low[..., 16:] << 4))
    return torch.cat(parts, -1)


def gguf_tensors(model, result) -> dict:
    """The GGUF tensors of a method's result for `save_quantized(name, tensors, path, format="gguf")`: every
    quantized linear in its `GGUF_TYPES` blocks, and every float tensor the method changed (AWQ's norms) in
    float32; all else the file takes from the release. Rows are where llama.cpp expects them: q and k permuted
    per head as its converter does (HF pairs dimension i with i + d/2 for the rotation, llama.cpp i with i + 1)."""
    layout = GGUF_LAYOUTS.get(model.config.model_type)
    if layout is None:
        raise ValueError(
            f"GGUF export knows the layouts of {', '.join(GGUF_LAYOUTS)}, not {model.config.model_type}"
        )
    tensors = {}
    for name, qt in result.linears.items():
        if qt.g_idx is not None:
            raise ValueError(
                f"{name}: act-order groups without static groups (g_idx) do not fit GGUF's blocks"
            )
        blocks, linear = gguf_blocks(qt), name.split(".", 3)[3]  # model.layers.<i>.<linear>
        if linear in layout.permuted:
            heads, n = getattr(model.config, layout.permuted[linear]), blocks.shape[0]
            blocks = blocks[torch.arange(n).reshape(heads, 2, n // heads // 2).transpose(1, 2).reshape(-1)]
        key, kind = gguf_name(name), GGUF_TYPES[(qt.spec.bits, qt.spec.symmetric)]
        tensors[key] = GGUFTensor(
            key, kind, tuple(qt.codes.shape), blocks.reshape(-1, blocks.shape[-1]).numpy()
        )
    offset = family_of(model).norm_offset
    for key, t in result.float_tensors.items():
        parts = key.split(".")  # model.layers.<i>.<norm>.weight
        norm = layout.norms.get(parts[3]) if len(parts) == 5 and parts[4] == "weight" else None
        if norm is None:
            raise ValueError(f"the {result.method} result changed {key}, which the GGUF export cannot place")
        name = f"blk.{parts[2]}.{norm}.weight"
        values = (t.detach().float() + offset).contiguous().numpy()
        tensors[name] = GGUFTensor(name, "F32", tuple(t.shape), values.view(np.uint8).reshape(-1, 4))
    return tensors
