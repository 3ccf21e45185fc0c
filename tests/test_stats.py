import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qviz.stats import activation_stats, named_linears, outlier_ratio, weight_stats


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_named_linears(tiny):
    names = list(named_linears(tiny))
    assert (
        len(names) == 14 and names[0] == "layers.0.self_attn.q_proj" and names[-1] == "layers.1.mlp.down_proj"
    )


def test_activation_stats_against_direct_computation(tiny):
    ids = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(1))
    stats = activation_stats(tiny, ids, batch_size=2)
    with torch.no_grad():  # oracle: the input of layer 0's q/k/v is input_layernorm(embeddings)
        x = tiny.model.layers[0].input_layernorm(tiny.model.embed_tokens(ids)).reshape(-1, 32).abs()
    q = stats["layers.0.self_attn.q_proj"]
    assert q.tokens == 48
    assert torch.allclose(q.mean_abs, x.mean(0), rtol=1e-5)
    assert torch.allclose(q.max_abs, x.amax(0))
    assert torch.equal(stats["layers.0.self_attn.v_proj"].mean_abs, q.mean_abs)  # same input, same statistics
    assert stats["layers.1.mlp.down_proj"].mean_abs.shape == (64,)


def test_activation_stats_needs_tokens(tiny):
    with pytest.raises(ValueError, match="at least one calibration window"):
        activation_stats(tiny, torch.empty(0, 16, dtype=torch.long))


def test_outlier_ratio_and_weight_stats(tiny):
    assert outlier_ratio(torch.tensor([1.0, 2.0, 2.0, 10.0])) == pytest.approx(5.0)
    with torch.no_grad():
        tiny.model.layers[1].mlp.up_proj.weight[5] = 0.02
        tiny.model.layers[1].mlp.up_proj.weight[5, 3] = 50.0  # one huge weight in row 5, column 3
    row = next(r for r in weight_stats(tiny) if r["layer"] == 1 and r["name"] == "mlp.up_proj")
    assert row["shape"] == (64, 32) and row["max_abs"] == pytest.approx(50.0)
    assert row["row_outlier_ratio"] > 100 and row["column_outlier_ratio"] > 100
