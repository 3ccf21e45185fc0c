"""Checkpoints: save -> load is bit-exact, writes are atomic, and the independent compressed-tensors library
(and transformers through it) decompresses our files to exactly our dequantized weights."""

import json

import pytest
import tiny_models
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import qviz.export
from qviz.export import load_quantized, load_quantized_model, save_quantized
from qviz.qlinear import QuantLinear, quantize_linears
from qviz.quant import QuantSpec, quantize


def tiny_llama(spec: QuantSpec | None, dtype=torch.float16, seed=0):
    """A 2-layer Llama with random weights (hidden 64, MLP 128), its decoder linears quantized by `spec`."""
    model = tiny_models.tiny_llama(seed, max_position_embeddings=2048).to(dtype)
    return quantize_linears(model, spec, backend="reference") if spec else model


def quant_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def assert_bit_exact(model, ckpt, scale_dtype=None):
    layers = quant_layers(model)
    assert set(ckpt.quantized) == set(layers)
    for name, layer in layers.items():
        ours, back = layer.quantized(), ckpt.quantized[name]
        assert torch.equal(back.codes, ours.codes), name
        assert torch.equal(back.zero_point, ours.zero_point), name
        assert torch.equal(back.scale, ours.scale.to(scale_dtype or layer.scales.dtype).float()), name
        assert back.spec.bits == ours.spec.bits and back.spec.symmetric == ours.spec.symmetric
        k = ours.codes.shape[1]  # one group as long as the row is stored like per-channel
        assert (back.spec.group_size or k) == (ours.spec.group_size or k)
    sd = model.state_dict()
    for key, t in ckpt.tensors.items():  # embeddings, norms, lm_head: unchanged
        assert torch.equal(t, sd[key]), key


