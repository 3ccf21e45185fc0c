"""AWQ on a whole model (`qviz.awq`): folding keeps the float model, the layer search and the driver give
one result of exact codes, AWQ beats RTN on a real model, bad input is refused."""

import math

import pytest
import torch

from qviz import awq
from qviz.arch import decoder_layers, family_of, linear_layers, scale_groups
from qviz.calib.capture import LayerInputs, capture_layer_inputs
from qviz.quant import QuantSpec, dequantize

ASYM4_G32 = QuantSpec(bits=4, symmetric=False, group_size=32)


def _tiny(name: str):
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    if name == "llama":
        cfg = tf.LlamaConfig(**common, intermediate_size=128, num_key_value_heads=4)
        model = tf.LlamaForCausalLM(cfg)
    elif name == "gemma3":
        cfg = tf.Gemma3TextConfig(
            **common, intermediate_size=128, num_key_value_heads=4, head_dim=16, sliding_window=8
        )
        model = tf.Gemma3ForCausalLM(cfg)
    else:
        cfg = tf.OPTConfig(**common, ffn_dim=128, word_embed_proj_dim=64)
        model = tf.OPTForCausalLM(cfg)
    with (
        torch.no_grad()
    ):  # random norm weights and biases, so that a wrong fold cannot hide behind w = 1, b = 0
        for module in model.modules():
            if "Norm" in type(module).__name__:
                module.weight.normal_(0.3 if name == "gemma3" else 1.0, 0.3)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0.0, 0.5)
    return model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _fold_random_scales(model, seed=0, spread=1.0):
    """Fold s = exp(N(0, spread)) into every scale group of every layer; returns the number of groups."""
    family, gen, n = family_of(model), torch.Generator().manual_seed(seed), 0
    for layer in decoder_layers(model):
        for group in scale_groups(layer, family):
            in_features = linear_layers(layer, family)[group.linears[0]].in_features
            awq.fold_scales(layer, group, torch.randn(in_features, generator=gen).mul(spread).exp(), family)
            n += 1
    return n


@pytest.mark.parametrize("name", ["llama", "gemma3", "opt"])
def test_folding_scales_keeps_tiny_model_logits(name):
    model = _tiny(name)
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    before = _logits(model, ids)
    assert _fold_random_scales(model) == 8  # 4 groups per layer, v -> o included (no GQA here)
    after = _logits(model, ids)
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()


@pytest.mark.parametrize("name", ["llama", "gemma3", "opt"])
def test_folding_is_not_vacuous_without_the_prev_op(name, monkeypatch):
    """Control: the same scales on the linears' columns, with nothing folded into prev_op, move the logits
    by far more than the tolerance above."""
    model = _tiny(name)
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    before = _logits(model, ids)

    def scale_columns_only(layer, group, s, family):
        for linear in group.linears:
            linear_layers(layer, family)[linear].weight.mul_(s)

    monkeypatch.setattr(awq, "fold_scales", torch.no_grad()(scale_columns_only))
    _fold_random_scales(model)
    assert (_logits(model, ids) - before).abs().max() > 1e-2 * before.abs().max()


@pytest.mark.slow
def test_folding_scales_keeps_smollm2_logits(smollm2_fresh):
    model, _ = smollm2_fresh
    ids = torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    assert _fold_random_scales(model, spread=0.5) == 30 * 3  # v -> o dropped: 3 KV heads of 9 (GQA)
    after = _logits(model, ids)
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()


