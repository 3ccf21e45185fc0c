"""Quantizing the KV cache: keys per channel, values per token (KIVI, Liu et al. 2024).

A decoder generates one token at a time. Every attention layer turns each token it has read into a key and a
value vector per key/value head, and the next token's query attends over all of them; so that they are not
recomputed at every step, they are kept: the KV cache, one K and one V of shape (batch, kv_heads, seq, head_dim)
per layer. It grows with the context, at

    bytes per token = 2 × layers × kv_heads × head_dim × bytes per element          (2: one K and one V)

SmolLM2-135M (30 layers, 3 kv heads, head_dim 64) caches 2·30·3·64·2 = 23,040 bytes per token in FP16: at 8,192
tokens, 189 MB per sequence, more than its 270 MB of weights once two sequences run together. Llama-3-8B
(32 layers, 8 kv heads, head_dim 128) caches 128 KiB per token: 16 GiB at 128k tokens, as much as its weights.
At long context the cache, not the weights, fills the memory, and it is read whole for every new token.

Keys and values are activations, so they are quantized on the activation grids of `qviz.act`
(`fake_quantize_act`, one symmetric absmax scale per row): s = max|x| / qmax with codes −qmax..qmax (−7..7 at
4 bits), or s = max|x| / 448 for FP8 E4M3 (x / s rounded to E4M3, whose largest value is 448). The twist is
which axis gets its own scale, i.e. what a row is. KIVI's observation:

  * keys have outlier *channels*: a few of the head_dim coordinates are large for every token. One scale per
    token would be set by those channels and round the others to zero, so keys get one scale per (head,
    channel), over the tokens: "per-channel" (optionally per group of `group_size` tokens, as KIVI does);
  * values have no such channels, and the attention output is a weighted mix of value rows (tokens), so an
    error stays with its token: values get one scale per (head, token), over head_dim: "per-token".

Keys are quantized after the rotary embedding (RoPE), because that is what transformers caches. (KVQuant,
Hooper et al. 2024, quantizes keys before RoPE, whose rotation of channel pairs smears outlier channels, and
re-applies RoPE at each step.)

How it is simulated. `quantize_kv_cache` makes every attention layer see K̂ = Q(K) and V̂ = Q(V) in place of
K and V: the convention is that *every* cached key and value is quantized, the current token's own included. In
one forward pass over a window this gives each query exactly what a quantized cache would give it for per-token
axes; a per-channel scale is taken over the whole window (or the token's group), which a cache filled token by
token would only know once the group is complete (KIVI keeps that incomplete group in FP16).

Symbols -> names: K, V -> `key`, `value` (batch, kv_heads, seq, head_dim); K̂, V̂ -> the fake-quantized tensors;
s -> `scale`; KL(p‖q) -> `kl_by_position`, p from the float model, q from the model with a quantized cache.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .act import ACT_FORMATS, ActSpec, fake_quantize_act
from .data import with_bos
from .formats import get_format

__all__ = ["KV_AXES", "KV_FORMATS", "KVSpec", "fake_quantize_kv", "kl_by_position", "kv_bytes_per_token",
           "quantize_kv_cache"]  # fmt: skip

KV_FORMATS = tuple(ACT_FORMATS)  # the cache holds activations: the formats of qviz.act
KV_AXES = ("per-channel", "per-token")
SCALE_BITS = 16  # every scale is counted as an FP16 number in `kv_bytes_per_token`


def _check(fmt, axis, group_size=None, axis_name: str = "axis") -> None:
    if fmt not in KV_FORMATS:
        raise ValueError(f"fmt must be one of {KV_FORMATS}, got {fmt!r}")
    if axis not in KV_AXES:
        raise ValueError(f"{axis_name} must be one of {KV_AXES}, got {axis!r}")
    if group_size is not None and (
        isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
    ):
        raise ValueError(
            f"group_size must be a positive integer (tokens per scale, e.g. 128) or None, got {group_size!r}"
        )


@dataclass(frozen=True)
class KVSpec:
    """How the KV cache is quantized. Validated on construction; bad values raise ValueError."""

    fmt: str  # element format of cached keys and values: "int8", "int4" (any "int2" .. "int8") or "fp8_e4m3"
    key_axis: str = "per-channel"  # one scale per (head, channel) over tokens (KIVI), or per (head, token)
    value_axis: str = "per-token"  # one scale per (head, token) over head_dim (KIVI), or per (head, channel)
    group_size: int | None = None  # per-channel axes: tokens per scale; None: all tokens of the window

    def __post_init__(self):
        _check(self.fmt, self.key_axis, self.group_size, "key_axis")
        _check(self.fmt, self.value_axis, None, "value_axis")
        if self.group_size is not None and "per-channel" not in (self.key_axis, self.value_axis):
            raise ValueError(
                "group_size groups the tokens of a per-channel axis: use group_size=None with per-token K and V"
            )

    @property
    def bits(self) -> int:
        return get_format(self.fmt).bits

    @property
    def label(self) -> str:
        """A short name, e.g. 'INT4 K per-channel / V per-token' or 'FP8_E4M3 K per-channel g128 / V per-token'."""
        group = "" if self.group_size is None else f" g{self.group_size}"
        k = self.key_axis + (group if self.key_axis == "per-channel" else "")
        v = self.value_axis + (group if self.value_axis == "per-channel" else "")
        return f"{self.fmt.upper()} K {k} / V {v}"


def fake_quantize_kv(t: torch.Tensor, fmt: str, axis: str, group_size: int | None = None) -> torch.Tensor:
    """Quantize then dequantize keys or values t: (batch, heads, seq, head_dim), as transformers passes them to
    the attention function. Returns a tensor of t's shape and dtype; a slice of zeros comes back as zeros.

    axis "per-token": one scale per (batch, head, token), over head_dim. "per-channel": one scale per (batch,
    head, channel), over the tokens, or over each run of `group_size` tokens (the last run may be shorter);
    group_size is ignored for "per-token".

    >>> t = torch.tensor([[7.0, 1.2], [-3.5, 1.25], [0.6, -1.75]]).reshape(1, 1, 3, 2)  # 3 tokens, 2 channels
    >>> fake_quantize_kv(t, "int4", "per-token")[0, 0].tolist()    # scales 1, 0.5, 0.25 (absmax / 7)
    [[7.0, 1.0], [-3.5, 1.0], [0.5, -1.75]]
    >>> fake_quantize_kv(t, "int4", "per-channel")[0, 0].tolist()  # scales 1, 0.25
    [[7.0, 1.25], [-4.0, 1.25], [1.0, -1.75]]
    """
    _check(fmt, axis, group_size)
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"expected keys or values of shape (batch, heads, seq, head_dim), got {shape}")
    x = t
    if axis == "per-channel":  # rows of tokens: (batch, heads, head_dim, seq), cut into groups of tokens
        x = x.transpose(-1, -2)
        seq = x.shape[-1]
        if group_size is not None and group_size < seq:
            pad = -seq % group_size  # zeros do not change a group's absmax
            x = F.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, group_size)
    rows = x.reshape(-1, x.shape[-1])  # (rows, elements sharing one scale)
    x_hat = fake_quantize_act(rows, ActSpec(fmt, "per-token")).reshape(
        x.shape
    )  # one scale per row, in float32
    if axis == "per-channel":
        x_hat = x_hat.reshape(*x_hat.shape[:3], -1)[..., : t.shape[-2]].transpose(-1, -2)
    return x_hat


# --- routing attention through the quantizer -----------------------------------------------------------------

_ACTIVE: dict[int, KVSpec] = {}  # id(text config) -> the spec of the quantize_kv_cache context it is inside


def _base_attention(module: nn.Module, base: str):
    """The attention function the model used before: a registered one (sdpa, flash, flex), or for "eager" the
    module's own `eager_attention_forward` (Gemma's has soft-capping, OPT's is its own)."""
    if base != "eager":
        return ALL_ATTENTION_FUNCTIONS[base]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"{type(module).__name__}: no eager_attention_forward in {type(module).__module__}")
    return eager