SPECS = [
    pytest.param(QuantSpec(bits=b, symmetric=s, group_size=g), id=f"b{b}-{'sym' if s else 'asym'}-g{g}")
    for b, s, g in [
        (4, True, 32),
        (4, False, 32),
        (4, True, None),
        (4, False, None),
        (8, True, 64),
        (3, False, 32),
        (2, True, 32),
    ]
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("fmt", ["compressed-tensors", "gptq"])
def test_save_load_bit_exact(tmp_path, spec, fmt):
    model = tiny_llama(spec)
    ckpt = load_quantized(save_quantized(model, tmp_path / "ckpt", format=fmt))
    assert ckpt.format == fmt
    assert_bit_exact(model, ckpt)
    qc = ckpt.config["quantization_config"]
    assert ckpt.config["model_type"] == "llama"
    if fmt == "gptq":
        assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == (
            spec.bits,
            spec.group_size or -1,
            spec.symmetric,
            False,
        )
        assert json.loads((tmp_path / "ckpt" / "quantize_config.json").read_text()) == qc
    else:
        assert qc["format"] == "pack-quantized" and qc["ignore"] == ["lm_head"]
        assert qc["config_groups"]["group_0"]["weights"]["strategy"] == (
            "group" if spec.group_size else "channel"
        )


@pytest.mark.parametrize("fmt", ["compressed-tensors", "gptq"])
def test_load_quantized_model_computes_the_same_logits(tmp_path, fmt):
    model = tiny_llama(QuantSpec(bits=4, symmetric=False, group_size=32))
    loaded = load_quantized_model(save_quantized(model, tmp_path / "ckpt", format=fmt), backend="reference")
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == 14
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_float32_model_keeps_float32_scales_in_compressed_tensors_and_fp16_in_gptq(tmp_path):
    model = tiny_llama(QuantSpec(bits=4, symmetric=False, group_size=32), dtype=torch.float32)
    assert_bit_exact(model, load_quantized(save_quantized(model, tmp_path / "ct")))
    assert_bit_exact(
        model, load_quantized(save_quantized(model, tmp_path / "gptq", format="gptq")), torch.float16
    )


def test_gptq_act_order_g_idx_survives(tmp_path):
    model = tiny_llama(None)
    spec = QuantSpec(bits=4, group_size=32)
    name = "model.layers.0.mlp.down_proj"
    lin = model.get_submodule(name)
    g_idx = (torch.randperm(128, generator=torch.Generator().manual_seed(0)) // 32).int()
    quantize_linears(model, {name: (quantize(lin.weight.detach(), spec), g_idx)})
    ckpt = load_quantized(save_quantized(model, tmp_path / "g", format="gptq"))
    assert torch.equal(ckpt.g_idx[name], g_idx) and ckpt.config["quantization_config"]["desc_act"] is True
    with pytest.raises(ValueError, match="save it in the 'gptq' format"):
        save_quantized(model, tmp_path / "ct")


# --- atomicity ----------------------------------------------------------------------------------------------


def _fail_midway(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"half a checkpoint")
    raise OSError("disk full (injected)")


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    model = tiny_llama(QuantSpec(bits=4, group_size=32))
    monkeypatch.setattr(qviz.export, "_save_file", _fail_midway)
    with pytest.raises(OSError, match="injected"):
        save_quantized(model, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary folder left behind


def test_failure_midway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    old = tiny_llama(QuantSpec(bits=4, group_size=32), seed=1)
    path = save_quantized(old, tmp_path / "ckpt")
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    monkeypatch.setattr(qviz.export, "_save_file", _fail_midway)
    with pytest.raises(OSError, match="injected"):
        save_quantized(tiny_llama(QuantSpec(bits=4, group_size=32)), path, overwrite=True)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_overwrite_replaces_and_refuses_without_flag(tmp_path):
    path = save_quantized(tiny_llama(QuantSpec(bits=4, group_size=32), seed=1), tmp_path / "ckpt")
    new = tiny_llama(QuantSpec(bits=4, group_size=32), seed=2)
    with pytest.raises(ValueError, match="already exists"):
        save_quantized(new, path)
    assert_bit_exact(new, load_quantized(save_quantized(new, path, overwrite=True)))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        save_quantized(tiny_llama(QuantSpec(bits=4, group_size=32)), tmp_path / "x", format="awq")
    with pytest.raises(ValueError, match="no QuantLinear"):
        save_quantized(tiny_llama(None), tmp_path / "x")
    mixed = tiny_llama(None)
    quantize_linears(
        mixed,
        {
            "model.layers.0.mlp.up_proj": quantize(
                mixed.model.layers[0].mlp.up_proj.weight.detach(), QuantSpec(bits=8)
            )
        },
    )
    quantize_linears(mixed, QuantSpec(bits=4, group_size=32))
    with pytest.raises(ValueError, match="one quantization scheme"):
        save_quantized(mixed, tmp_path / "x")


# --- the independent implementation -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_compressed_tensors_decompresses_to_our_weights(tmp_path, spec):
    """compressed-tensors' own PackedQuantizationCompressor, configured from our config.json, unpacks our
    safetensors to exactly the weights our QuantLinear computes with."""
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    model = tiny_llama(spec)
    path = save_quantized(model, tmp_path / "ckpt")
    qconfig = QuantizationConfig.model_validate(
        json.loads((path / "config.json").read_text())["quantization_config"]
    )
    scheme = qconfig.config_groups["group_0"]
    state = load_file(str(path / "model.safetensors"))
    for name, layer in quant_layers(model).items():
        part = {k.removeprefix(name + "."): v for k, v in state.items() if k.startswith(name + ".weight_")}
        weight = PackedQuantizationCompressor.decompress(part, scheme)["weight"]
        assert torch.equal(weight, layer.dequantized_weight()), (ct.__version__, name)


def test_transformers_loads_our_compressed_tensors_checkpoint(tmp_path):
    """End to end: transformers + compressed-tensors read our folder, decompress it, and compute our logits."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    model = tiny_llama(QuantSpec(bits=4, group_size=32))
    loaded = AutoModelForCausalLM.from_pretrained(
        save_quantized(model, tmp_path / "ckpt"), dtype=torch.float16
    )
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, ours = loaded(ids).logits.float(), model(ids).logits.float()
    for name, layer in quant_layers(model).items():  # decompressed on the first forward
        assert torch.equal(loaded.get_submodule(name).weight, layer.dequantized_weight()), name
    torch.testing.assert_close(theirs, ours, atol=1e-3, rtol=1e-3)


def test_tied_embedding_is_stored_once_and_retied_on_load(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = quantize_linears(
        LlamaForCausalLM(cfg).eval(), QuantSpec(bits=4, group_size=32), backend="reference"
    )
    assert model.lm_head.weight is model.model.embed_tokens.weight
    path = save_quantized(model, tmp_path / "ckpt")
    keys = set(load_quantized(path).tensors)
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    loaded = load_quantized_model(path, backend="reference")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
