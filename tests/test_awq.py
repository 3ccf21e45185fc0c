"""AWQ: folding keeps the float model, the search beats rounding where activations have outliers, the whole
model quantizes better than RTN, clipping finds the brute-force optimum, bad input is refused."""

import math

import pytest
import torch

from qviz import awq
from qviz.arch import decoder_layers, family_of, linear_layers, scale_groups
from qviz.calib import LayerInputs
from qviz.quant import QuantSpec, fake_quantize

ASYM4_G32 = QuantSpec(bits=4, symmetric=False, group_size=32)


# --- tiny random models of the three families ----------------------------------------------------------------


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


# --- one linear with planted outlier input channels ------------------------------------------------------------


def _outlier_layer(seed=0, out_features=128, in_features=256, tokens=2048):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out_features, in_features, generator=gen) * 0.05
    X = torch.randn(tokens, in_features, generator=gen)
    X[:, [3, 70, 141, 200]] *= 40.0  # a few channels carry large activations, as in real LLMs
    return W, X


@pytest.mark.parametrize("bits", [4, 3], ids=["int4", "int3"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_awq_beats_rtn_on_planted_outliers(bits, symmetric):
    W, X = _outlier_layer()
    spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=64)
    rtn = awq.output_mse(X, W, fake_quantize(W, spec))
    result = awq.awq_linear(W, X, spec)
    assert result.losses[0] == pytest.approx(rtn, rel=1e-6)  # α = 0 is plain rounding
    assert result.rtn_error == pytest.approx(rtn, rel=1e-6)
    assert result.alpha > 0
    assert result.error < 0.7 * rtn
    assert awq.output_mse(X, W, result.W_hat) == pytest.approx(result.error, rel=1e-6)
    assert awq.awq_linear(W, X, spec, clip=False).error == pytest.approx(min(result.losses), rel=1e-6)


def test_awq_scale_is_normalised_and_monotone():
    s_x = torch.tensor([0.01, 0.5, 2.0, 30.0])
    assert torch.equal(awq.awq_scale(s_x, 0.0), torch.ones(4))
    s = awq.awq_scale(s_x, 0.5)
    assert (s.max() * s.min()).item() == pytest.approx(1.0)
    assert torch.all(s[1:] > s[:-1])
    assert torch.isfinite(awq.awq_scale(torch.tensor([0.0, 1.0]), 0.5)).all()  # a dead channel


def test_awq_fake_quantize_undoes_the_scale_exactly_when_on_the_grid():
    """W·s already on the grid: Q(W·s)/s returns W (up to float division)."""
    codes = torch.tensor([[0.0, 1.0, 2.0, 15.0], [3.0, 0.0, 7.0, 15.0]])
    s = torch.tensor([1.0, 2.0, 4.0, 0.5])
    W = codes / s
    spec = QuantSpec(bits=4, symmetric=False, granularity="channel")
    assert torch.allclose(awq.awq_fake_quantize(W, s, spec), W, rtol=1e-6)


def test_keep_salient_fp16_by_activation_wins():
    W, X = _outlier_layer()
    spec = QuantSpec(bits=3, symmetric=False, group_size=64)
    act = awq.keep_salient_fp16(W, X, spec, 0.02)
    assert len(act.channels) == 5 and {3, 70, 141, 200} <= set(act.channels.tolist())  # 2% of 256: 5 kept
    rnd = awq.keep_salient_fp16(W, X, spec, 0.02, by="random")
    assert act.error < 0.3 * act.rtn_error
    assert rnd.error > 0.8 * rnd.rtn_error
    assert torch.equal(act.W_hat[:, 3], W[:, 3])


# --- clipping -------------------------------------------------------------------------------------------------


def test_clip_search_matches_brute_force():
    """Each (row, group) picks the ratio with the smallest error of its own group's output contribution."""
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(6, 16, generator=gen)
    W[0, 2] = 6.0  # an outlier weight worth clipping
    X = torch.randn(40, 16, generator=gen)
    spec = QuantSpec(bits=3, symmetric=False, group_size=8)
    result = awq.clip_search(W, 2 * X.T @ X / X.shape[0], spec)
    ratios = [1 - i / 20 for i in range(10)]
    for row in range(6):
        for g in range(2):
            cols = slice(8 * g, 8 * g + 8)
            w, x = W[row : row + 1, cols], X[:, cols]
            errors = []
            for r in ratios:
                m = w.abs().max() * r
                q = fake_quantize(w.clamp(-m, m), QuantSpec(bits=3, symmetric=False, granularity="channel"))
                errors.append(((x @ (q - w).T) ** 2).mean().item())
            assert result.ratio[row, g].item() == pytest.approx(
                ratios[min(range(10), key=errors.__getitem__)]
            )
    assert (result.ratio < 1).any()
    assert result.error_after <= result.error_before


# --- the layer and the driver --------------------------------------------------------------------------------


def test_awq_layer_results_on_tiny_llama():
    model = _tiny("llama")
    ids = torch.randint(0, 97, (6, 32), generator=torch.Generator().manual_seed(2))
    result = awq.quantize_model(model, ASYM4_G32, ids, awq.AWQConfig(search_tokens=40), progress=False)
    assert [(g.layer, g.prev_op) for g in result.groups[:4]] == [
        (0, "input_layernorm"),
        (0, "self_attn.v_proj"),
        (0, "post_attention_layernorm"),
        (0, "mlp.up_proj"),
    ]
    assert len(result.groups) == 8 and len(result.rows) == 14
    for g in result.groups:
        assert len(g.losses) == 20 and g.alphas[g.losses.index(min(g.losses))] == g.alpha
        assert g.search_tokens == 2 * 33  # 2 of the 6 windows, BOS + 32 tokens each
        assert len(g.scales) == len(g.mean_abs) == (128 if g.prev_op == "mlp.up_proj" else 64)
    clipped = {r["linear"] for r in result.rows if r["clip_ratio"] is not None}
    assert clipped == {
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    # every linear holds 4-bit values: at most 16 distinct values in each group of 32
    for layer in decoder_layers(model):
        for linear in linear_layers(layer, family_of(model)).values():
            groups = linear.weight.detach().reshape(-1, 32)
            assert max(len(torch.unique(g)) for g in groups) <= 16


@pytest.mark.parametrize("name", ["llama", "gemma3", "opt"])
def test_awq_with_alpha_zero_and_no_clip_is_rtn(name):
    """α grid {0} (s = 1) without clipping is plain rounding: the layer and its report rows must equal the RTN
    method's on the same inputs (an independent path: qviz.rtn with calib.collect_hessians)."""
    import copy

    from qviz.calib import capture_layer_inputs
    from qviz.rtn import RTN

    model = _tiny(name)
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(4))
    inputs, kwargs = capture_layer_inputs(model, ids, batch_size=1)
    layer, family = decoder_layers(model)[0], family_of(model)
    twin = copy.deepcopy(layer)
    config = awq.AWQConfig(n_grid=1, search_tokens=None, clip=False)
    groups, rows = awq.awq_layer(layer, LayerInputs(inputs.hidden, kwargs[0]), family, ASYM4_G32, config)
    expected = RTN(ASYM4_G32).quantize_layer(twin, LayerInputs(inputs.hidden, kwargs[0]), family)
    assert all(g.alpha == 0.0 and set(g.scales) == {1.0} for g in groups)
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


# --- bad input ------------------------------------------------------------------------------------------------


def test_empty_calibration_is_refused():
    model = _tiny("llama")
    with pytest.raises(ValueError, match="calibration"):
        awq.quantize_model(model, ASYM4_G32, torch.empty(0, 16, dtype=torch.long), progress=False)
    layer, family = decoder_layers(model)[0], family_of(model)
    with pytest.raises(ValueError, match="calibration inputs"):
        awq.awq_layer(layer, LayerInputs([], []), family, ASYM4_G32)
    with pytest.raises(ValueError, match="at least one token"):
        awq.awq_linear(torch.randn(4, 64), torch.empty(0, 64), ASYM4_G32)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_grid": 0}, {"search_tokens": 0}, {"max_shrink": 1.0}, {"clip_grid": -1}],
    ids=["n_grid", "search_tokens", "max_shrink", "clip_grid"],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        awq.AWQConfig(**kwargs)


def test_bad_arguments_are_refused():
    W, X = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="alpha"):
        awq.awq_scale(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="by must be"):
        awq.keep_salient_fp16(W, X, QuantSpec(bits=4), by="largest")
    with pytest.raises(ValueError, match="X must be"):
        awq.awq_linear(W, torch.randn(10, 6), QuantSpec(bits=4))
    with pytest.raises(ValueError, match="per row or group"):
        awq.clip_search(W, X.T @ X, QuantSpec(bits=4, granularity="tensor"))
    with pytest.raises(ValueError, match="H"):
        awq.clip_search(W, X, QuantSpec(bits=4))


# --- the whole real model -------------------------------------------------------------------------------------


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
    assert len(result.groups) == 30 * 3 and all(g.search_tokens == 257 for g in result.groups)
    rows = result.rows
    assert len(rows) == 30 * 7
    assert sum(r["output_rel_error"] for r in rows) < sum(r["rtn_output_rel_error"] for r in rows)
