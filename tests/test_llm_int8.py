"""qviz.llm_int8: the decomposed product against an independent vector-wise INT8 product and the float product,
a planted outlier column, and the reversible context on a tiny model."""

import doctest
import math

import pytest
import torch
from test_act import hook_state, ids_for, logits, rel_err
from tiny_models import tiny_llama

import qviz.llm_int8
from qviz.act import ActSpec, fake_quantize_act
from qviz.llm_int8 import int8_decomposed_matmul, llm_int8


def test_doctests():
    assert doctest.testmod(qviz.llm_int8).failed == 0


def vectorwise_int8_reference(x, W):
    """Per-row absmax INT8 of x and of W, integer product, rescaled by the outer product of the scales."""
    s_x, s_w = x.abs().amax(1, keepdim=True) / 127, W.abs().amax(1, keepdim=True) / 127
    q_x = torch.clamp(torch.round(x / s_x), -127, 127).to(torch.int64)
    q_w = torch.clamp(torch.round(W / s_w), -127, 127).to(torch.int64)
    return ((q_x @ q_w.T).double() * (s_x.double() * s_w.double().T)).float()


def xw(seed=6, tokens=32, k=64, n=48):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, k, generator=g), torch.randn(n, k, generator=g) / 8


def test_llm_int8_without_outliers_is_vectorwise_int8():
    x, W = xw()
    y, cols = int8_decomposed_matmul(x, W, threshold=math.inf)
    assert cols.numel() == 0
    torch.testing.assert_close(y, vectorwise_int8_reference(x, W), rtol=1e-6, atol=1e-6)
    assert not torch.equal(y, x @ W.T)


def test_llm_int8_with_threshold_zero_is_the_float_product():
    x, W = xw()
    y, cols = int8_decomposed_matmul(x, W, threshold=0.0)
    assert torch.equal(cols, torch.arange(64))
    assert torch.equal(y, x @ W.T)


def test_llm_int8_handles_bias_and_leading_dims():
    x, W = xw()
    b = torch.randn(48, generator=torch.Generator().manual_seed(7))
    y, _ = int8_decomposed_matmul(x.reshape(2, 16, 64), W, threshold=0.0, bias=b)
    assert y.shape == (2, 16, 48)
    torch.testing.assert_close(y.reshape(32, 48), x @ W.T + b)


def test_llm_int8_rescues_a_planted_outlier_column():
    x, W = xw()
    x[::3, 5] = 50.0 * torch.where(torch.arange(11) % 2 == 0, 1.0, -1.0)  # in a third of the tokens
    ref = x @ W.T
    y, cols = int8_decomposed_matmul(x, W, threshold=6.0)
    assert cols.tolist() == [5]
    per_tensor = fake_quantize_act(x, ActSpec("int8", "per-tensor")) @ W.T  # only x quantized: kinder to it
    decomposed_err = (y - ref).norm()
    assert decomposed_err < 0.1 * (per_tensor - ref).norm()
    assert (
        decomposed_err < 0.2 * (vectorwise_int8_reference(x, W) - ref).norm()
    )  # outlier sets the row scales


def test_llm_int8_context_logs_outliers_and_restores():
    model = tiny_llama()
    ids = ids_for(model)
    before, state = logits(model, ids), hook_state(model)
    with llm_int8(model, threshold=math.inf) as log:
        plain = logits(model, ids)
    assert 0 < rel_err(plain, before) < 0.05
    assert set(log.fraction) == set(log.in_features) and len(log.fraction) == 14
    assert all(f == 0.0 for f in log.fraction.values())
    with llm_int8(model, threshold=0.0) as log:
        torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    assert all(f == 1.0 for f in log.fraction.values())
    assert log.counts["model.layers.0.mlp.down_proj"] == [128]
    with pytest.raises(RuntimeError, match="boom"), llm_int8(model):
        raise RuntimeError("boom")
    assert torch.equal(logits(model, ids), before) and hook_state(model) == state
    with pytest.raises(ValueError, match="threshold"):
        with llm_int8(model, threshold=-1.0):
            pass


def test_code_product_is_exact_beyond_one_float32_run():
    """Codes ±127 over 3000 columns: sums far above 2^24, where a plain float32 product would round."""
    from qviz.llm_int8 import _code_product

    g = torch.Generator().manual_seed(0)
    C_x = torch.randint(-127, 128, (5, 3000), generator=g).float()
    C_w = torch.randint(-127, 128, (7, 3000), generator=g).float()
    C_x[0], C_w[0] = 127.0, 127.0
    C_x[0, -1] = 2.0  # entry (0, 0) = 2999 · 127² + 2 · 127 = 48,371,125: odd and > 2^25, not a float32
    want = C_x.long() @ C_w.long().T
    assert want[0, 0] == 48_371_125 and (C_x @ C_w.T)[0, 0].item() != 48_371_125  # float32 rounds it
    assert torch.equal(_code_product(C_x, C_w).long(), want)
