import pytest
import torch
from tiny_models import tiny_llama

from qviz import rtn
from qviz.arch import decoder_layers, family_of, linear_layers
from qviz.quant import QuantSpec, dequantize, fake_quantize, quantize


def windows(n=4, seq=16):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(1))


def linear_weights(model):
    family = family_of(model)
    return {
        (index, name): linear.weight.detach().clone()
        for index, layer in enumerate(decoder_layers(model))
        for name, linear in linear_layers(layer, family).items()
    }


SPECS = [
    QuantSpec(bits=8),
    QuantSpec(bits=4, symmetric=False, group_size=32),
    QuantSpec(bits=3, group_size=16),
]


@pytest.mark.parametrize("with_windows", [False, True], ids=["weights-only", "driver"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label.replace(" ", "-"))
def test_rtn_equals_fake_quantize_per_linear(spec, with_windows):
    model = tiny_llama()
    before = linear_weights(model)
    embed, head = model.model.embed_tokens.weight.clone(), model.lm_head.weight.clone()
    result = rtn.quantize_model(model, spec, windows() if with_windows else None, progress=False)
    rows = result.rows
    after = linear_weights(model)
    for key, W in before.items():
        assert torch.equal(after[key], fake_quantize(W, spec)), key
        qt = result.linears[f"model.layers.{key[0]}.{key[1]}"]  # the codes quantize() gives, exactly
        assert torch.equal(qt.codes, quantize(W, spec).codes) and torch.equal(dequantize(qt), after[key])
    assert result.method == "rtn" and result.spec == spec and not result.float_tensors
    assert torch.equal(model.model.embed_tokens.weight, embed) and torch.equal(model.lm_head.weight, head)
    assert [(r["layer"], r["linear"]) for r in rows] == list(before)
    for r in rows:
        assert r["weight_mse"] > 0 and r["sqnr_db"] > 0
        assert ("output_rel_error" in r) == with_windows


def test_output_error_shrinks_with_bits():
    errors = {}
    for bits in (3, 4, 8):
        rows = rtn.quantize_model(tiny_llama(), QuantSpec(bits=bits), windows(), progress=False).rows
        errors[bits] = sum(r["output_rel_error"] for r in rows) / len(rows)
    assert errors[8] < errors[4] / 100 < errors[3] / 100  # ≈ 4^-Δbits: 6 dB per bit
    assert 0 < errors[8] < 1e-3


def test_undividable_group_raises_before_any_change():
    model = tiny_llama()
    before = linear_weights(model)
    with pytest.raises(ValueError, match="group_size 48 does not divide"):
        rtn.quantize_model(model, QuantSpec(bits=4, group_size=48), progress=False)
    assert all(torch.equal(linear_weights(model)[k], W) for k, W in before.items())


@pytest.mark.slow
def test_smollm2_rtn_perplexity(smollm2):
    from qviz.data import eval_windows
    from qviz.eval import perplexity
    from qviz.models import load_model

    model, tok = smollm2
    ids = eval_windows(tok, seqlen=512, n=2)
    reference = perplexity(model, ids, progress=False)
    ppl = {}
    for bits in (8, 4):
        q_model, _ = load_model("smollm2-135m", fresh=True)
        result = rtn.quantize_model(q_model, QuantSpec(bits=bits), progress=False)
        assert len(result.rows) == len(result.linears) == 30 * 7
        ppl[bits] = perplexity(q_model, ids, progress=False)
    assert ppl[8] == pytest.approx(reference, rel=0.01)  # "8-bit is nearly lossless"
    assert ppl[4] > 1.3 * reference  # per-channel INT4 clearly hurts (DESIGN.md: 24.1 -> 48.9)


def test_n_layers_rounds_only_the_first_layers():
    model = tiny_llama()
    before = linear_weights(model)
    result = rtn.quantize_model(model, QuantSpec(bits=4), n_layers=1, progress=False)
    after = linear_weights(model)
    assert {r["layer"] for r in result.rows} == {0} and len(result.linears) == 7
    assert all(torch.equal(after[k], W) for k, W in before.items() if k[0] == 1)
