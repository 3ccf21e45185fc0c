import pytest
import torch
from tiny_models import tiny_gemma3, tiny_llama, tiny_opt

from qviz.arch import decoder_layers, family_of, input_groups, linear_layers
from qviz.calib import (
    Hessian,
    capture_layer_inputs,
    capture_linear_inputs,
    check_spec,
    collect_hessians,
    linear_report,
    quantize_layerwise,
    quantize_sequential,
    run_layer,
)
from qviz.quant import QuantSpec, fake_quantize


def windows(n=5, seq=16, seed=1):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(seed))


class Recorder:
    """A method that quantizes nothing (or rounds with `spec`) and records what each layer received."""

    def __init__(self, spec=None):
        self.spec, self.inputs, self.outputs = spec, [], []

    def quantize_layer(self, layer, inputs, family):
        self.inputs.append(torch.cat(inputs.hidden))
        if self.spec is not None:
            for linear in linear_layers(layer, family).values():
                linear.weight.data = fake_quantize(linear.weight.data, self.spec)
        self.outputs.append(torch.cat(run_layer(layer, inputs)))
        return [{"linear": "all", "tokens": inputs.n_tokens}]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_noop_driver_reproduces_hidden_states(make, batch_size):
    model, ids = make(), windows()
    method = Recorder()
    rows = quantize_layerwise(model, method, ids, batch_size=batch_size, bos_token_id=None, progress=False)
    n_layers = len(decoder_layers(model))
    assert [r["layer"] for r in rows] == list(range(n_layers))
    assert all(r["tokens"] == 5 * 16 for r in rows)
    with torch.no_grad():
        hidden = model(
            ids, output_hidden_states=True
        ).hidden_states  # (embeddings, layer 1, ..., normed last)
    for index in range(n_layers):
        torch.testing.assert_close(method.inputs[index], hidden[index], rtol=1e-5, atol=1e-5)
    for index in range(n_layers - 1):
        torch.testing.assert_close(method.outputs[index], hidden[index + 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.model.norm(method.outputs[-1]), hidden[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_next_layer_sees_the_quantized_outputs(make):
    model, ids = make(), windows()
    method = Recorder(QuantSpec(bits=2))
    quantize_layerwise(model, method, ids, batch_size=2, bos_token_id=None, progress=False)
    with torch.no_grad():  # the finished (quantized) model: layer ℓ's inputs are what the driver fed it
        hidden = model(ids, output_hidden_states=True).hidden_states
    for index, received in enumerate(method.inputs):
        torch.testing.assert_close(received, hidden[index], rtol=1e-5, atol=1e-5)
    float_hidden = make()(ids, output_hidden_states=True).hidden_states
    assert not torch.allclose(method.inputs[1], float_hidden[1], atol=1e-3)  # rounding did change them


def test_n_layers_quantizes_only_the_first_layers():
    model, ids = tiny_llama(), windows()
    before = [
        lin.weight.clone()
        for layer in decoder_layers(model)
        for lin in linear_layers(layer, family_of(model)).values()
    ]
    method = Recorder(QuantSpec(bits=2))
    rows = quantize_layerwise(model, method, ids, bos_token_id=None, progress=False, n_layers=1)
    assert [r["layer"] for r in rows] == [0]
    after = [
        lin.weight
        for layer in decoder_layers(model)
        for lin in linear_layers(layer, family_of(model)).values()
    ]
    per_layer = len(after) // len(decoder_layers(model))
    assert all(
        not torch.equal(b, a) for b, a in zip(before[:per_layer], after[:per_layer])
    )  # layer 0 rounded
    assert all(torch.equal(b, a) for b, a in zip(before[per_layer:], after[per_layer:]))  # the rest float
    for bad in (0, len(decoder_layers(model)) + 1, 1.5, True):
        with pytest.raises(ValueError, match="n_layers must be an integer from 1 to"):
            quantize_layerwise(model, Recorder(), ids, progress=False, n_layers=bad)


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
        X = torch.cat(Xs)
        torch.testing.assert_close(hessians[name].H, 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-6)


def test_linear_report_output_error():
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(8, 16, generator=g), torch.randn(50, 16, generator=g)
    Q = fake_quantize(W, QuantSpec(bits=3))
    h = Hessian(16)
    h.add_batch(X)
    row = linear_report("fc", W, Q, h.H)
    direct = ((W - Q) @ X.T).pow(2).sum() / (W @ X.T).pow(2).sum()
    assert row["output_rel_error"] == pytest.approx(direct.item(), rel=1e-4)
    assert row["output_mse"] == pytest.approx(((W - Q) @ X.T).pow(2).mean().item(), rel=1e-4)
    assert row["shape"] == (8, 16) and row["sqnr_db"] > 0


def test_bad_inputs():
    model = tiny_llama()
    for bad in (
        [],
        torch.zeros(0, 4, dtype=torch.long),
        torch.zeros(2, 4),
        torch.zeros(2, 2, 2, dtype=torch.long),
    ):
        with pytest.raises(ValueError, match="windows"):
            quantize_layerwise(model, Recorder(), bad, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        capture_layer_inputs(model, windows(), batch_size=0)
    with pytest.raises(ValueError, match=r"layer 0 self_attn.q_proj \(64, 64\): group_size 48"):
        check_spec(model, QuantSpec(bits=4, group_size=48))


def test_bos_is_prepended_like_eval():
    model, ids = tiny_llama(), windows(n=2)
    method = Recorder()
    quantize_layerwise(model, method, ids, progress=False)  # "auto": config.bos_token_id (1 here)
    with_bos = torch.cat([torch.full((2, 1), model.config.bos_token_id), ids], dim=1)
    with torch.no_grad():
        hidden = model(with_bos, output_hidden_states=True).hidden_states
    torch.testing.assert_close(method.inputs[1], hidden[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="bos_token_id"):
        capture_layer_inputs(model, ids, bos_token_id="<s>")


@pytest.mark.parametrize("n", [64, 576, 1537])
def test_hessian_from_half_the_blocks_equals_the_full_product(n):
    X = torch.randn(300, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    h = Hessian(n, torch.float64)
    h.add_batch(X[:100])
    h.add_batch(X[100:])
    torch.testing.assert_close(h.H, 2 * X.T @ X / 300, rtol=1e-12, atol=1e-12)


def tiny_llama_eager():
    return tiny_llama(attn_implementation="eager")


@pytest.mark.parametrize("batch_size", [2, 8], ids=["3-calls", "1-call"])
@pytest.mark.parametrize(
    "make",
    [tiny_llama, tiny_llama_eager, tiny_gemma3, tiny_opt],
    ids=["llama", "llama-eager", "gemma3", "opt"],
)
def test_quantize_sequential_matches_rerunning_the_layer(make, batch_size, monkeypatch):
    """Each group's H equals the one from re-running the whole layer after the groups before it were rounded
    (the slow way, on a twin), the outputs equal the finished layer's, and every linear's product ran once
    per call: cached outputs were served instead of recomputing."""
    import copy

    model, spec = make(), QuantSpec(bits=2)
    inputs, _ = capture_layer_inputs(model, windows(), batch_size=batch_size)
    layer, family = decoder_layers(model)[0], family_of(model)
    twin = copy.deepcopy(layer)
    float_H = collect_hessians(twin, linear_layers(twin, family), inputs)
    received = []

    def round_group(linears, H):
        received.append(H.clone())
        for linear in linears.values():
            linear.weight.data = fake_quantize(linear.weight.data, spec)
        return [{"linear": name} for name in linears]

    products, attentions = [], []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a, **k: products.append(1) or linear(*a, **k))
    attention = type(layer.self_attn).forward  # runs only when the block is computed, not served from cache
    monkeypatch.setattr(
        type(layer.self_attn), "forward", lambda *a, **k: attentions.append(1) or attention(*a, **k)
    )
    rows, outputs = quantize_sequential(layer, input_groups(layer, family), inputs, round_group)
    monkeypatch.undo()
    n_linears = len(linear_layers(layer, family))
    assert len(products) == n_linears * len(inputs.hidden)
    # The q/k/v stage stops inside the block, the o stage runs it; later stages are served its cached output,
    # except with eager attention, whose output holds the attention weights too: not cached, so every one of
    # the 5 stages (q/k/v, o, gate/up, down, outputs) runs it.
    eager = model.config._attn_implementation == "eager"
    assert len(attentions) == (5 if eager else 2) * len(inputs.hidden)
    assert [r["linear"] for r in rows] == list(linear_layers(layer, family))
    assert all("forward" not in module.__dict__ for module in layer.modules())

    twin_linears = linear_layers(twin, family)
    for group, H in zip(input_groups(twin, family), received):
        expected = collect_hessians(twin, twin_linears, inputs)[next(iter(group))].H
        torch.testing.assert_close(H, expected, rtol=1e-5, atol=1e-6)
        for lin in group.values():
            lin.weight.data = fake_quantize(lin.weight.data, spec)
    for got, want in zip(outputs, run_layer(twin, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    o_proj = list(twin_linears)[3]  # fed by the rounded q/k/v: its H differs from the float model's
    assert not torch.allclose(received[1], float_H[o_proj].H, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("batch_size", [2, 8], ids=["3-calls", "1-call"])
def test_quantize_sequential_without_outputs_skips_the_last_products(batch_size, monkeypatch):
    model = tiny_llama()
    inputs, _ = capture_layer_inputs(model, windows(), batch_size=batch_size)
    layer, family = decoder_layers(model)[0], family_of(model)
    products = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a, **k: products.append(1) or linear(*a, **k))
    rows, outputs = quantize_sequential(
        layer, input_groups(layer, family), inputs, lambda group, H: [{}] * len(group), outputs=False
    )
    assert outputs == [] and len(rows) == 7
    assert len(products) == 6 * len(inputs.hidden)  # all but down_proj's
