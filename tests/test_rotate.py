"""Rotations (`qviz.rotate`): orthogonal matrices checked against independent constructions, a rotated model
that computes the same logits and restores bit for bit, outliers spread by a Hadamard, and lower W4A4 error."""

import doctest
import math

import pytest
import torch
from tiny_models import tiny_gemma3, tiny_llama, tiny_opt

import qviz.rotate
from qviz.act import ActSpec, fake_quantize_act, quantize_activations
from qviz.arch import decoder_layers, family_of, linear_layers
from qviz.quant import QuantSpec, fake_quantize
from qviz.rotate import (
    block_hadamard,
    hadamard,
    outlier_stats,
    random_orthogonal,
    rotate_linears,
    rotation,
)

TINY = {"llama": tiny_llama, "gemma3": tiny_gemma3, "opt": tiny_opt}
W4 = QuantSpec(bits=4)  # weights: INT4 symmetric, one scale per output channel
A4 = ActSpec("int4", "per-token")  # activations: INT4 symmetric, one absmax scale per token (row of X)
F64 = torch.float64


def _ids(seed=0):
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _assert_orthogonal(Q):
    torch.testing.assert_close(Q @ Q.T, torch.eye(len(Q), dtype=Q.dtype), rtol=0, atol=1e-12)


def test_doctests():
    assert doctest.testmod(qviz.rotate).failed == 0


@pytest.mark.parametrize("n", [1, 2, 4, 64, 512])
def test_hadamard_is_orthogonal_with_entries_plus_minus_one_over_sqrt_n(n):
    H = hadamard(n, F64)
    _assert_orthogonal(H)
    assert torch.equal(H.abs(), torch.full((n, n), 1 / math.sqrt(n), dtype=F64))


def test_hadamard_is_the_walsh_matrix():
    """Independent formula: the Sylvester matrix H[i, j] = (−1)^popcount(i AND j) / √n."""
    n = 16
    walsh = [[(-1) ** bin(i & j).count("1") / math.sqrt(n) for j in range(n)] for i in range(n)]
    assert torch.equal(hadamard(n, F64), torch.tensor(walsh, dtype=F64))


def test_block_hadamard_is_kron_of_identity_and_hadamard():
    Q = block_hadamard(24, 8, F64)
    _assert_orthogonal(Q)
    assert torch.equal(Q, torch.kron(torch.eye(3, dtype=F64), hadamard(8, F64)))
    _assert_orthogonal(block_hadamard(576, 64, F64))  # SmolLM2's hidden size, 9 blocks


@pytest.mark.parametrize(
    "n, expected", [(576, block_hadamard(576, 64)), (640, block_hadamard(640, 128)), (1024, hadamard(1024))]
)
def test_rotation_takes_the_largest_power_of_two_block(n, expected):
    assert torch.equal(rotation(n), expected)


def test_random_orthogonal_is_orthogonal_and_seeded():
    Q = random_orthogonal(96, seed=3, dtype=F64)
    _assert_orthogonal(Q)
    assert torch.equal(Q, random_orthogonal(96, seed=3, dtype=F64))
    assert not torch.allclose(Q, random_orthogonal(96, seed=4, dtype=F64))
    assert torch.equal(rotation(96, "random", seed=3, dtype=F64), Q)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: hadamard(12), "power of two"),
        (lambda: hadamard(0), "power of two"),
        (lambda: block_hadamard(24, 16), "divides"),
        (lambda: block_hadamard(24, 6), "power of two"),
        (lambda: rotation(9), "random"),
        (lambda: rotation(8, kind="givens"), "kind"),
        (lambda: random_orthogonal(0), "positive"),
    ],
    ids=["hadamard-12", "hadamard-0", "block-16-of-24", "block-6", "odd-n", "unknown-kind", "random-0"],
)
def test_bad_sizes_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (F64, 1e-10)], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["hadamard", "random"])
@pytest.mark.parametrize("name", TINY)
def test_rotated_model_keeps_logits_and_restores_exactly(name, kind, dtype, rtol):
    model, ids = TINY[name]().to(dtype), _ids()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = _logits(model, ids)
    q_proj = decoder_layers(model)[0].self_attn.q_proj
    W = q_proj.weight.detach().clone()
    with rotate_linears(model, kind) as rotated:
        assert not torch.allclose(q_proj.weight, W)  # W·R
        assert sorted(rotated.rotations) == [64, 128]  # hidden and MLP widths
        after = _logits(model, ids)
    assert (after - before).abs().max() <= rtol * before.abs().max()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    linears = [
        lin for layer in decoder_layers(model) for lin in linear_layers(layer, family_of(model)).values()
    ]
    assert not any(lin._forward_pre_hooks for lin in linears)
    assert torch.equal(_logits(model, ids), before)


def test_restore_after_an_exception_inside_with():
    model = tiny_llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), rotate_linears(model):
        raise RuntimeError("boom")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_act_quant_and_later_hooks_see_the_rotated_input():
    """A pre-hook registered before rotate_linears sees x, act_quant and a pre-hook registered after see x·R."""
    model, ids = tiny_llama(), _ids()
    q_proj = decoder_layers(model)[0].self_attn.q_proj
    seen = {}
    record = lambda key: lambda module, args: seen.setdefault(key, args[0].detach().clone())
    q_proj.register_forward_pre_hook(record("before"))

    def act_quant(x):
        seen.setdefault("act_quant", x.detach().clone())
        return x

    with rotate_linears(model, act_quant=act_quant) as rotated:
        q_proj.register_forward_pre_hook(record("after"))
        _logits(model, ids)
    x_R = seen["before"] @ rotated.rotations[64].float()
    torch.testing.assert_close(seen["act_quant"], x_R)
    torch.testing.assert_close(seen["after"], x_R)


