"""Checkpoints: a method's result saved and loaded is bit-exact, writes are atomic, and the independent
compressed-tensors library (and transformers through it) decompresses our files to exactly our weights."""

import json

import pytest
import tiny_models
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import qviz.export
from qviz import awq, gptq, rtn
from qviz.export import load_quantized, load_quantized_model, save_quantized
from qviz.qlinear import QuantLinear, quantize_linears
from qviz.quant import QuantizedTensor, QuantSpec, dequantize


def windows(n=4, seq=24, seed=0):
    return torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(seed))


def tiny_llama(spec: QuantSpec, dtype=torch.float16, seed=0):
    """A 2-layer Llama with random weights (hidden 64, MLP 128), rounded (RTN) in place under `spec`;
    returns (the fake-quantized model, its QuantResult)."""
    model = tiny_models.tiny_llama(seed, max_position_embeddings=2048).to(dtype)
    return model, rtn.quantize_model(model, spec, progress=False)


def assert_bit_exact(result, ckpt, model, scale_dtype=None):
    """The checkpoint holds exactly the result's codes and zero points, its scales as stored, and every
    other tensor of the model."""
    assert set(ckpt.result.linears) == set(result.linears)
    for name, ours in result.linears.items():
        back = ckpt.result.linears[name]
        assert torch.equal(back.codes, ours.codes), name
        assert torch.equal(back.zero_point, ours.zero_point.expand_as(back.zero_point)), name
        stored = scale_dtype or back.dtype  # the dtype the scales were written in
        assert torch.equal(back.scale, ours.scale.expand_as(back.scale).to(stored).float()), name
        if ours.g_idx is None:
            assert back.g_idx is None, name
        else:
            assert torch.equal(back.g_idx, ours.g_idx), name
    assert (ckpt.result.spec.bits, ckpt.result.spec.symmetric) == (result.spec.bits, result.spec.symmetric)
    state = model.state_dict()
    for key, t in ckpt.tensors.items():  # embeddings, norms, lm_head: unchanged (or as the method left them)
        assert torch.equal(t, state[key]), key


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
    model, result = tiny_llama(spec)
    ckpt = load_quantized(save_quantized(model, result, tmp_path / "ckpt", format=fmt))
    assert ckpt.format == fmt
    assert_bit_exact(result, ckpt, model, torch.float16)
    assert ckpt.result.method == "rtn" and ckpt.result.spec == spec  # qviz's own metadata
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


def _methods():
    """Every method's result on a float32 tiny Llama: RTN, GPTQ (natural order; act-order with static and with
    dynamic groups), AWQ. Returns {id: (fake-quantized model, result)}."""
    out = {}
    for label, spec, run in [
        ("rtn", QuantSpec(bits=4, group_size=32), lambda m, s: rtn.quantize_model(m, s, progress=False)),
        ("gptq-natural", QuantSpec(bits=4, group_size=32),
         lambda m, s: gptq.quantize_model(m, s, windows(), act_order=False, progress=False)),
        ("gptq-actorder-static", QuantSpec(bits=4, symmetric=False, group_size=32),
         lambda m, s: gptq.quantize_model(m, s, windows(), progress=False)),
        ("gptq-actorder-dynamic", QuantSpec(bits=4, group_size=32),
         lambda m, s: gptq.quantize_model(m, s, windows(), static_groups=False, progress=False)),
        ("awq", QuantSpec(bits=4, symmetric=False, group_size=32),
         lambda m, s: awq.quantize_model(m, s, windows(), awq.AWQConfig(n_grid=5), progress=False)),
    ]:  # fmt: skip
        model = tiny_models.tiny_llama(0, max_position_embeddings=2048)
        out[label] = (model, run(model, spec))
    return out


METHODS = _methods()