def _quantized_attention(base: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        spec = _ACTIVE.get(id(module.config))  # None: not the text decoder (e.g. a vision tower)
        if spec is not None:
            key = fake_quantize_kv(key, spec.fmt, spec.key_axis, spec.group_size)  # post-RoPE keys
            value = fake_quantize_kv(value, spec.fmt, spec.value_axis, spec.group_size)
        return _base_attention(module, base)(module, query, key, value, attention_mask, **kwargs)

    return attention


def _register(base: str) -> str:
    """Register "qviz_kv_<base>" with transformers: attention that quantizes K and V, then runs `base`; and
    `base`'s mask format (an unregistered name gets no mask at all: Gemma's sliding windows would vanish)."""
    if base != "eager" and (base not in ALL_ATTENTION_FUNCTIONS or base not in ALL_MASK_ATTENTION_FUNCTIONS):
        raise ValueError(f"quantize_kv_cache wraps eager, sdpa, flash or flex attention, not {base!r}")
    name = f"qviz_kv_{base}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _quantized_attention(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


@contextmanager
def quantize_kv_cache(model: nn.Module, spec: KVSpec):
    """Inside the `with` block, every attention layer of `model` reads quantized keys (after RoPE) and values.

    The model is switched to an attention implementation registered with transformers' AttentionInterface (which
    Llama, Gemma 3 and OPT call with K and V, after RoPE and after the cache update) and switched back on exit,
    even when the block raises. Weights are never touched.

    >>> # with quantize_kv_cache(model, KVSpec("int4")): logits = model(ids).logits
    """
    if not isinstance(spec, KVSpec):
        raise ValueError(f"spec must be a KVSpec, e.g. KVSpec('int4'), got {spec!r}")
    base = model.config._attn_implementation
    text_config = model.config.get_text_config(decoder=True)
    if id(text_config) in _ACTIVE:
        raise ValueError("this model is already inside quantize_kv_cache: leave that block first")
    name = _register(base)
    _ACTIVE[id(text_config)] = spec
    try:
        model.set_attn_implementation(name)
        if model.config._attn_implementation != name:  # transformers only warns when it cannot switch
            raise ValueError(
                f"{type(model).__name__} (model_type {model.config.model_type!r}) does not route attention through "
                "transformers' AttentionInterface, so its keys and values cannot be quantized this way"
            )
        yield model
    finally:
        model.set_attn_implementation(base)
        del _ACTIVE[id(text_config)]


# --- what it saves, and what it costs ------------------------------------------------------------------------


def kv_bytes_per_token(config, spec_or_bits: KVSpec | int, *, seqlen: int = 128) -> float:
    """Bytes the KV cache adds per token, over all layers: 2 × layers × kv_heads × head_dim × bits / 8, plus the
    scales (FP16 each) of a KVSpec:

      * per-token axis: one scale per (head, token): 16 bits per head per token;
      * per-channel axis: head_dim scales per head for each group of `spec.group_size` tokens, i.e.
        head_dim × 16 / group_size bits per head per token; a whole-window scale (group_size None) is spread
        over `seqlen` tokens (default 128, KIVI's group size: cheaper still at longer contexts).

    config: a transformers config (or a model); its text config gives num_hidden_layers, num_key_value_heads
    (else num_attention_heads) and head_dim (else hidden_size / num_attention_heads). Every layer is counted
    as caching every token (Gemma's sliding-window layers keep only the last `sliding_window`).
    spec_or_bits: a KVSpec, or a plain element width in bits without scales (16: the FP16 baseline).

    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(num_hidden_layers=30, num_key_value_heads=3, head_dim=64)
    >>> kv_bytes_per_token(cfg, 16), kv_bytes_per_token(cfg, KVSpec("int4"))  # bits: K 4 + 16/128, V 4 + 16/64
    (23040.0, 6030.0)
    """
    config = getattr(config, "config", config)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 1:
        raise ValueError(f"seqlen must be a positive integer, got {seqlen!r}")
    if isinstance(spec_or_bits, KVSpec):
        spec = spec_or_bits
        tokens = spec.group_size or seqlen  # tokens sharing one per-channel scale
        scale_bits = {"per-token": SCALE_BITS, "per-channel": head_dim * SCALE_BITS / tokens}
        bits_per_head = 2 * head_dim * spec.bits + scale_bits[spec.key_axis] + scale_bits[spec.value_axis]
    elif isinstance(spec_or_bits, int) and not isinstance(spec_or_bits, bool) and spec_or_bits > 0:
        bits_per_head = 2 * head_dim * spec_or_bits
    else:
        raise ValueError(
            f"spec_or_bits must be a KVSpec or a positive number of bits (16 for FP16), got {spec_or_bits!r}"
        )
    return config.num_hidden_layers * heads * bits_per_head / 8


def _log_probs(model: nn.Module, ids: torch.Tensor, n_bos: int) -> torch.Tensor:
    """(batch, L, vocab) float32 log-probabilities after each window token (the BOS-only position dropped)."""
    return F.log_softmax(model(input_ids=ids, use_cache=False).logits[:, n_bos:].float(), -1)


@torch.no_grad()
def kl_by_position(
    model: nn.Module,
    windows: torch.Tensor,
    spec: KVSpec,
    *,
    bos_token_id: int | str | None = "auto",
    batch_size: int = 1,
    progress: bool = False,
) -> torch.Tensor:
    """KL(p‖q) of the next-token distributions at each position, averaged over windows: (L,) float32.

    p: the model as it is; q: the same model inside `quantize_kv_cache(model, spec)`, on the same tokens.
    Element t is the KL after reading the window's first t + 1 tokens (preceded by BOS: "auto" takes the
    model's config.bos_token_id), so plotting it against t shows how the error grows with the context length.
    windows: (n, L) token ids, read `batch_size` rows per forward pass; memory: 2 × batch_size × L × vocab × 4
    bytes of log-probabilities (Gemma's 262,144-token vocabulary, 1,024 tokens: 2.1 GB per row).
    """
    ids, n_bos = with_bos(model, windows, bos_token_id)  # (n, n_bos + L)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = next(model.parameters()).device
    total = torch.zeros(ids.shape[1] - n_bos, dtype=torch.float64)
    for a in tqdm(range(0, len(ids), batch_size), desc="KV-cache KL", unit="batch", disable=not progress):
        batch = ids[a : a + batch_size].to(device)
        log_p = _log_probs(model, batch, n_bos)
        with quantize_kv_cache(model, spec):
            log_q = _log_probs(model, batch, n_bos)
        kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)  # Σ_v p (log p − log q)
        total += kl.clamp_min(0).sum(0).double().cpu()  # ≥ 0 exactly; float32 sums can dip to −1e-9
    return (total / len(ids)).float()
