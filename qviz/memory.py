"""Will it fit? The memory a model needs to run, from its config alone, against the memory of common GPUs.

    memory = weights + KV cache + activations + overhead

Weights. The config (h hidden_size, i intermediate_size, d head_dim, L layers) gives every tensor (`tensors`):

    embedding (vocab, h); lm_head (vocab, h), absent when tied to the embedding; the final norm (h)
    per layer: q (heads·d, h), k and v (kv_heads·d, h), o (h, heads·d), gate and up (i, h), down (h, i), and
               norms (`LAYER_NORMS`): 2 of h (Llama); Gemma 3: 4 of h and q_norm, k_norm of d

Which of them a checkpoint quantizes is data (`QUANTIZED`): Hugging Face formats quantize the decoder linears and
keep the embedding, lm_head and norms in float; llama.cpp's GGUF quantizes the embedding and the lm_head too
("output", at Q6_K) and keeps the norms in float32. A quantized linear W (N, K) = (out_features, in_features),
group size g, b bits, costs what `qviz.export.save_quantized` writes, to the byte:

    compressed-tensors  weight_packed int32 [N, ⌈K·b/32⌉] + weight_scale (dtype) [N, K/g] + weight_shape int64 [2]
                        (+ weight_zero_point int32 [⌈N·b/32⌉, K/g] when asymmetric)
    gptq                qweight int32 [⌈K·b/32⌉, N] + qzeros int32 [K/g, ⌈N·b/32⌉] + scales fp16 [K/g, N]
                        + g_idx int32 [K]
    GGUF type T         K / block blocks of T per row (`gguf.GGML_QUANT_SIZES`: Q4_K is 144 bytes per 256 weights)
    fp8, nf4, mxfp4,    1 byte + one scale per row; ½ byte + a float32 absmax per 64 weights (double quantization:
    nvfp4               1 byte per 64 + float32 per 64·256; bitsandbytes' ~1 KB of state per tensor not counted);
                        ½ byte + a 1-byte scale per 32 or 16 weights (+ 4 bytes per tensor)

KV cache: per token 2 × layers × kv_heads × d × bytes per element (`qviz.kvcache.kv_bytes_per_token`, scales of a
quantized cache included), × context × batch; a sliding-window layer (Gemma 3: 15 of 18) keeps the last window
− 1 tokens, as transformers' DynamicSlidingWindowLayer does (the new token completes the window).

Activations: the prompt read in one pass, one layer's working set alive at a time: the residual stream and its
normalised copy (2h) and the MLP's gate, up and their product (3i) per token, in 16 bits, with an attention kernel
that never forms the context × context scores (SDPA, FlashAttention), and the last position's logits in float32.
Runtimes that read long prompts in chunks (llama.cpp: 512 tokens, vLLM's chunked prefill) need less.

Overhead: 1 GiB by default: the CUDA context (≈0.3–0.5 GiB with lazy kernel loading), cuBLAS workspaces and the
allocator's fragmentation; the top of the usual 0.5–1 GiB, so that "fits" is not a close call (`overhead_gib`).

Units: bytes inside; GPU memory as the box says it, which is binary: a "24 GB" RTX 4090 holds 24 GiB = 24·2^30
bytes. Hub file sizes are decimal: Llama-3-70B's Q4_K_M file, 42.5 GB, is 39.6 GiB.

Worked examples. "A 4-bit 7B model runs in 6 GB": its weights do (3.9 GB: 4.16 bits per linear weight, and the
embedding and lm_head in bf16), but not with a 4k context, whose FP16 KV cache alone is 2 GiB:

>>> p = plan("llama-2-7b", WeightFormat("gptq", bits=4, group_size=128), context=4096)
>>> round(p.weights / 1e9, 2), round(p.kv_cache / 2**30, 2), p.fits("6 GB"), p.fits("8 GB")
(3.89, 2.0, False, True)
>>> plan("llama-2-7b", WeightFormat("gptq", bits=4, group_size=128), context=1024).fits("6 GB")
True

Llama-3-70B at Q4_K_M: 42.5 GB of weights (the published file: 42.52 GB), 4.82 bits per weight; at 8k context
its cache (8 KV heads of 128 for 64 query heads: grouped-query attention) adds 2.5 GiB; a 48 GB card holds it all:

>>> p = plan("llama-3-70b", "Q4_K_M", context=8192)
>>> round(p.weights / 1e9, 2), round(p.bits_per_weight, 2), round(p.kv_cache / 2**30, 2)
(42.51, 4.82, 2.5)
>>> p.fits("40 GB (A100 40GB)"), p.fits("48 GB (A6000, L40S)")
(False, True)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .act import ACT_FORMATS
from .kvcache import KVSpec, kv_bytes_per_token
from .microscaling import FP4_FORMATS
from .models import gguf_name
from .pack import LAYOUT_BITS
from .to_gguf import GGUF_LAYOUTS

__all__ = ["EXAMPLES", "FORMATS", "GGUF_MIXES", "GPUS", "KV_FORMATS", "LAYER_NORMS", "LINEARS", "QUANTIZED",
           "DecoderShape", "MemoryPlan", "Stored", "WeightFormat", "decoder_shape", "gguf_file_bytes", "gguf_types",
           "plan", "tensor_bytes", "tensors"]  # fmt: skip

GiB = 2**30
# Public configs (config.json numbers) of the worked examples; any other config works the same way.
_LLAMA_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                  num_key_value_heads=8, tie_word_embeddings=False, model_type="llama")  # fmt: skip
EXAMPLES = {
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False, model_type="llama"),
    "llama-2-70b": dict(_LLAMA_70B, vocab_size=32000),
    "llama-3-70b": dict(_LLAMA_70B, vocab_size=128256),
}  # fmt: skip
# GiB a GPU gives a model (the box's "GB" are GiB); a Mac's GPU: the ~¾ of unified memory macOS lets it wire by
# default. nvidia-smi shows a little less than the box (an H100's 80 GB reads 79.6 GiB): the overhead covers it.
GPUS = {"6 GB": 6, "8 GB": 8, "12 GB": 12, "16 GB (T4, RTX 4080)": 16, "24 GB (RTX 4090, L4)": 24,
        "40 GB (A100 40GB)": 40, "48 GB (A6000, L40S)": 48, "80 GB (A100, H100)": 80, "141 GB (H200)": 141,
        "Mac 16 GB unified": 12, "Mac 36 GB unified": 27, "Mac 64 GB unified": 48, "Mac 128 GB unified": 96}  # fmt: skip

# (out_features, in_features) of each decoder linear, as DecoderShape fields (q_dim = heads·d, kv_dim = kv_heads·d)
LINEARS = {
    "self_attn.q_proj": ("q_dim", "hidden_size"), "self_attn.k_proj": ("kv_dim", "hidden_size"),
    "self_attn.v_proj": ("kv_dim", "hidden_size"), "self_attn.o_proj": ("hidden_size", "q_dim"),
    "mlp.gate_proj": ("intermediate_size", "hidden_size"), "mlp.up_proj": ("intermediate_size", "hidden_size"),
    "mlp.down_proj": ("hidden_size", "intermediate_size"),
}  # fmt: skip
_LLAMA_NORMS = (("input_layernorm", "hidden_size"), ("post_attention_layernorm", "hidden_size"))
_QK_NORMS = (("self_attn.q_norm", "head_dim"), ("self_attn.k_norm", "head_dim"))
_GEMMA3_NORMS = (*_LLAMA_NORMS, ("pre_feedforward_layernorm", "hidden_size"),
                 ("post_feedforward_layernorm", "hidden_size"), *_QK_NORMS)  # fmt: skip
# model_type -> the norm vectors of one layer (name, size); any other model_type: Llama's two
LAYER_NORMS = {"llama": _LLAMA_NORMS, "qwen3": _LLAMA_NORMS + _QK_NORMS, "gemma3_text": _GEMMA3_NORMS,
               "gemma3": _GEMMA3_NORMS}  # fmt: skip
# which roles (LINEARS names, "embedding", "lm_head") each kind of format quantizes; the rest stays float
QUANTIZED = {
    "hf": frozenset(LINEARS),
    "gguf": frozenset({*LINEARS, "embedding", "lm_head"}),
    "float": frozenset(),
}

FLOAT_BYTES = {"float32": 4, "bf16": 2, "fp16": 2}
BLOCK_FORMATS = {"fp8": None, "nf4": 64, **FP4_FORMATS}  # weights per scale along a row (fp8: the whole row)
GGUF_TYPES = tuple("Q8_0 Q6_K Q5_K Q5_1 Q5_0 Q4_K Q4_1 Q4_0 IQ4_NL IQ4_XS Q3_K Q2_K".split())
# llama.cpp's "_M" mixes (llama_tensor_get_type): (the type of most tensors, the type of attn_v and ffn_down in the
# layers `_more_bits` picks); in an 80-layer (70B) Llama the other attn_v go Q3_K/Q4_K -> Q5_K.
GGUF_MIXES = {"Q4_K_M": ("Q4_K", "Q6_K"), "Q5_K_M": ("Q5_K", "Q6_K")}
_MORE_BITS = ("self_attn.v_proj", "mlp.down_proj")
# a k-quant's blocks are 256 weights of one row: for rows of another length llama.cpp falls back to these
_K_FALLBACK = dict(Q4_K="Q5_0", Q5_K="Q5_1", Q6_K="Q8_0", Q3_K="IQ4_NL", Q2_K="IQ4_NL", IQ4_XS="IQ4_NL")
FORMATS = ("compressed-tensors", "gptq", *FLOAT_BYTES, *BLOCK_FORMATS, *GGUF_TYPES, *GGUF_MIXES)
KV_FORMATS = ("fp16", "bf16", *ACT_FORMATS)  # 16-bit floats, or quantized as qviz.kvcache does


@dataclass(frozen=True)
class WeightFormat:
    """How the weights are stored. Validated on construction; bad values raise ValueError."""

    format: str = "compressed-tensors"  # one of FORMATS: integer layout, float dtype, block format, GGUF
    bits: int = 4  # integer layouts: code width (gptq 2, 3, 4, 8; compressed-tensors 2..8)
    group_size: int | None = 128  # integer layouts: weights per scale along in_features; None: one per row
    symmetric: bool = True  # integer layouts: False adds a zero point per group
    dtype: str = "bf16"  # HF formats: the float tensors, compressed-tensors' and FP8's scales, activations
    double_quant: bool = False  # nf4: bitsandbytes' 8-bit absmaxes

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}: choose one of {', '.join(FORMATS)}")
        allowed = LAYOUT_BITS.get(self.format)
        if allowed and (isinstance(self.bits, bool) or self.bits not in allowed):
            raise ValueError(f"bits must be one of {allowed} for the {self.format} layout, got {self.bits!r}")
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise ValueError(
                f"group_size must be a positive integer (e.g. 128) or None (one per row), got {g!r}"
            )
        if self.dtype not in FLOAT_BYTES:
            raise ValueError(f"dtype must be one of {tuple(FLOAT_BYTES)}, got {self.dtype!r}")
        if not isinstance(self.symmetric, bool) or not isinstance(self.double_quant, bool):
            raise ValueError(f"symmetric and double_quant must be True or False, got {self.symmetric!r}, "
                             f"{self.double_quant!r}")  # fmt: skip

    @property
    def kind(self) -> str:
        """The key of `QUANTIZED`: "gguf", "float", or "hf" (the quantized Hugging Face formats)."""
        if self.format in GGUF_TYPES or self.format in GGUF_MIXES:
            return "gguf"
        return "float" if self.format in FLOAT_BYTES else "hf"

    @property
    def label(self) -> str:
        if self.format in LAYOUT_BITS:
            group = f"g{self.group_size}" if self.group_size else "per-channel"
            return f"INT{self.bits} {group}{'' if self.symmetric else ' asym'} ({self.format})"
        extra = " + double quant" if self.double_quant and self.format == "nf4" else ""
        return f"{self.format.upper()}{extra}{' GGUF' if self.kind == 'gguf' else ''}"


@dataclass(frozen=True)
class DecoderShape:
    """The numbers of a decoder's config that set its memory (config.json names)."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    model_type: str = "llama"
    sliding_window: int | None = None  # tokens a sliding-window layer attends to
    sliding_layers: int = 0  # how many of the layers are sliding-window ones

    q_dim = property(lambda s: s.num_attention_heads * s.head_dim)
    kv_dim = property(lambda s: s.num_key_value_heads * s.head_dim)


