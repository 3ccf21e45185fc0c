import copy

import pytest
import torch
from tiny_models import tiny_gemma3, tiny_llama, tiny_opt

from qviz.arch import decoder_layers, family_of, input_groups, linear_layers
from qviz.calib.capture import capture_layer_inputs, collect_hessians, run_layer
from qviz.calib.sequential import quantize_sequential
from qviz.quant import QuantSpec, fake_quantize


def windows(n=5, seq=16, seed=1):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(seed))


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
        return [{"linear": name} for name in linears], {name: "codes" for name in linears}

    products, attentions = [], []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a, **k: products.append(1) or linear(*a, **k))
    attention = type(layer.self_attn).forward  # runs only when the block is computed, not served from cache
    monkeypatch.setattr(
        type(layer.self_attn), "forward", lambda *a, **k: attentions.append(1) or attention(*a, **k)
    )
    rows, quantized, outputs = quantize_sequential(layer, input_groups(layer, family), inputs, round_group)
    monkeypatch.undo()
    n_linears = len(linear_layers(layer, family))
    assert len(products) == n_linears * len(inputs.hidden)
    # The q/k/v stage stops inside the block, the o stage runs it; later stages are served its cached output
    # (eager attention too: it returns (o_proj's output, attention weights computed from the cached q/k)).
    assert len(attentions) == 2 * len(inputs.hidden)
    assert [r["linear"] for r in rows] == list(linear_layers(layer, family)) == list(quantized)
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
    rows, _, outputs = quantize_sequential(
        layer, input_groups(layer, family), inputs, lambda group, H: ([{}] * len(group), {}), outputs=False
    )
    assert outputs == [] and len(rows) == 7
    assert len(products) == 6 * len(inputs.hidden)  # all but down_proj's


def test_a_module_that_changes_its_last_linears_output_is_run_again(monkeypatch):
    """The attention block is cached only because it returns o_proj's output itself. One that computes
    something from it (here: doubles it) must not be served its recorded output, which was taken before o_proj
    was quantized: it is recomputed, and the layer's outputs stay right."""
    model = tiny_llama()
    inputs, _ = capture_layer_inputs(model, windows(), batch_size=2)
    layer, family = decoder_layers(model)[0], family_of(model)
    forward = type(layer.self_attn).forward

    def doubled(self, *args, **kwargs):
        out, weights = forward(self, *args, **kwargs)
        return 2 * out, weights

    monkeypatch.setattr(type(layer.self_attn), "forward", doubled)
    twin = copy.deepcopy(layer)
    spec = QuantSpec(bits=2)

    def round_group(linears, H):
        for linear in linears.values():
            linear.weight.data = fake_quantize(linear.weight.data, spec)
        return [], {}

    _, _, outputs = quantize_sequential(layer, input_groups(layer, family), inputs, round_group)
    for lin in linear_layers(twin, family).values():
        lin.weight.data = fake_quantize(lin.weight.data, spec)
    for got, want in zip(outputs, run_layer(twin, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
