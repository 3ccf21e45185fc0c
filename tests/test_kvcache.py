"""qviz.kvcache: golden values on hand-sized tensors, the routing through transformers' AttentionInterface on tiny
Llama / Gemma 3 / OPT models, KIVI's per-channel-keys property on planted outliers, and byte counts."""

import doctest
from types import SimpleNamespace

import pytest
import tiny_models
import torch
import torch.nn.functional as F
from transformers import DynamicCache, LlamaConfig, OPTConfig
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import qviz.kvcache
from qviz.act import ActSpec, fake_quantize_act
from qviz.formats import round_to
from qviz.kvcache import KVSpec, fake_quantize_kv, kl_by_position, kv_bytes_per_token, quantize_kv_cache

FAMILIES = {"llama": tiny_models.tiny_llama, "gemma3": tiny_models.tiny_gemma3, "opt": tiny_models.tiny_opt}


def test_doctests():
    assert doctest.testmod(qviz.kvcache).failed == 0


# --- fake_quantize_kv ----------------------------------------------------------------------------------------

# 3 tokens x 2 channels, chosen so that every absmax / 7 (INT4: codes -7..7) is a power of two (exact scales)
T = torch.tensor([[7.0, 1.2], [-3.5, 1.25], [0.6, -1.75]]).reshape(1, 1, 3, 2)


@pytest.mark.parametrize(
    "axis, expected",
    [
        # token scales 1, 0.5, 0.25: 1.2 -> 1; 1.25/0.5 = 2.5 -> 2 (ties to even); 0.6/0.25 = 2.4 -> 2
        ("per-token", [[7.0, 1.0], [-3.5, 1.0], [0.5, -1.75]]),
        # channel scales 1, 0.25: -3.5 -> -4 (tie to even), 0.6 -> 1; 1.2/0.25 = 4.8 and 1.25/0.25 = 5 -> 5
        ("per-channel", [[7.0, 1.25], [-4.0, 1.25], [1.0, -1.75]]),
    ],
)
def test_int4_golden(axis, expected):
    assert fake_quantize_kv(T, "int4", axis)[0, 0].tolist() == expected


@pytest.mark.parametrize(
    "group_size, expected",
    [
        (None, [7.0, 1.0, 0.0, -2.0, 4.0]),  # one scale (7 / 7 = 1) for all 5 tokens: halves to even
        (2, [7.0, 1.0, 0.5, -1.75, 3.5]),  # scales 1, 0.25 and 0.5 (the last group holds one token)
        (8, [7.0, 1.0, 0.0, -2.0, 4.0]),  # a group longer than the window: the whole window
    ],
    ids=["window", "g2", "g8"],
)
def test_per_channel_groups_of_tokens(group_size, expected):
    t = torch.tensor([7.0, 1.0, 0.5, -1.75, 3.5]).reshape(1, 1, 5, 1)
    assert fake_quantize_kv(t, "int4", "per-channel", group_size)[0, 0, :, 0].tolist() == expected


