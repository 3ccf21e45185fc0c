"""Tiny randomly initialised transformers models shared by the driver tests (not a test module)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed=0):
    """A 2-layer Llama (hidden 64, MLP 128, grouped-query attention) with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()
