"""qviz.act: activation fake quantization, its reversible application to a model, static scales."""

import math

import pytest
import torch
from tiny_models import tiny_gemma3, tiny_llama, tiny_opt

from qviz.act import (
    ActSpec,
    calibrate_act_scales,
    channel_absmax,
    fake_quantize_act,
    quantize_activations,
)
from qviz.arch import decoder_layers, family_of, linear_layers
from qviz.formats import representable_values

MODELS = {"llama": tiny_llama, "gemma3": tiny_gemma3, "opt": tiny_opt}
FP8 = torch.float8_e4m3fn


def ids_for(model, seed=0, length=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (1, length), generator=g)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def rel_err(z, z_ref):
    return ((z - z_ref).norm() / z_ref.norm()).item()


def hook_state(model):
    """Every module's hooks and instance attributes: what a reversible change must leave as it found it."""
    return {
        name: (len(m._forward_pre_hooks), len(m._forward_hooks), sorted(vars(m)))
        for name, m in model.named_modules()
    }


# --- fake_quantize_act ---------------------------------------------------------------------------------------


def test_int8_per_token_golden():
    # row 0: absmax 127/64 -> scale 1/64 exactly; x·64 = [127, -32.5, 1.5, 0.64] -> codes [127, -32, 2, 1]
    # row 1: absmax 254 -> scale 2; x/2 = [127, 1.5, -2.5, 0.45] -> codes [127, 2, -2, 0] (halves to even)
    x = torch.tensor([[1.984375, -0.5078125, 0.0234375, 0.01], [254.0, 3.0, -5.0, 0.9], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor(
        [[127 / 64, -32 / 64, 2 / 64, 1 / 64], [254.0, 4.0, -4.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    assert torch.equal(fake_quantize_act(x, ActSpec("int8", "per-token")), expected)


def test_int8_per_tensor_dynamic_one_scale_for_all_rows():
    # absmax 254 -> scale 2 for both rows: the small row loses everything below one step
    x = torch.tensor([[254.0, 3.0], [0.9, -1.1]])
    assert fake_quantize_act(x, ActSpec("int8", "per-tensor")).tolist() == [[254.0, 4.0], [0.0, -2.0]]


@pytest.mark.parametrize(
    "fmt, expected",
    [("int8", [10.0, -63.5, 1.0, 0.0, 63.5]), ("int4", [3.5, -3.5, 1.0, 0.0, 3.5])],
    ids=["int8", "int4"],
)
def test_static_per_tensor_uses_given_scale_and_clamps_symmetrically(fmt, expected):
    # scale 0.5: x/0.5 = [20, -200, 1.5, 0.5, 300] -> clamp to ±127 (±7), never to -128 (-8)
    x = torch.tensor([[10.0, -100.0, 0.75, 0.25, 150.0]])
    got = fake_quantize_act(x, ActSpec(fmt, "per-tensor", static=True), scale=0.5)
    assert got[0].tolist() == expected


def test_int4_per_token_uses_at_most_15_levels_per_row():
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 2, 16)[:, None]
    x_hat = fake_quantize_act(x, ActSpec("int4", "per-token"))
    for row, row_hat in zip(x, x_hat):
        levels = torch.unique(row_hat)
        assert 10 <= len(levels) <= 15
        codes = row_hat / (row.abs().max() / 7)
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 7 + 1e-4


@pytest.mark.parametrize("bits", range(2, 9))
def test_every_int_width_has_2_to_the_b_minus_1_levels_per_row(bits):
    """intB per-token: codes in ±(2^(B−1) − 1), so a row that reaches its max on both signs uses every one of the
    2^B − 1 levels; checked against the formula round(x / s) · s, s = max|x| / (2^(B−1) − 1)."""
    qmax = 2 ** (bits - 1) - 1
    x = torch.linspace(-3.0, 3.0, 4001)[None]  # dense enough to hit every level
    x_hat = fake_quantize_act(x, ActSpec(f"int{bits}", "per-token"))
    s = 3.0 / qmax
    assert torch.equal(x_hat, torch.round(x / s) * s)
    assert len(torch.unique(x_hat)) == 2 * qmax + 1 and ActSpec(f"int{bits}").label.startswith(f"A{bits} ")


@pytest.mark.parametrize("granularity", ["per-token", "per-tensor"])
@pytest.mark.parametrize("magnitude", [1e-3, 1.0, 1e3], ids=["1e-3", "1", "1e3"])
def test_fp8_equals_torch_cast_bit_for_bit(granularity, magnitude):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 256, generator=g) * magnitude
    x[:, :16] *= 1e-4  # values far below absmax: subnormal E4M3 codes (< 2^-6 after scaling)
    absmax = x.abs().amax(-1, keepdim=True) if granularity == "per-token" else x.abs().amax()
    scale = absmax / 448
    assert ((x / scale).abs() < 2**-6).sum() > 100  # the subnormal range is exercised
    expected = (x / scale).to(FP8).float() * scale
    got = fake_quantize_act(x, ActSpec("fp8_e4m3", granularity))
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


def test_fp8_grid_points_stay_and_midpoints_round_to_even():
    grid = representable_values("fp8_e4m3").float()  # includes 448, so absmax 448 and scale exactly 1
    midpoints = (grid[1:] + grid[:-1]) / 2
    x = torch.cat([grid, midpoints])[None]
    got = fake_quantize_act(x, ActSpec("fp8_e4m3", "per-token"))[0]
    assert torch.equal(got[: len(grid)], grid)
    assert torch.equal(got, x[0].to(FP8).float())
    # ties by hand: 1.0625 lies between 1.0 (mantissa 000) and 1.125 (001) -> 1.0; 1.1875 -> 1.25 (010);
    # 2^-10 between 0 and the smallest subnormal 2^-9 -> 0; 3·2^-10 between 2^-9 and 2^-8 -> 2^-8
    ties = torch.tensor([[448.0, 1.0625, 1.1875, 2.0**-10, 3 * 2.0**-10, -1.0625]])
    assert fake_quantize_act(ties, ActSpec("fp8_e4m3", "per-token"))[0].tolist() == [
        448.0, 1.0, 1.25, 0.0, 2.0**-8, -1.0,
    ]  # fmt: skip


def test_fp8_static_saturates_instead_of_nan():
    x = torch.tensor([[1000.0, -1000.0, 3.0]])
    got = fake_quantize_act(x, ActSpec("fp8_e4m3", "per-tensor", static=True), scale=1.0)
    assert got.tolist() == [[448.0, -448.0, 3.0]]


@pytest.mark.parametrize(
    "spec",
    [ActSpec("int8", "per-token"), ActSpec("int4", "per-tensor"), ActSpec("fp8_e4m3", "per-token")],
    ids=lambda s: s.label,
)
def test_zero_rows_give_zeros(spec):
    x = torch.zeros(3, 8)
    x[1] = torch.arange(8.0) - 3.0
    got = fake_quantize_act(x, spec)
    assert not got.isnan().any()
    assert torch.equal(got[0], torch.zeros(8)) and torch.equal(got[2], torch.zeros(8))
    assert torch.equal(fake_quantize_act(torch.zeros(2, 4), spec), torch.zeros(2, 4))


def test_dtype_is_kept_and_computation_is_float32():
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    got = fake_quantize_act(x, ActSpec("int8", "per-token"))
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, fake_quantize_act(x.float(), ActSpec("int8", "per-token")).to(torch.bfloat16))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_input_raises(bad):
    x = torch.ones(2, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN .* Inf"):
        fake_quantize_act(x, ActSpec("int8", "per-token"))


@pytest.mark.parametrize(
    "kwargs, allowed",
    [
        (dict(fmt="int16"), "'int8', 'int7', 'int6', 'int5', 'int4', 'int3', 'int2', 'fp8_e4m3'"),
        (dict(fmt="fp8_e5m2"), "'int8', 'int7', 'int6', 'int5', 'int4', 'int3', 'int2', 'fp8_e4m3'"),
        (dict(granularity="per-channel"), "'per-tensor', 'per-token'"),
        (dict(granularity="per-token", static=True), "per-tensor"),
        (dict(granularity="per-tensor", static="yes"), "True or False"),
    ],
    ids=["int16", "e5m2", "per-channel", "static-per-token", "static-string"],
)
def test_bad_specs_say_what_is_allowed(kwargs, allowed):
    with pytest.raises(ValueError, match=allowed):
        ActSpec(**kwargs)


def test_scale_argument_must_match_static():
    x = torch.ones(2, 4)
    with pytest.raises(ValueError, match="calibrate_act_scales"):
        fake_quantize_act(x, ActSpec("int8", "per-tensor", static=True))
    with pytest.raises(ValueError, match="static=True"):
        fake_quantize_act(x, ActSpec("int8", "per-token"), scale=1.0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        fake_quantize_act(x, ActSpec("int8", "per-tensor", static=True), scale=torch.ones(2))


def test_labels():
    assert ActSpec("int8", "per-token").label == "A8 per-token"
    assert ActSpec("int4", "per-tensor").label == "A4 per-tensor"
    assert ActSpec("fp8_e4m3", "per-tensor", static=True).label == "FP8 per-tensor static"


# --- quantize_activations on a model -------------------------------------------------------------------------


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_context_changes_outputs_inside_and_restores_them_exactly(make):
    model = make()
    ids = ids_for(model)
    before, state = logits(model, ids), hook_state(model)
    with quantize_activations(model, ActSpec("int4", "per-tensor")) as names:
        inside = logits(model, ids)
        hooked = {n for n, m in model.named_modules() if m._forward_pre_hooks}
    family = family_of(model)
    assert len(names) == len(decoder_layers(model)) * len(family.linears)
    assert hooked == set(names) and not any("lm_head" in n or "embed" in n for n in hooked)
    assert rel_err(inside, before) > 0.05
    assert torch.equal(logits(model, ids), before)
    assert hook_state(model) == state


def test_an_exception_inside_still_restores():
    model = tiny_llama()
    ids = ids_for(model)
    before, state = logits(model, ids), hook_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with quantize_activations(model, ActSpec("int4", "per-tensor")):
            logits(model, ids)
            raise RuntimeError("boom")
    assert torch.equal(logits(model, ids), before) and hook_state(model) == state


def test_linears_read_quantized_inputs_and_skip_leaves_them_alone():
    model = tiny_llama()
    layer = linear_layers(decoder_layers(model)[0], family_of(model))
    seen = {}
    for name in ("self_attn.q_proj", "mlp.down_proj"):  # forward hooks see the input after the pre-hooks
        layer[name].register_forward_hook(lambda m, args, out, name=name: seen.update({name: args[0]}))
    with quantize_activations(model, ActSpec("int4", "per-tensor"), skip=("mlp.down_proj",)):
        logits(model, ids_for(model))
    assert torch.unique(seen["self_attn.q_proj"]).numel() <= 15
    assert torch.unique(seen["mlp.down_proj"]).numel() > 100
    with pytest.raises(ValueError, match="tuple of names"):
        with quantize_activations(model, ActSpec(), skip="mlp.down_proj"):
            pass


def test_a8_per_token_is_close_and_a4_per_tensor_is_much_worse():
    model = tiny_llama()
    ids = ids_for(model, length=24)
    ref = logits(model, ids)
    errors = {}
    for spec in (ActSpec("int8", "per-token"), ActSpec("int4", "per-tensor")):
        with quantize_activations(model, spec):
            errors[spec.label] = rel_err(logits(model, ids), ref)
    assert 0 < errors["A8 per-token"] < 0.02
    assert errors["A4 per-tensor"] > 10 * errors["A8 per-token"]


# --- static scales and channel statistics --------------------------------------------------------------------


def test_calibrated_scales_match_an_independent_capture():
    model = tiny_llama()
    state = hook_state(model)
    windows = torch.randint(0, 128, (3, 10), generator=torch.Generator().manual_seed(3))
    down = decoder_layers(model)[1].mlp.down_proj
    captured = []
    handle = down.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().clone()))
    with torch.no_grad():
        for w in windows:  # the convention of qviz.eval: BOS (config.bos_token_id) before every window
            model(input_ids=torch.cat([torch.tensor([model.config.bos_token_id]), w])[None])
    handle.remove()
    X = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured])  # (3 · 11 tokens, intermediate_size)
    assert X.shape == (33, 128)

    absmax = channel_absmax(model, windows)
    assert torch.equal(absmax["model.layers.1.mlp.down_proj"], X.abs().amax(0))
    assert absmax["model.layers.0.self_attn.q_proj"].shape == (64,)
    int8 = calibrate_act_scales(model, windows, ActSpec("int8", "per-tensor", static=True))
    fp8 = calibrate_act_scales(model, windows, ActSpec("fp8_e4m3", "per-tensor", static=True))
    assert int8["model.layers.1.mlp.down_proj"].item() == (X.abs().max() / 127).item()
    assert fp8["model.layers.1.mlp.down_proj"].item() == (X.abs().max() / 448).item()
    assert len(int8) == 14 and hook_state(model) == state