def decoder_shape(model) -> DecoderShape:
    """The shape of `model`: a name (a key of EXAMPLES; an offline model, a Hugging Face id or a folder, whose config
    alone `qviz.models.model_config` reads: an offline model is converted on first use), a transformers config, or
    a config.json dict."""
    from . import models

    name = model if isinstance(model, str) else "config"
    if isinstance(model, str) and model in EXAMPLES:
        model = EXAMPLES[model]
    elif isinstance(model, str):
        if model not in models.OFFLINE_MODELS and "/" not in model and not os.path.isdir(model):
            raise ValueError(f"unknown model {model!r}: use an offline model ({', '.join(models.OFFLINE_MODELS)}), "
                             f"an example ({', '.join(EXAMPLES)}), a Hugging Face id or folder, or a config")  # fmt: skip
        model = models.model_config(model)
    if hasattr(model, "get_text_config"):  # a transformers config (a multimodal one holds the decoder's)
        model = model.get_text_config(decoder=True).to_dict()
    if not isinstance(model, Mapping):
        raise ValueError(f"model must be a name, a config or a parameter count, got {type(model).__name__}")
    cfg = dict(model.get("text_config") or model)
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [f for f in fields if not isinstance(cfg.get(f), int) or cfg[f] < 1]
    if missing:
        raise ValueError(f"the config needs positive integers {fields}; missing or not positive: {missing}")
    heads, kinds = cfg["num_attention_heads"], cfg.get("layer_types") or []
    return DecoderShape(
        name, *(cfg[f] for f in fields), cfg.get("num_key_value_heads") or heads,
        cfg.get("head_dim") or cfg["hidden_size"] // heads, cfg.get("tie_word_embeddings", True),
        cfg.get("model_type", "llama"), cfg.get("sliding_window"), kinds.count("sliding_attention"),
    )  # fmt: skip