@pytest.mark.parametrize("label", list(METHODS))
@pytest.mark.parametrize("fmt", ["compressed-tensors", "gptq"])
def test_every_method_ships_its_own_codes(tmp_path, label, fmt):
    """The chain from a method to disk and back: the checkpoint holds the method's codes bit for bit, and the
    model rebuilt from it computes the fake-quantized model's logits exactly (float32, float32 scales in
    compressed-tensors; float16 scales in GPTQ files, so there the logits agree to 1e-3 of their size)."""
    model, result = METHODS[label]
    if fmt == "compressed-tensors" and label == "gptq-actorder-dynamic":
        with pytest.raises(ValueError, match="g_idx"):
            save_quantized(model, result, tmp_path / "ckpt", format=fmt)
        return
    fresh = tiny_models.tiny_llama(0, max_position_embeddings=2048)  # the float model, norms unfolded
    path = save_quantized(fresh, result, tmp_path / "ckpt", format=fmt)
    ckpt = load_quantized(path)
    assert_bit_exact(result, ckpt, model, torch.float16 if fmt == "gptq" else torch.float32)
    assert ckpt.result.method == result.method and ckpt.result.options == result.options
    if label == "gptq-actorder-dynamic":
        assert ckpt.config["quantization_config"]["desc_act"] is True
    loaded = load_quantized_model(path, backend="reference")
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == 14
    ids = windows(n=2, seed=7)
    with torch.no_grad():
        theirs, ours = loaded(ids).logits, model(ids).logits
    if fmt == "compressed-tensors":
        assert torch.equal(theirs, ours)
    else:
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-3 * ours.abs().max().item())


def test_float32_model_keeps_float32_scales_in_compressed_tensors_and_fp16_in_gptq(tmp_path):
    model, result = tiny_llama(QuantSpec(bits=4, symmetric=False, group_size=32), dtype=torch.float32)
    ct = load_quantized(save_quantized(model, result, tmp_path / "ct"))
    assert next(iter(ct.result.linears.values())).scale.dtype == torch.float32
    assert_bit_exact(result, ct, model, torch.float32)
    gq = load_quantized(save_quantized(model, result, tmp_path / "gptq", format="gptq"))
    assert_bit_exact(result, gq, model, torch.float16)


# --- atomicity ----------------------------------------------------------------------------------------------