def test_static_scales_drive_the_context():
    model = tiny_llama()
    spec = ActSpec("int8", "per-tensor", static=True)
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(4))
    scales = calibrate_act_scales(model, windows, spec)
    ids = ids_for(model, seed=5)
    ref = logits(model, ids)
    with quantize_activations(model, spec, scales=scales):
        assert 0 < rel_err(logits(model, ids), ref) < 0.05
    tiny = {name: torch.tensor(1e-6) for name in scales}  # far too small: every input clips to ±127·1e-6
    with quantize_activations(model, spec, scales=tiny):
        assert rel_err(logits(model, ids), ref) > 0.5
    with pytest.raises(ValueError, match="needs a scale for every linear"):
        with quantize_activations(model, spec, scales={}):
            pass
    with pytest.raises(ValueError, match="static=True"):
        with quantize_activations(model, ActSpec("int8", "per-tensor"), scales=scales):
            pass
    with pytest.raises(ValueError, match="per-tensor"):
        calibrate_act_scales(model, windows, ActSpec("int8", "per-token"))


# --- the real model ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_a8_per_token_keeps_next_token_distribution_per_tensor_does_not(smollm2):
    model, tokenizer = smollm2
    text = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It is named after the engineer"
    ids = tokenizer(text, return_tensors="pt").input_ids
    ids = torch.cat([torch.tensor([[model.config.bos_token_id]]), ids], dim=1)
    log_p = logits(model, ids)[0].log_softmax(-1)

    def kl(spec):  # mean over positions of KL(float || quantized) of the next-token distribution
        with quantize_activations(model, spec):
            log_q = logits(model, ids)[0].log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()

    per_token, per_tensor = kl(ActSpec("int8", "per-token")), kl(ActSpec("int8", "per-tensor"))
    assert per_token < 0.15
    assert per_tensor > 5 * per_token