def _shape(model) -> DecoderShape:
    return model if isinstance(model, DecoderShape) else decoder_shape(model)


def tensors(model) -> dict[str, tuple[str, int, int, int]]:
    """Every weight of the decoder by module name: (role, layer, rows, columns). role: a LINEARS name,
    "embedding", "lm_head" or "norm" (one row); layer -1 outside the layers. A tied lm_head is the embedding:
    not listed twice. `tensors("smollm2-135m")["model.layers.0.mlp.down_proj"]`: ("mlp.down_proj", 0, 576, 1536)."""
    s = _shape(model)
    out = {"model.embed_tokens": ("embedding", -1, s.vocab_size, s.hidden_size)}
    for i in range(s.num_hidden_layers):
        for name, (rows, cols) in LINEARS.items():
            out[f"model.layers.{i}.{name}"] = (name, i, getattr(s, rows), getattr(s, cols))
        for name, size in LAYER_NORMS.get(s.model_type, _LLAMA_NORMS):
            out[f"model.layers.{i}.{name}"] = ("norm", i, 1, getattr(s, size))
    out["model.norm"] = ("norm", -1, 1, s.hidden_size)
    if not s.tie_word_embeddings:
        out["lm_head"] = ("lm_head", -1, s.vocab_size, s.hidden_size)
    return out


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def gguf_types(model, fmt: str) -> dict[str, str]:
    """The GGML type llama-quantize gives each tensor of `model` in a file of type `fmt` (GGUF_TYPES, GGUF_MIXES):
    the output (lm_head, or the tied embedding) Q6_K unless the file is Q8_0; in the "_M" mixes attn_v and
    ffn_down of some layers more bits; norms F32; k-quants fall back (`_K_FALLBACK`) on rows not of 256."""
    s = _shape(model)
    base, more = GGUF_MIXES.get(fmt, (fmt, fmt))
    out = {}
    for name, (role, i, _, K) in tensors(s).items():
        if role == "norm":
            out[name] = "F32"
        elif role == "lm_head" or (role == "embedding" and s.tie_word_embeddings):
            out[name] = "Q8_0" if K % 256 or base == "Q8_0" else "Q6_K"
        else:
            kind = more if role in _MORE_BITS and _more_bits(i, s.num_hidden_layers) else base
            if role == "self_attn.v_proj" and s.num_hidden_layers == 80 and kind in ("Q3_K", "Q4_K"):
                kind = "Q5_K"  # llama.cpp: "in the 70B model we have 8 heads sharing the same attn_v weights"
            out[name] = _K_FALLBACK.get(kind, kind) if K % 256 else kind
    return out