def test_awq_layer_results_on_tiny_llama():
    model = _tiny("llama")
    ids = torch.randint(0, 97, (6, 32), generator=torch.Generator().manual_seed(2))
    result = awq.quantize_model(model, ASYM4_G32, ids, awq.AWQConfig(search_tokens=40), progress=False)
    assert result.method == "awq" and result.options["search_tokens"] == 40
    assert [(g["layer"], g["prev_op"]) for g in result.scale_groups[:4]] == [
        (0, "input_layernorm"),
        (0, "self_attn.v_proj"),
        (0, "post_attention_layernorm"),
        (0, "mlp.up_proj"),
    ]
    assert len(result.scale_groups) == 8 and len(result.rows) == 14 and len(result.linears) == 14
    for g in result.scale_groups:
        assert len(g["losses"]) == 20 and g["alphas"][g["losses"].index(min(g["losses"]))] == g["alpha"]
        assert g["search_tokens"] == 2 * 33  # 2 of the 6 windows, BOS + 32 tokens each
        assert len(g["scales"]) == len(g["mean_abs"]) == (128 if g["prev_op"] == "mlp.up_proj" else 64)
    clipped = {r["linear"] for r in result.rows if r["clip_ratio"] is not None}
    assert clipped == {
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    # every linear holds 4-bit values: at most 16 distinct values in each group of 32, and exactly the
    # dequantized codes of the result (in the scaled coordinates W·s, whose 1/s the norms now hold)
    state = model.state_dict()
    for layer in decoder_layers(model):
        for linear in linear_layers(layer, family_of(model)).values():
            groups = linear.weight.detach().reshape(-1, 32)
            assert max(len(torch.unique(g)) for g in groups) <= 16
    for name, qt in result.linears.items():
        assert torch.equal(dequantize(qt), state[f"{name}.weight"]), name
    assert set(result.float_tensors) == {
        f"model.layers.{i}.{norm}.weight"
        for i in (0, 1)
        for norm in ("input_layernorm", "post_attention_layernorm")
    }


@pytest.mark.parametrize("name", ["llama", "gemma3", "opt"])
def test_awq_with_alpha_zero_and_no_clip_is_rtn(name):
    """α grid {0} (s = 1) without clipping is plain rounding: the layer and its report rows must equal the RTN
    method's on the same inputs (an independent path: qviz.rtn with calib.collect_hessians)."""
    import copy

    from qviz.rtn import RTN

    model = _tiny(name)
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(4))
    inputs, kwargs = capture_layer_inputs(model, ids, batch_size=1)
    layer, family = decoder_layers(model)[0], family_of(model)
    twin = copy.deepcopy(layer)
    config = awq.AWQConfig(n_grid=1, search_tokens=None, clip=False)
    groups, rows, quantized = awq.awq_layer(
        layer, LayerInputs(inputs.hidden, kwargs[0]), family, ASYM4_G32, config
    )
    expected, expected_codes = RTN(ASYM4_G32).quantize_layer(
        twin, LayerInputs(inputs.hidden, kwargs[0]), family
    )
    assert all(g.alpha == 0.0 and set(g.scales) == {1.0} for g in groups)
    for name, qt in quantized.items():
        assert torch.equal(qt.codes, expected_codes[name].codes), name
    for row, ref in zip(rows, expected):
        assert row["linear"] == ref["linear"]
        assert row["output_rel_error"] == pytest.approx(ref["output_rel_error"], rel=1e-4)
        assert row["rtn_output_rel_error"] == pytest.approx(ref["output_rel_error"], rel=1e-4)
    for a, b in zip(layer.state_dict().values(), twin.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)  # Gemma's fold (1 + w)/1 − 1 may move w by an ulp


def test_awq_is_deterministic():
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(5))
    runs = []
    for _ in range(2):
        model = _tiny("opt")
        awq.quantize_model(model, ASYM4_G32, ids, awq.AWQConfig(search_tokens=32), progress=False)
        runs.append(_logits(model, ids[:1]))
    assert torch.equal(runs[0], runs[1])


def test_empty_calibration_is_refused():
    model = _tiny("llama")
    with pytest.raises(ValueError, match="calibration"):
        awq.quantize_model(model, ASYM4_G32, torch.empty(0, 16, dtype=torch.long), progress=False)
    layer, family = decoder_layers(model)[0], family_of(model)
    with pytest.raises(ValueError, match="calibration inputs"):
        awq.awq_layer(layer, LayerInputs([], []), family, ASYM4_G32)
    with pytest.raises(ValueError, match="calibration windows"):
        awq.quantize_model(model, ASYM4_G32, None, progress=False)
    with pytest.raises(ValueError, match="AWQConfig"):
        awq.quantize_model(model, ASYM4_G32, torch.zeros(1, 4, dtype=torch.long), {"n_grid": 4})


@pytest.mark.parametrize(
    "kwargs",
    [{"n_grid": 0}, {"search_tokens": 0}, {"max_shrink": 1.0}, {"clip_grid": -1}],
    ids=["n_grid", "search_tokens", "max_shrink", "clip_grid"],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        awq.AWQConfig(**kwargs)


@pytest.mark.slow
def test_awq_beats_rtn_on_smollm2(smollm2):
    """INT4 asym g64 (576 is not a multiple of 128; asym g32 would reproduce the release's Q4_1 exactly).
    Small on purpose: 8 calibration windows of 256 tokens, the α search on one of them."""
    from qviz import rtn
    from qviz.data import calib_windows, eval_windows
    from qviz.eval import perplexity
    from qviz.models import load_model

    ref, tok = smollm2
    spec = QuantSpec(bits=4, symmetric=False, group_size=64)
    windows = eval_windows(tok, seqlen=256, n=2)
    model, _ = load_model("smollm2-135m")
    rtn.quantize_model(model, spec, progress=False)
    ppl_rtn = perplexity(model, windows, progress=False)
    model, _ = load_model("smollm2-135m")
    calib = calib_windows(tok, seqlen=256, n=8, seed=0)
    result = awq.quantize_model(model, spec, calib, awq.AWQConfig(search_tokens=257), progress=False)
    ppl_awq = perplexity(model, windows, progress=False)
    ppl_ref = perplexity(ref, windows, progress=False)
    assert math.isfinite(ppl_awq) and ppl_ref < ppl_awq
    assert ppl_awq - ppl_ref < 0.6 * (ppl_rtn - ppl_ref), (ppl_ref, ppl_rtn, ppl_awq)
    assert len(result.scale_groups) == 30 * 3 and all(g["search_tokens"] == 257 for g in result.scale_groups)
    rows = result.rows
    assert len(rows) == 30 * 7
    assert sum(r["output_rel_error"] for r in rows) < sum(r["rtn_output_rel_error"] for r in rows)