def test_quantize_activations_entered_inside_sees_the_rotated_input():
    """qviz.act.quantize_activations entered inside the rotated block quantizes x·R, as act_quant does;
    entered first, its hooks run before the rotation and quantize x instead."""
    model, ids = tiny_llama(), _ids()
    with rotate_linears(model, act_quant=lambda x: fake_quantize_act(x, A4)):
        expected = _logits(model, ids)
    with rotate_linears(model), quantize_activations(model, A4):
        inside = _logits(model, ids)
    with quantize_activations(model, A4), rotate_linears(model):
        outside = _logits(model, ids)
    assert torch.equal(inside, expected)
    assert not torch.allclose(outside, expected)


def test_outlier_stats_golden():
    assert outlier_stats(torch.tensor([3.0, -4.0])) == {
        "max_abs": 4.0,
        "rms": math.sqrt(12.5),
        "max_over_rms": 4.0 / math.sqrt(12.5),
    }


@pytest.mark.parametrize("n, block", [(64, 64), (576, 64)], ids=["hadamard-64", "block-hadamard-576"])
def test_a_hadamard_spreads_a_one_hot_outlier(n, block):
    """e_j·H has all its entries ±1/√n, so max/rms falls from √n to 1; a block Hadamard spreads the outlier
    over its block only: √n to √(n/block) (24 to 3 for 576 = 9 × 64)."""
    e = torch.zeros(n, dtype=F64)
    e[5] = 1.0
    rotated = e @ rotation(n, dtype=F64)
    assert outlier_stats(e)["max_over_rms"] == pytest.approx(math.sqrt(n), rel=1e-12)
    assert outlier_stats(rotated)["max_over_rms"] == pytest.approx(math.sqrt(n / block), rel=1e-12)
    in_block = rotated[:block]
    assert torch.allclose(in_block.abs(), torch.full((block,), 1 / math.sqrt(block), dtype=F64), rtol=1e-12)


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotation_lowers_w4a4_error_with_an_outlier_channel(kind):
    """Y = X·Wᵀ with channel 7 of X fifty times larger: INT4 per-token X and INT4 per-channel W lose less
    once both are rotated (X·R, W·R), averaged over 5 seeds (about 4x less for Hadamard, 3x for random)."""
    n, out_features, tokens = 256, 128, 64
    err_plain, err_rotated = 0.0, 0.0
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        W = torch.randn(out_features, n, generator=gen) / math.sqrt(n)
        X = torch.randn(tokens, n, generator=gen)
        X[:, 7] *= 50
        Y = X @ W.T
        R = rotation(n, kind, seed)
        err_plain += (fake_quantize_act(X, A4) @ fake_quantize(W, W4).T - Y).pow(2).mean().item()
        err_rotated += (fake_quantize_act(X @ R, A4) @ fake_quantize(W @ R, W4).T - Y).pow(2).mean().item()
    assert err_rotated < 0.5 * err_plain, (err_plain, err_rotated)


@pytest.mark.slow
def test_rotation_spreads_smollm2_outliers(smollm2):
    """Read-only: the inputs of the real model's linears, captured with hooks, have smaller per-token max/rms
    once rotated by rotation(in_features), and per-token INT4 of them loses less of each linear's output."""
    from qviz.data import calib_windows

    model, tok = smollm2
    linears = {
        f"{i}.{name}": linear
        for i, layer in enumerate(decoder_layers(model))
        for name, linear in linear_layers(layer, family_of(model)).items()
        if name in ("self_attn.q_proj", "mlp.down_proj")
    }
    inputs = {}
    handles = [
        lin.register_forward_pre_hook(lambda m, args, key=key: inputs.setdefault(key, args[0][0].detach()))
        for key, lin in linears.items()
    ]
    try:
        _logits(model, calib_windows(tok, seqlen=128, n=1, seed=0))
    finally:
        for handle in handles:
            handle.remove()
    ratio_plain, ratio_rotated, err_plain, err_rotated = [], [], 0.0, 0.0
    for key, X in inputs.items():  # X: (tokens, in_features)
        W, R = linears[key].weight.detach(), rotation(X.shape[-1])
        ratio_plain += [outlier_stats(x)["max_over_rms"] for x in X]
        ratio_rotated += [outlier_stats(x)["max_over_rms"] for x in X @ R]
        Y = X @ W.T
        err_plain += ((fake_quantize_act(X, A4) @ W.T - Y).pow(2).mean() / Y.pow(2).mean()).item()
        err_rotated += ((fake_quantize_act(X @ R, A4) @ (W @ R).T - Y).pow(2).mean() / Y.pow(2).mean()).item()
    assert sum(ratio_rotated) < 0.7 * sum(ratio_plain), (sum(ratio_plain), sum(ratio_rotated))
    assert err_rotated < 0.7 * err_plain, (err_plain, err_rotated)
