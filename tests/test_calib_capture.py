import pytest
import torch
from tiny_models import tiny_llama

from qviz.arch import decoder_layers, family_of, linear_layers
from qviz.calib.capture import capture_layer_inputs, capture_linear_inputs, collect_hessians, linear_inputs


def windows(n=5, seq=16, seed=1):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_capture_restores_the_layers():
    model = tiny_llama()
    inputs, kwargs = capture_layer_inputs(model, windows(n=3), batch_size=2)
    assert [h.shape for h in inputs.hidden] == [(2, 17, 64), (1, 17, 64)]  # BOS + 16 tokens
    assert len(kwargs) == 2 and all(len(k) == 2 for k in kwargs)
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))
    with torch.no_grad():
        model(windows(n=1))  # runs normally again


def test_hessians_equal_direct_computation():
    model = tiny_llama()
    inputs, _ = capture_layer_inputs(model, windows(), batch_size=2)
    layer = decoder_layers(model)[0]
    linears = linear_layers(layer, family_of(model))
    hessians = collect_hessians(layer, linears, inputs)
    with torch.no_grad():  # q/k/v read input_layernorm(hidden): compute H = 2XXᵀ/n by hand
        X = layer.input_layernorm(torch.cat(inputs.hidden)).reshape(-1, 64)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        torch.testing.assert_close(hessians[name].H, 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-6)
    assert hessians["mlp.down_proj"].H.shape == (128, 128)
    assert hessians["mlp.down_proj"].n_tokens == 5 * 17  # BOS + 16 tokens per window


def test_collect_hessians_skips_the_rest_of_the_layer():
    """Only the linears' inputs are needed: each call stops at down_proj's input (its product never runs),
    and every H equals the one from a full run of the layer, down_proj's included."""
    model = tiny_llama()
    inputs, _ = capture_layer_inputs(model, windows(), batch_size=2)
    layer = decoder_layers(model)[0]
    linears = linear_layers(layer, family_of(model))
    full = {}
    outputs = capture_linear_inputs(
        layer, linears, inputs, lambda n, X: full.setdefault(n, []).append(X.clone())
    )
    assert len(outputs) == len(inputs.hidden)
    ran = []
    handle = linears["mlp.down_proj"].register_forward_hook(lambda *a: ran.append(1))
    try:
        hessians = collect_hessians(layer, linears, inputs)
    finally:
        handle.remove()
    assert ran == []
    for name, Xs in full.items():
        X = torch.cat([x.reshape(-1, x.shape[-1]) for x in Xs])
        torch.testing.assert_close(hessians[name].H, 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-6)


def test_linear_inputs_are_what_the_linear_reads():
    model, ids = tiny_llama(), windows(n=2)
    X = linear_inputs(model, ids, 1, "mlp.down_proj")
    assert X.shape == (2 * 17, 128)  # BOS + 16 tokens per window, down_proj's 128 inputs
    seen = []
    handle = decoder_layers(model)[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(torch.cat([torch.full((2, 1), model.config.bos_token_id), ids], dim=1))
    handle.remove()
    torch.testing.assert_close(X, seen[0].reshape(-1, 128))
    for bad, match in ((2, "layer must be"), (True, "layer must be")):
        with pytest.raises(ValueError, match=match):
            linear_inputs(model, ids, bad, "mlp.down_proj")
    with pytest.raises(ValueError, match="unknown linear"):
        linear_inputs(model, ids, 0, "mlp.nope")


def test_bad_windows():
    model = tiny_llama()
    for bad in (
        [],
        torch.zeros(0, 4, dtype=torch.long),
        torch.zeros(2, 4),
        torch.zeros(2, 2, 2, dtype=torch.long),
    ):
        with pytest.raises(ValueError, match="windows"):
            capture_layer_inputs(model, bad)
    with pytest.raises(ValueError, match="batch_size"):
        capture_layer_inputs(model, windows(), batch_size=0)
    with pytest.raises(ValueError, match="bos_token_id"):
        capture_layer_inputs(model, windows(), bos_token_id="<s>")


def test_windows_are_checked_against_the_model():
    """Any integer dtype is token ids; ids past the vocabulary and windows past the positions (BOS included)
    are refused with the fix instead of IndexError inside the embedding."""
    model, ids = tiny_llama(), windows(n=2)
    a, _ = capture_layer_inputs(model, ids)
    b, _ = capture_layer_inputs(model, ids.to(torch.int16))
    assert torch.equal(a.hidden[0], b.hidden[0])
    with pytest.raises(ValueError, match=r"calibration windows: token ids from \d+ to 300, .* has 128 ids"):
        capture_layer_inputs(model, ids.index_fill(1, torch.tensor([3]), 300))
    with pytest.raises(
        ValueError, match=r"reads? 65 tokens at once, more than its 64 positions.* at most 63 tokens"
    ):
        capture_layer_inputs(model, torch.ones(2, 64, dtype=torch.long))
    capture_layer_inputs(model, torch.ones(2, 64, dtype=torch.long), bos_token_id=None)  # fits without BOS