def _scaled_randn(*shape, seed=0):
    """Random values whose tokens and channels have magnitudes spread over 1e-3 .. 1e2."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g)
    return (
        t
        * 10 ** (torch.rand(shape[:-1] + (1,), generator=g) * 5 - 3)
        * 10 ** (torch.rand(shape[-1], generator=g))
    )


@pytest.mark.parametrize("axis", ["per-token", "per-channel"])
def test_int8_error_is_at_most_half_a_step(axis):
    t = _scaled_randn(2, 3, 7, 8)
    dim = -1 if axis == "per-token" else -2
    scale = t.abs().amax(dim, keepdim=True) / 127  # codes -127..127 spread over ±absmax
    err = (fake_quantize_kv(t, "int8", axis) - t).abs()
    assert (err <= scale / 2 * (1 + 1e-4)).all()  # 1e-4: float32 rounding of x / scale and of code · scale
    assert (err > 0).any()


@pytest.mark.parametrize("axis", ["per-token", "per-channel"])
def test_fp8_is_the_e4m3_cast_of_x_over_absmax_over_448(axis):
    t = _scaled_randn(2, 3, 7, 8, seed=1)
    dim = -1 if axis == "per-token" else -2
    scale = t.abs().amax(dim, keepdim=True) / 448
    got = fake_quantize_kv(t, "fp8_e4m3", axis)
    assert torch.equal(got, (t / scale).to(torch.float8_e4m3fn).float() * scale)
    # qviz's own rounding, from the definition of the format's bits:
    assert torch.equal(got, round_to(t / scale, "fp8_e4m3").float() * scale)
    torch.testing.assert_close(got.abs().amax(dim), t.abs().amax(dim), rtol=1e-6, atol=0)  # on ±448 · scale


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3"])
def test_the_grids_are_those_of_activations(fmt):
    """Keys and values are activations: per-token K/V is qviz.act's per-token fake quantization, and per-channel
    the same on the transposed tensor (tokens as the row)."""
    t = _scaled_randn(2, 3, 7, 8, seed=2)
    spec = ActSpec(fmt, "per-token")
    assert torch.equal(fake_quantize_kv(t, fmt, "per-token"), fake_quantize_act(t, spec))
    by_channel = fake_quantize_act(t.transpose(-1, -2), spec).transpose(-1, -2)
    assert torch.equal(fake_quantize_kv(t, fmt, "per-channel"), by_channel)


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3"])
@pytest.mark.parametrize("axis", ["per-token", "per-channel"])
def test_zero_slices_give_zeros(fmt, axis):
    t = _scaled_randn(1, 2, 5, 4)
    t[:, :, 2] = 0  # a zero token
    t[..., 1] = 0  # a zero channel
    got = fake_quantize_kv(t, fmt, axis)
    assert torch.isfinite(got).all()
    assert (got[:, :, 2] == 0).all() and (got[..., 1] == 0).all()
    assert torch.equal(fake_quantize_kv(torch.zeros(1, 1, 3, 4), fmt, axis), torch.zeros(1, 1, 3, 4))


def test_keeps_dtype():
    t = _scaled_randn(1, 2, 5, 4).bfloat16()
    assert fake_quantize_kv(t, "int4", "per-channel").dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fmt="int16"), "'int8', 'int7', 'int6', 'int5', 'int4', 'int3', 'int2', 'fp8_e4m3'"),
        (dict(fmt="int4", key_axis="per-head"), "key_axis must be one of \\('per-channel', 'per-token'\\)"),
        (dict(fmt="int4", value_axis="channel"), "value_axis must be one of"),
        (dict(fmt="int4", group_size=0), "positive integer"),
        (dict(fmt="int4", group_size=True), "positive integer"),
        (dict(fmt="int4", key_axis="per-token", group_size=32), "per-channel axis"),
    ],
    ids=["fmt", "key_axis", "value_axis", "group0", "group_bool", "group_without_channel"],
)
def test_bad_specs_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KVSpec(**kwargs)


def test_bad_fake_quantize_arguments():
    with pytest.raises(ValueError, match="fp8_e4m3"):
        fake_quantize_kv(T, "nf4", "per-token")
    with pytest.raises(ValueError, match="per-channel"):
        fake_quantize_kv(T, "int4", "per-row")
    with pytest.raises(ValueError, match="\\(batch, heads, seq, head_dim\\)"):
        fake_quantize_kv(T[0], "int4", "per-token")


def test_label():
    assert KVSpec("int4").label == "INT4 K per-channel / V per-token"
    assert KVSpec("fp8_e4m3", group_size=128).label == "FP8_E4M3 K per-channel g128 / V per-token"


# --- quantize_kv_cache ---------------------------------------------------------------------------------------

IDS = torch.randint(
    0, 128, (2, 12), generator=torch.Generator().manual_seed(0)
)  # longer than Gemma's window 4


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_change_inside_and_are_restored(family):
    model = FAMILIES[family]()
    with torch.no_grad():
        ref = model(IDS).logits
        with quantize_kv_cache(model, KVSpec("int4")):
            assert model.config._attn_implementation == "qviz_kv_sdpa"
            inside = model(IDS).logits
        after = model(IDS).logits
    assert (inside - ref).abs().max() > 1e-3
    assert torch.equal(after, ref)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("base", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_routing_alone_changes_nothing(family, base, monkeypatch):
    """With the quantizer replaced by the identity, the routed model must match the original bit for bit: the
    base attention function and its masks (Gemma's sliding windows) are the ones the model had."""
    model = FAMILIES[family]()
    model.set_attn_implementation(base)
    calls = []
    monkeypatch.setattr(qviz.kvcache, "fake_quantize_kv", lambda t, *args: calls.append(args) or t)
    with torch.no_grad():
        ref = model(IDS).logits
        with quantize_kv_cache(model, KVSpec("int4")):
            inside = model(IDS).logits
    assert len(calls) == 2 * model.config.num_hidden_layers  # K and V of every layer
    assert torch.equal(inside, ref)
    assert model.config._attn_implementation == base


def test_exception_inside_restores():
    model = tiny_models.tiny_llama()
    with torch.no_grad():
        ref = model(IDS).logits
        with pytest.raises(RuntimeError, match="boom"), quantize_kv_cache(model, KVSpec("int4")):
            raise RuntimeError("boom")
        assert model.config._attn_implementation == "sdpa"
        assert torch.equal(model(IDS).logits, ref)
        with quantize_kv_cache(model, KVSpec("int8")):  # usable again: nothing left marked active
            pass


def test_nested_and_bad_spec_refused():
    model = tiny_models.tiny_llama()
    with quantize_kv_cache(model, KVSpec("int4")):
        with pytest.raises(ValueError, match="already inside"), quantize_kv_cache(model, KVSpec("int8")):
            pass
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="KVSpec"), quantize_kv_cache(model, "int4"):
        pass


