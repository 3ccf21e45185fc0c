"""Tiny randomly initialised transformers models shared by the tests (not a test module)."""

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)


def tiny_llama(seed=0, **config):
    """A 2-layer Llama (hidden 64, MLP 128, grouped-query attention) with seeded random weights, in eval mode.
    Keyword arguments replace fields of its LlamaConfig (e.g. vocab_size=16, num_key_value_heads=4)."""
    torch.manual_seed(seed)
    defaults = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(LlamaConfig(**{**defaults, **config})).eval()


def tiny_gemma3(seed=0):
    """A 3-layer Gemma 3 whose sliding-window and full-attention layers receive different masks."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=64,
    )
    return Gemma3ForCausalLM(config).eval()


def tiny_opt(seed=0):
    """A 2-layer OPT (LayerNorm with bias, fc1 -> ReLU -> fc2, linears directly in the layer)."""
    torch.manual_seed(seed)
    config = OPTConfig(
        vocab_size=128,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        max_position_embeddings=64,
    )
    return OPTForCausalLM(config).eval()