def _fail_midway(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"half a checkpoint")
    raise OSError("disk full (injected)")


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    model, result = tiny_llama(QuantSpec(bits=4, group_size=32))
    monkeypatch.setattr(qviz.export, "_save_file", _fail_midway)
    with pytest.raises(OSError, match="injected"):
        save_quantized(model, result, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary folder left behind


def test_failure_midway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_quantized(*tiny_llama(QuantSpec(bits=4, group_size=32), seed=1), tmp_path / "ckpt")
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    monkeypatch.setattr(qviz.export, "_save_file", _fail_midway)
    with pytest.raises(OSError, match="injected"):
        save_quantized(*tiny_llama(QuantSpec(bits=4, group_size=32)), path, overwrite=True)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_failed_final_rename_puts_the_old_checkpoint_back(tmp_path, monkeypatch):
    """Overwriting moves the old folder aside, then renames the new one into place: if that rename fails, the
    old checkpoint must be back under its own name, not left under a temporary one."""
    path = save_quantized(*tiny_llama(QuantSpec(bits=4, group_size=32), seed=1), tmp_path / "ckpt")
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    replace = qviz.export.os.replace

    def failing_replace(src, dst):
        if str(src).startswith(str(tmp_path / ".ckpt.tmp-")):
            raise OSError("rename failed (injected)")
        return replace(src, dst)

    monkeypatch.setattr(qviz.export.os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        save_quantized(*tiny_llama(QuantSpec(bits=4, group_size=32)), path, overwrite=True)
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_overwrite_replaces_and_refuses_without_flag(tmp_path):
    path = save_quantized(*tiny_llama(QuantSpec(bits=4, group_size=32), seed=1), tmp_path / "ckpt")
    new, result = tiny_llama(QuantSpec(bits=4, group_size=32), seed=2)
    with pytest.raises(ValueError, match="already exists"):
        save_quantized(new, result, path)
    assert_bit_exact(result, load_quantized(save_quantized(new, result, path, overwrite=True)), new)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_bad_inputs(tmp_path):
    model, result = tiny_llama(QuantSpec(bits=4, group_size=32))
    with pytest.raises(ValueError, match="format must be one of"):
        save_quantized(model, result, tmp_path / "x", format="awq")
    with pytest.raises(ValueError, match="QuantResult"):
        save_quantized(model, None, tmp_path / "x")
    other = tiny_models.tiny_opt()
    with pytest.raises(ValueError, match="does not fit this model"):
        save_quantized(other, result, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --- the independent implementation -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_compressed_tensors_decompresses_to_our_weights(tmp_path, spec):
    """compressed-tensors' own PackedQuantizationCompressor, configured from our config.json, unpacks our
    safetensors to exactly the weights our QuantLinear computes with."""
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    model, result = tiny_llama(spec)
    path = save_quantized(model, result, tmp_path / "ckpt")
    qconfig = QuantizationConfig.model_validate(
        json.loads((path / "config.json").read_text())["quantization_config"]
    )
    scheme = qconfig.config_groups["group_0"]
    state = load_file(str(path / "model.safetensors"))
    packed = quantize_linears(model, result, backend="reference")
    for name in result.linears:
        part = {k.removeprefix(name + "."): v for k, v in state.items() if k.startswith(name + ".weight_")}
        weight = PackedQuantizationCompressor.decompress(part, scheme)["weight"]
        layer = packed.get_submodule(name)
        assert torch.equal(weight, layer.dequantized_weight()), (ct.__version__, name)


def test_transformers_loads_our_compressed_tensors_checkpoint(tmp_path):
    """End to end: transformers + compressed-tensors read our folder, decompress it, and compute our logits."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    model, result = tiny_llama(QuantSpec(bits=4, group_size=32))
    path = save_quantized(model, result, tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, ours = loaded(ids).logits.float(), model(ids).logits.float()
    for name, qt in result.linears.items():  # decompressed on the first forward, from float16 scales
        stored = QuantizedTensor(qt.codes, qt.scale.half().float(), qt.zero_point, qt.spec, torch.float16)
        assert torch.equal(loaded.get_submodule(name).weight, dequantize(stored)), name
    torch.testing.assert_close(theirs, ours, atol=1e-3, rtol=1e-3)


def test_transformers_and_asymmetric_compressed_tensors(tmp_path):
    """Asymmetric pack-quantized files (AWQ's usual spec) hold zero points packed along the output dimension,
    as compressed-tensors' own compressor writes them and its decompressor reads them (tested above).
    transformers 5.24 with compressed-tensors 0.20.1 allocates them unpacked and refuses the checkpoint
    ("size mismatch ... weight_zero_point"): an upstream limitation. This test passes (loads and matches) once
    upstream reads them, and records the exact error with the versions until then."""
    ct = pytest.importorskip("compressed_tensors")
    import transformers
    from transformers import AutoModelForCausalLM

    model, result = tiny_llama(QuantSpec(bits=4, symmetric=False, group_size=32))
    path = save_quantized(model, result, tmp_path / "ckpt")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16)
    except RuntimeError as err:
        assert "ignore_mismatched_sizes" in str(err)
        pytest.xfail(
            f"transformers {transformers.__version__} + compressed-tensors {ct.__version__} cannot load "
            f"asymmetric pack-quantized checkpoints: {str(err)[:160]}"
        )
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids).logits.float(), model(ids).logits.float(), atol=1e-3, rtol=1e-3
        )


def test_tied_embedding_is_stored_once_and_retied_on_load(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    result = rtn.quantize_model(model, QuantSpec(bits=4, group_size=32), progress=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    path = save_quantized(model, result, tmp_path / "ckpt")
    keys = set(load_quantized(path).tensors)
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    loaded = load_quantized_model(path, backend="reference")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# --- damaged, incomplete and lying checkpoints ----------------------------------------------------------------

Q_PROJ = "model.layers.1.self_attn.q_proj"


def edit_safetensors(path, edit, keep_metadata=True):
    """Rewrite path/model.safetensors with edit(tensors) (in place on the dict), as a damaged copy would be."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    file = str(path / "model.safetensors")
    with safe_open(file, framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata=metadata if keep_metadata else {"format": "pt"})


def edit_config(path, edit):
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.fixture(params=["compressed-tensors", "gptq"])
def saved(request, tmp_path):
    model, result = tiny_llama(QuantSpec(bits=4, group_size=32))
    return save_quantized(model, result, tmp_path / "ckpt", format=request.param), request.param


def drop_layer(tensors):
    for key in [k for k in tensors if k.startswith(Q_PROJ + ".")]:
        del tensors[key]


@pytest.mark.parametrize("keep_metadata", [True, False], ids=["qviz-file", "foreign-file"])
def test_a_missing_layer_is_refused_by_both_load_paths(saved, keep_metadata):
    """The issue's example: without one layer's tensors, load_quantized returned 13 of 14 linears."""
    path, _ = saved
    edit_safetensors(path, drop_layer, keep_metadata)
    if keep_metadata:  # qviz recorded which linears it saved: both paths read that
        message = rf"saved with 14 quantized linears, but 1 of them have no tensors, e.g. \['{Q_PROJ}'\]\."
        with pytest.raises(ValueError, match=message):
            load_quantized(path)
    else:  # another tool's file: the model built from config.json misses the weight
        message = rf"does not match its config.json: missing \['{Q_PROJ}.weight'\]"
    with pytest.raises(ValueError, match=message):
        load_quantized_model(path, backend="reference")


@pytest.mark.parametrize(
    "drop, message",
    [
        ({"compressed-tensors": "weight_scale", "gptq": "scales"}, r"layer {name}: .* needs the tensors .* missing \['{part}'\]"),
        ({"compressed-tensors": "weight_packed", "gptq": "qweight"}, r"\['{name}'\] have quantization tensors but no {part}"),
    ],
    ids=["no-scales", "no-packed-weight"],
)  # fmt: skip
def test_an_incomplete_layer_names_the_layer_and_the_tensor(saved, drop, message):
    """The issue's example: a checkpoint without weight_scale raised a bare KeyError: 'weight_scale'."""
    path, fmt = saved
    edit_safetensors(path, lambda t: t.pop(f"{Q_PROJ}.{drop[fmt]}"))
    with pytest.raises(ValueError, match=message.format(name=Q_PROJ, part=drop[fmt]) + ".*save it again"):
        load_quantized(path)


def test_truncated_and_missing_files_are_named(saved):
    path, _ = saved
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    for load in (load_quantized, load_quantized_model):
        with pytest.raises(
            ValueError, match=r"ckpt/model.safetensors is not a readable safetensors file .* truncated"
        ):
            load(path)
    (path / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ValueError, match=r"ckpt/config.json is not valid JSON"):
        load_quantized(path)
    weights.unlink()
    with pytest.raises(ValueError, match=r"ckpt/model.safetensors is missing.*save it again"):
        load_quantized(path)
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        load_quantized(path / "nothing-here")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("quantization_config"), "has no quantization_config: not a quantized checkpoint"),
        (lambda c: c["quantization_config"].update(quant_method="awq"), "quant_method must be one of"),
        (lambda c: c["quantization_config"].pop("bits", None)
         or c["quantization_config"].pop("config_groups", None), "quantization_config has no field"),
        (lambda c: c["quantization_config"].update(bits=8)
         or c["quantization_config"].get("config_groups", {"group_0": {"weights": {}}})["group_0"]["weights"]
         .update(num_bits=8), r"layer model\.layers\.\d+\..*: .*8-bit values need"),
    ],
    ids=["no-qconfig", "other-method", "no-bits", "lying-bits"],
)  # fmt: skip
def test_a_config_that_does_not_describe_the_tensors(saved, edit, message):
    path, _ = saved
    edit_config(path, edit)
    with pytest.raises(ValueError, match=message):
        load_quantized(path)


def test_metadata_that_contradicts_the_tensors(tmp_path):
    model, result = tiny_llama(QuantSpec(bits=4, group_size=32))
    path = save_quantized(model, result, tmp_path / "ckpt")
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    file = str(path / "model.safetensors")
    with safe_open(file, framework="pt") as f:
        meta = json.loads(f.metadata()["qviz"])
    meta["spec"]["group_size"] = 16
    save_file(load_file(file), file, metadata={"format": "pt", "qviz": json.dumps(meta)})
    with pytest.raises(ValueError, match="holds INT4 sym g32 codes, but the checkpoint says INT4 sym g16"):
        load_quantized(path)


def test_a_config_of_another_shape_is_refused_with_the_layer(saved):
    path, _ = saved
    edit_config(path, lambda c: c.update(intermediate_size=96))
    with pytest.raises(
        ValueError, match=r"does not match its config.json: model.layers.0.mlp.\w+_proj: the result holds a"
    ):
        load_quantized_model(path, backend="reference")
