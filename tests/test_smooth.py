"""SmoothQuant (`qviz.smooth`): golden scales, the float model unchanged after smoothing, activations divided
by s exactly where the scales say, and lower W8A8 error than without smoothing on planted outliers."""

import copy
import doctest
import math

import pytest
import torch
from tiny_models import tiny_gemma3, tiny_llama, tiny_opt
from torch import nn

import qviz.smooth
from qviz.act import ActSpec, channel_absmax, quantize_activations
from qviz.arch import decoder_layers, family_of, linear_layers
from qviz.quant import QuantSpec, fake_quantize
from qviz.smooth import smooth_model, smooth_scales, weight_channel_max

TINY = {"llama": tiny_llama, "gemma3": tiny_gemma3, "opt": tiny_opt}
W8 = QuantSpec(bits=8)  # weights: INT8 symmetric, one scale per output channel
A8 = ActSpec("int8", "per-tensor")  # activations: INT8 symmetric, one absmax scale per tensor, at run time


def _ids(seed=0, shape=(2, 24)):
    return torch.randint(0, 128, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _w8a8_logits(model, ids):
    """Logits of a copy of `model` whose decoder linears compute with INT8 weights and INT8 inputs."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in decoder_layers(model):
            for linear in linear_layers(layer, family_of(model)).values():
                linear.weight.copy_(fake_quantize(linear.weight, W8))
    with quantize_activations(model, A8):
        return _logits(model, ids)


def test_doctests():
    assert doctest.testmod(qviz.smooth).failed == 0


@pytest.mark.parametrize(
    "alpha, expected",
    [(0.0, [0.5, 2.0]), (0.5, [2.0, 2.0]), (1.0, [8.0, 2.0])],
    ids=["alpha0-flatten-weights", "alpha0.5-balance", "alpha1-flatten-activations"],
)
def test_smooth_scales_golden(alpha, expected):
    """act_max [8, 2], weight_max [2, 0.5]: α = 0 gives 1/max|W|, α = 1 gives max|X|, α = 0.5 the square
    root of their ratio (X/s and W·s then both have channel maxima [4, 1])."""
    assert smooth_scales(torch.tensor([8.0, 2.0]), torch.tensor([2.0, 0.5]), alpha).tolist() == expected


def test_dead_channels_keep_finite_positive_scales():
    s = smooth_scales(torch.tensor([0.0, 3.0, 0.0]), torch.tensor([2.0, 0.0, 0.0]), 0.5)
    assert torch.isfinite(s).all() and (s > 0).all()


@pytest.mark.parametrize("alpha", [-0.1, 1.01, math.nan, True, "0.5"], ids=repr)
def test_alpha_outside_0_1_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        smooth_scales(torch.ones(4), torch.ones(4), alpha)


def test_mismatched_maxima_are_refused():
    with pytest.raises(ValueError, match="shapes"):
        smooth_scales(torch.ones(4), torch.ones(5), 0.5)


def test_weight_channel_max_over_a_group():
    a, b = nn.Linear(3, 2, bias=False), nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, -5.0, 0.0], [-2.0, 1.0, 0.0]]))
        b.weight.copy_(torch.tensor([[0.5, 0.0, -3.0]]))
    assert weight_channel_max([a, b]).tolist() == [2.0, 5.0, 3.0]
    with pytest.raises(ValueError, match="in_features"):
        weight_channel_max([a, nn.Linear(4, 2)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", TINY)
def test_smoothing_keeps_the_float_logits(name, dtype):
    """Random act_max (s spread over ~e^±3): the smoothed model gives the same logits, to the precision it
    computes in (qviz.awq.fold_scales folds in the weights' dtype). A float64 Gemma stays float32-accurate:
    transformers' Gemma3RMSNorm computes in float32 whatever the dtype of its input and weight."""
    rtol = 1e-12 if dtype == torch.float64 and name != "gemma3" else 1e-5
    model, ids = TINY[name]().to(dtype), _ids()
    before = _logits(model, ids)
    gen = torch.Generator().manual_seed(1)
    act_max = {
        k: torch.randn(v.shape, generator=gen).mul(1.5).exp() for k, v in channel_absmax(model, ids).items()
    }
    scales = smooth_model(model, act_max, alpha=0.5)
    # 6 smoothed linears per layer: q, k, v, gate, up, down (o_proj left out: GQA) or OPT's q, k, v, out, fc1, fc2
    n_layers = len(decoder_layers(model))
    assert len(scales) == n_layers * 6 and max(s.log().abs().max().item() for s in scales.values()) > 1
    after = _logits(model, ids)
    assert (after - before).abs().max() <= rtol * before.abs().max()


@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("name", TINY)
def test_smoothed_inputs_are_act_max_over_s(name, alpha):
    """Measured again after smoothing, the input of every smoothed linear has channel maxima act_max / s
    (all 1 for α = 1, where s = act_max); the linears left alone (o_proj under GQA) see the same input."""
    model, ids = TINY[name](), _ids()
    act_max = channel_absmax(model, ids)
    scales = smooth_model(model, act_max, alpha)
    after = channel_absmax(model, ids)
    for key, x_max in after.items():
        expected = act_max[key] / scales[key] if key in scales else act_max[key]
        torch.testing.assert_close(x_max, expected, rtol=1e-4, atol=1e-6, msg=key)
        if alpha == 1.0 and key in scales:
            torch.testing.assert_close(x_max, torch.ones_like(x_max), rtol=1e-4, atol=0, msg=key)
    o_projs = {f"model.layers.{i}.self_attn.o_proj" for i in range(len(decoder_layers(model)))}
    assert set(after) - set(scales) == (set() if name == "opt" else o_projs)  # GQA: v -> o cannot fold


def test_missing_act_max_is_refused_before_any_change():
    model, ids = tiny_llama(), _ids()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    act_max = channel_absmax(model, ids)
    del act_max["model.layers.1.mlp.down_proj"]  # the last group: every other group could have been folded
    with pytest.raises(ValueError, match="model.layers.1.mlp.down_proj.*channel_absmax"):
        smooth_model(model, act_max, alpha=0.5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothquant_lowers_w8a8_error_with_an_outlier_channel(seed):
    """Plant an activation outlier channel (one norm weight entry × 30 in every layer): per-tensor INT8
    activations then waste their grid on it, and smoothing with α = 0.5 cuts the logit error by more than
    half (by 5-10x on these seeds)."""
    model, ids = tiny_llama(seed), _ids(seed, (2, 32))
    with torch.no_grad():
        for layer in decoder_layers(model):
            layer.input_layernorm.weight[5] *= 30
            layer.post_attention_layernorm.weight[17] *= 30
    reference = _logits(model, ids)
    err_plain = (_w8a8_logits(model, ids) - reference).pow(2).mean()
    smooth_model(model, channel_absmax(model, ids), alpha=0.5)
    err_smooth = (_w8a8_logits(model, ids) - reference).pow(2).mean()
    assert err_smooth < 0.5 * err_plain, (err_plain.item(), err_smooth.item())


@pytest.mark.slow
def test_smoothquant_on_smollm2(smollm2):
    """The real model's outliers: smoothing (on a copy) keeps the float logits and lowers the W8A8 (per-tensor
    activations) logit error."""
    from qviz.data import calib_windows

    ref, tok = smollm2
    calib, ids = calib_windows(tok, seqlen=128, n=3, seed=0).split([2, 1])
    reference = _logits(ref, ids)
    err_plain = (_w8a8_logits(ref, ids) - reference).pow(2).mean()
    model = copy.deepcopy(ref)
    smooth_model(model, channel_absmax(model, calib), alpha=0.5)
    assert (_logits(model, ids) - reference).abs().max() <= 1e-4 * reference.abs().max()
    err_smooth = (_w8a8_logits(model, ids) - reference).pow(2).mean()
    assert err_smooth < 0.7 * err_plain, (err_plain.item(), err_smooth.item())