def test_keys_are_quantized_after_rope(monkeypatch):
    """Spy on what the attention function quantizes: in layer 0 it must be RoPE(k_proj(x)), not k_proj(x)."""
    model = tiny_models.tiny_llama()
    seen = []
    original = qviz.kvcache.fake_quantize_kv

    def spy(t, fmt, axis, group_size=None):
        seen.append((t.detach().clone(), axis))
        return original(t, fmt, axis, group_size)

    monkeypatch.setattr(qviz.kvcache, "fake_quantize_kv", spy)
    ids = IDS[:1, :10]
    with torch.no_grad(), quantize_kv_cache(model, KVSpec("int8")):
        model(ids)
        layer = model.model.layers[0]
        x = layer.input_layernorm(model.model.embed_tokens(ids))  # (1, 10, hidden)
        head_dim = model.config.hidden_size // model.config.num_attention_heads
        k = layer.self_attn.k_proj(x).view(1, 10, -1, head_dim).transpose(1, 2)  # (1, kv_heads, 10, head_dim)
        v = layer.self_attn.v_proj(x).view(1, 10, -1, head_dim).transpose(1, 2)
        cos, sin = model.model.rotary_emb(x, torch.arange(10)[None])
        _, k_rope = apply_rotary_pos_emb(k, k, cos, sin)
    (key, key_axis), (value, value_axis) = seen[:2]
    assert (key_axis, value_axis) == ("per-channel", "per-token")
    torch.testing.assert_close(key, k_rope, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(key, k, atol=1e-3)  # RoPE moved the keys of positions > 0
    torch.testing.assert_close(value, v, rtol=1e-5, atol=1e-6)


def test_per_token_quantized_cache_decodes_like_the_full_pass():
    """The docstring's convention: with per-token K and V, a real cache filled by a prefill and one decoding
    step (K and V quantized as they are read) predicts what one full pass over the window predicts."""
    model = tiny_models.tiny_llama()
    ids = IDS[:1, :10]
    with torch.no_grad(), quantize_kv_cache(model, KVSpec("int4", key_axis="per-token")):
        full = model(ids).logits[0, -1]
        cache = DynamicCache()
        model(
            ids[:, :9], None, None, cache, use_cache=True
        )  # 4th argument: the cache (its name changed in v5)
        step = model(ids[:, 9:], None, None, cache, use_cache=True).logits[0, -1]
    with torch.no_grad():
        float_full = model(ids).logits[0, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
    assert (full - float_full).abs().max() > 1e-3  # and the quantization did change the prediction


@pytest.mark.parametrize(
    "outlier, better, worse",
    [("channel", "per-channel", "per-token"), ("token", "per-token", "per-channel")],
    ids=["key-channel-outlier", "value-token-outlier"],
)
def test_kivi_planted_outliers(outlier, better, worse):
    """KIVI: an outlier channel in K favours per-channel key scales; an outlier token in V, per-token values.
    Measured on the attention output softmax(Q K̂ᵀ/√d) V̂, the quantity the model reads."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g) for _ in range(3))
    if outlier == "channel":
        k[..., 3] *= 20  # one key channel large for every token
    else:
        v[:, :, 10] *= 20  # one token with large values
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def error(axis):
        kq = fake_quantize_kv(k, "int4", axis) if outlier == "channel" else k
        vq = fake_quantize_kv(v, "int4", axis) if outlier == "token" else v
        return (F.scaled_dot_product_attention(q, kq, vq, is_causal=True) - out).pow(2).mean()

    assert error(better) < 0.5 * error(worse)


# --- kv_bytes_per_token ----------------------------------------------------------------------------------------

SMOL = SimpleNamespace(num_hidden_layers=30, num_key_value_heads=3, head_dim=64)  # SmolLM2-135M's shape


@pytest.mark.parametrize(
    "spec, kwargs, expected",
    [
        (16, {}, 23040.0),  # 2 * 30 * 3 * 64 * 2 bytes
        (8, {}, 11520.0),  # no scales for a bare width
        (KVSpec("int8", key_axis="per-token"), {}, 11880.0),  # (64*8 + 16) * 2 * 90 / 8
        (KVSpec("fp8_e4m3", key_axis="per-token"), {}, 11880.0),
        (KVSpec("int8"), {}, 11790.0),  # K: 512 + 64*16/128 = 520, V: 528 bits per head
        (KVSpec("int4"), {}, 6030.0),  # K: 256 + 8, V: 256 + 16
        (KVSpec("int4", group_size=32), {}, 6300.0),  # K: 256 + 32, V: 272
        (KVSpec("int4"), {"seqlen": 1024}, 5951.25),  # K: 256 + 1, V: 272
    ],
    ids=["fp16", "8bit", "int8-tok", "fp8-tok", "int8-kivi", "int4-kivi", "int4-g32", "int4-seq1024"],
)
def test_kv_bytes_per_token_golden(spec, kwargs, expected):
    assert kv_bytes_per_token(SMOL, spec, **kwargs) == expected


def test_kv_bytes_from_transformers_configs():
    llama = LlamaConfig(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3)
    assert kv_bytes_per_token(llama, 16) == 23040.0  # head_dim from hidden_size / num_attention_heads
    opt = OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4)  # no kv heads: every head
    assert kv_bytes_per_token(opt, 16) == 2 * 2 * 4 * 16 * 2
    assert kv_bytes_per_token(tiny_models.tiny_gemma3(), 16) == 2 * 3 * 2 * 16 * 2  # a model: its config
    for bad in (0, True, "int4", 4.0):
        with pytest.raises(ValueError, match="KVSpec or a positive number of bits"):
            kv_bytes_per_token(SMOL, bad)


# --- kl_by_position ----------------------------------------------------------------------------------------


def test_kl_by_position_int8_below_int4():
    model = tiny_models.tiny_llama()
    windows = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(1))
    kl4 = kl_by_position(model, windows, KVSpec("int4"))
    kl8 = kl_by_position(model, windows, KVSpec("int8"), batch_size=2)
    for kl in (kl4, kl8):
        assert kl.shape == (16,) and kl.dtype == torch.float32
        assert torch.isfinite(kl).all() and (kl >= 0).all()
    assert kl8.mean() < kl4.mean() / 4
    assert model.config._attn_implementation == "sdpa"


def test_kl_by_position_matches_a_direct_computation():
    """Element t: KL after reading BOS and the window's first t + 1 tokens, computed here in float64."""
    model = tiny_models.tiny_llama(bos_token_id=1)
    row = torch.randint(0, 128, (10,), generator=torch.Generator().manual_seed(2))
    ids = torch.cat([torch.tensor([1]), row])[None]
    with torch.no_grad():
        p = model(ids).logits[0, 1:].double().log_softmax(-1)
        with quantize_kv_cache(model, KVSpec("int4")):
            q = model(ids).logits[0, 1:].double().log_softmax(-1)
    expected = (p.exp() * (p - q)).sum(-1)
    torch.testing.assert_close(
        kl_by_position(model, row[None], KVSpec("int4")).double(), expected, atol=1e-6, rtol=1e-3
    )
    no_bos = kl_by_position(model, row[None], KVSpec("int4"), bos_token_id=None)
    assert no_bos.shape == (10,) and not torch.allclose(no_bos.double(), expected)


@pytest.mark.slow
def test_real_model_kivi_keys(smollm2):
    """SmolLM2-135M on Britannica prose: per-channel keys beat per-token keys at 4 bits, and INT8 is near-lossless."""
    from qviz.data import eval_windows

    model, tok = smollm2
    windows = eval_windows(tok, "britannica", seqlen=256, n=2)
    kivi = kl_by_position(model, windows, KVSpec("int4")).mean()
    per_token = kl_by_position(model, windows, KVSpec("int4", key_axis="per-token")).mean()
    int8 = kl_by_position(model, windows, KVSpec("int8")).mean()
    values = f"mean KL: int4 per-channel K {kivi:.4g}, int4 per-token K {per_token:.4g}, int8 {int8:.4g}"
    assert kivi < per_token / 2, values
    assert int8 < 0.01 and int8 < kivi, values
    assert model.config._attn_implementation == "sdpa"