class Stored(NamedTuple):
    bytes: int  # what the tensor takes: codes, scales, zero points and g_idx
    quantized: bool


def _divides(n: int, K: int, name: str, what: str) -> None:
    if K % n:
        ok = [g for g in (16, 32, 64, 96, 128, 192, 256) if K % g == 0]
        raise ValueError(
            f"{what} needs rows in multiples of {n}: {name} has in_features {K} ({ok} divide it)"
        )


def _stored(f: WeightFormat, role: str, N: int, K: int, name: str, gguf: str | None = None) -> Stored:
    """One (N, K) tensor of `role`, in `f`, or in GGML type `gguf` (see the module doc for the layouts)."""
    if gguf is not None:
        if gguf not in GGMLQuantizationType.__members__:
            raise ValueError(f"{name}: {gguf!r} is not a GGML type (e.g. {', '.join(GGUF_TYPES)})")
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[gguf]]
        _divides(block, K, name, gguf)
        return Stored(N * K // block * size, gguf not in ("F32", "F16", "BF16"))
    if role not in QUANTIZED[f.kind]:
        return Stored(N * K * FLOAT_BYTES[f.format if f.kind == "float" else f.dtype], False)
    scale = FLOAT_BYTES[f.dtype]
    if f.format in LAYOUT_BITS:
        b, g = f.bits, f.group_size or K
        _divides(g, K, name, f"group_size {f.group_size}")
        words = lambda n: math.ceil(n * b / 32)  # int32 words that hold n packed b-bit codes
        if f.format == "gptq":
            if K % (32 // math.gcd(b, 32)) or N % (32 // math.gcd(b, 32)):
                raise ValueError(f"GPTQ {b}-bit packs whole words along both axes: {name} is {N}x{K}")
            return Stored(4 * words(K) * N + 4 * (K // g) * words(N) + 2 * (K // g) * N + 4 * K, True)
        zeros = 0 if f.symmetric else 4 * words(N) * (K // g)
        return Stored(
            4 * N * words(K) + scale * N * (K // g) + 16 + zeros, True
        )  # 16: weight_shape int64 [2]
    if f.format == "fp8":  # compressed-tensors' FP8: one byte a weight, one scale per output row
        return Stored(N * K + scale * N, True)
    if f.format == "nf4":  # bitsandbytes: blocks of 64 over the flattened tensor
        n = math.ceil(N * K / 64)
        return Stored(N * K // 2 + (n + 4 * math.ceil(n / 256) if f.double_quant else 4 * n), True)
    _divides(BLOCK_FORMATS[f.format], K, name, f.format.upper())  # MXFP4, NVFP4: 1-byte scale per block
    return Stored(N * K // 2 + N * K // BLOCK_FORMATS[f.format] + 4 * (f.format == "nvfp4"), True)


def _weight_format(weights) -> WeightFormat:
    return weights if isinstance(weights, WeightFormat) else WeightFormat(weights)


def tensor_bytes(model, weights: WeightFormat | str | Mapping[str, str]) -> dict[str, Stored]:
    """The bytes of every tensor of `tensors(model)` stored in `weights`: a WeightFormat, a format name (with its
    defaults), or a GGML type per tensor name ({"model.embed_tokens": "Q8_0", ...}, as `qviz.models.
    release_types` gives them; norms float32). Raises ValueError where a group or block does not divide a row."""
    s = _shape(model)
    if isinstance(weights, Mapping):
        types, f = {**{n: "F32" for n, t in tensors(s).items() if t[0] == "norm"}, **weights}, WeightFormat()
    else:
        f = _weight_format(weights)
        types = gguf_types(s, f.format) if f.kind == "gguf" else {}
    missing = [n for n in tensors(s) if n not in types] if isinstance(weights, Mapping) else []
    if missing:
        raise ValueError(f"the GGUF types given have no entry for {missing[:3]} ({len(missing)} tensors)")
    return {
        name: _stored(f, role, N, K, name, types.get(name)) for name, (role, _, N, K) in tensors(s).items()
    }


# GGUF names of the per-head q/k norms; the layer norms' names are qviz.to_gguf.GGUF_LAYOUTS' (llama.cpp's)
_GGUF_QK_NORMS = {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
GGUF_ALIGNMENT = 32  # general.alignment's default: the tensor data starts, and each tensor is padded, to it
# bytes allowed for the fixed header and the small keys (architecture, shapes, token ids, flags): ~1.5 KB in both
GGUF_OTHER_METADATA = 4096


def _gguf_tensor_name(name: str, role: str, layer: int, norms: dict[str, str]) -> str:
    if role in LINEARS:
        return gguf_name(name)
    if role == "norm" and layer >= 0:
        part = name.split(".", 3)[3]
        return f"blk.{layer}.{norms.get(part, part)}.weight"
    return {"embedding": "token_embd", "lm_head": "output"}.get(role, "output_norm") + ".weight"


def gguf_file_bytes(model, weights: WeightFormat | str | Mapping[str, str], tokenizer) -> int:
    """The size of a GGUF file of `model` in `weights` (as `tensor_bytes` takes them) with `tokenizer` (a
    transformers tokenizer): its tensors plus an estimate of the header that a GGUF writer (llama.cpp's
    convert_hf_to_gguf) puts before them. Within 0.1% of both offline models' released files.

    The header: the tokenizer's vocabulary, stored as metadata (`tokenizer.ggml.tokens`: per token a GGUF string,
    8-byte length + UTF-8 bytes; `token_type`: 4 bytes per token; SentencePiece-style vocabularies, Unigram or
    byte-fallback BPE like Gemma's, add `scores`, 4 bytes per token; byte-level BPE ones like SmolLM2's add
    `merges`, a string "a b" per merge of the tokenizer's backend JSON); the chat template, if any; the tensor-info
    table (per tensor: its llama.cpp name as a string, 4-byte n_dims, 8 bytes per dim, 4-byte type, 8-byte
    offset); `GGUF_OTHER_METADATA` for the fixed header and the other keys; and the padding that aligns the tensor
    data and each tensor to `GGUF_ALIGNMENT` bytes. It is 1.8% of SmolLM2-135M's file and 2.6% of Gemma-3-270M's.

    Only the file size: the runtime parses the header into host memory and never copies it to the GPU, so `plan`
    (GPU memory) does not count it.
    """
    s = _shape(model)
    sizes = [st.bytes for st in tensor_bytes(s, weights).values()]
    has_pre_ffn = any(n == "pre_feedforward_layernorm" for n, _ in LAYER_NORMS.get(s.model_type, ()))
    norms = {**GGUF_LAYOUTS["gemma3_text" if has_pre_ffn else "llama"].norms, **_GGUF_QK_NORMS}
    info = 0
    for name, (role, layer, _, _) in tensors(s).items():
        dims = 1 if role == "norm" else 2
        info += 8 + len(_gguf_tensor_name(name, role, layer, norms)) + 4 + 8 * dims + 4 + 8
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.get_vocab(with_added_tokens=True) if backend else tokenizer.get_vocab()
    n = max(len(vocab), s.vocab_size)  # a writer pads a short vocabulary with "[PAD<i>]" tokens
    meta = sum(8 + len(t.encode()) for t in vocab) + 16 * (n - len(vocab)) + 4 * n  # tokens + token_type
    spec = json.loads(backend.to_str())["model"] if backend else {}
    if spec.get("type") == "Unigram" or spec.get("byte_fallback") or not backend:
        meta += 4 * n  # scores
    elif spec.get("type") == "BPE":
        merges = spec.get("merges") or []
        meta += sum(8 + len((m if isinstance(m, str) else " ".join(m)).encode()) for m in merges)
    template = getattr(tokenizer, "chat_template", None)
    meta += 8 + len(template.encode()) if isinstance(template, str) else 0
    header = meta + info + GGUF_OTHER_METADATA
    return sum(-b % GGUF_ALIGNMENT + b for b in (header, *sizes))  # each rounded up to the alignment


@dataclass(frozen=True)
class MemoryPlan:
    """What running a model takes, in bytes (see the module doc for what each part counts)."""

    model: str
    format: str
    context: int  # tokens per sequence
    batch: int  # sequences at once
    quantized_weights: int  # codes + scales + zero points + g_idx of the quantized tensors
    float_weights: int  # tensors kept in float: embedding, lm_head, norms (HF formats); norms (GGUF)
    kv_cache: int
    activations: int
    overhead: int
    parameters: int  # weights of the model (a tied lm_head counted once)
    quantized_parameters: int

    weights = property(lambda self: self.quantized_weights + self.float_weights)
    total = property(lambda self: self.weights + self.kv_cache + self.activations + self.overhead)

    @property
    def bits_per_weight(self) -> float:
        """Bits per quantized parameter, scales and zero points included (all parameters for a float format)."""
        bits = 8 * (self.quantized_weights or self.float_weights)
        return bits / (self.quantized_parameters or self.parameters)

    @property
    def parts(self) -> dict[str, int]:
        names = ("quantized weights", "float weights", "KV cache", "activations", "overhead")
        return dict(zip(names, (self.quantized_weights, self.float_weights, self.kv_cache, self.activations,
                                self.overhead)))  # fmt: skip

    def headroom(self, gpu: str | float) -> float:
        """Bytes left on `gpu` (a GPUS name, or GB as on the box or in nvidia-smi): negative where it does not fit."""
        if isinstance(gpu, str) and gpu not in GPUS:
            raise ValueError(f"unknown GPU {gpu!r}: use one of {list(GPUS)}, or a number of GB")
        gib = GPUS[gpu] if isinstance(gpu, str) else gpu
        if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not gib > 0:
            raise ValueError(f"GPU memory must be a positive number of GB, got {gpu!r}")
        return gib * GiB - self.total

    def fits(self, gpu: str | float) -> bool:
        return self.headroom(gpu) >= 0

    def verdict(self, gpu: str | float) -> str:
        """One line: does it fit `gpu`, with what to spare or what is missing."""
        left, where = self.headroom(gpu) / GiB, gpu if isinstance(gpu, str) else f"{gpu:g} GB"
        need = f"{self.model}, {self.format}, {self.batch} × {self.context:,} tokens needs {self.total / GiB:.1f} GiB"
        if left >= 0:
            return f"fits {where}: {need}, {left:.1f} GiB to spare"
        return f"does not fit {where}: {need}, {-left:.1f} GiB more than it has"


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def plan(model, weights: WeightFormat | str | Mapping[str, str] = "bf16", *, context: int = 4096, batch: int = 1,
         kv: str = "fp16", kv_group_size: int | None = None, overhead_gib: float = 1.0) -> MemoryPlan:  # fmt: skip
    """The memory `model` needs with its weights in `weights` (as `tensor_bytes` takes them), `batch` sequences of
    `context` tokens and the KV cache in `kv` (KV_FORMATS; quantized: `qviz.kvcache.KVSpec(kv, kv_group_size)`).

    model: as `decoder_shape` takes it, or a bare parameter count: then every parameter counts as a quantized
    weight of a large square linear, and there is no KV cache nor activations (they need the architecture)."""
    context, batch = _positive("context", context), _positive("batch", batch)
    if kv not in KV_FORMATS:
        raise ValueError(f"kv must be one of {KV_FORMATS}, got {kv!r}")
    if isinstance(overhead_gib, bool) or not isinstance(overhead_gib, (int, float)) or overhead_gib < 0:
        raise ValueError(f"overhead_gib must be a number >= 0, got {overhead_gib!r}")
    overhead = round(overhead_gib * GiB)
    label = "GGUF (given types)" if isinstance(weights, Mapping) else _weight_format(weights).label
    if isinstance(model, int) and not isinstance(model, bool):
        n, f = _positive("parameter count", model), _weight_format(weights)
        K = math.lcm(4096, f.group_size or 1) if f.kind == "hf" else 4096
        base = GGUF_MIXES.get(f.format, (f.format,))[0] if f.kind == "gguf" else None
        size = _stored(f, "mlp.up_proj", K, K, "a square linear", base).bytes / K**2
        return MemoryPlan(
            f"{n:,} parameters", label, context, batch, round(n * size), 0, 0, 0, overhead, n, n
        )
    s = _shape(model)
    sizes, numel = tensor_bytes(s, weights), {n: t[2] * t[3] for n, t in tensors(s).items()}
    quantized = [n for n, st in sizes.items() if st.quantized]
    f = None if isinstance(weights, Mapping) else _weight_format(weights)
    act = FLOAT_BYTES[f.format if f.kind == "float" else f.dtype] if f and f.kind != "gguf" else 2
    per_token = (2 * s.hidden_size + 3 * s.intermediate_size) * act  # bytes; + the last logits in float32
    activations = batch * (context * per_token + s.vocab_size * 4)
    return MemoryPlan(
        s.name, label, context, batch, sum(sizes[n].bytes for n in quantized),
        sum(st.bytes for st in sizes.values() if not st.quantized), _kv_bytes(s, kv, kv_group_size, context, batch),
        activations, overhead, sum(numel.values()), sum(numel[n] for n in quantized),
    )  # fmt: skip


def _kv_bytes(s: DecoderShape, kv: str, group_size: int | None, context: int, batch: int) -> int:
    spec = 16 if kv in ("fp16", "bf16") else KVSpec(kv, group_size=group_size)
    per_layer = kv_bytes_per_token(s, spec, seqlen=context) / s.num_hidden_layers  # per token, per layer
    keep = (
        s.sliding_window - 1 if s.sliding_window else context
    )  # a sliding layer: its window less the new token
    tokens = (s.num_hidden_layers - s.sliding_layers) * context + s.sliding_layers * min(context, keep)
    return math.ceil(per_layer * tokens * batch)
