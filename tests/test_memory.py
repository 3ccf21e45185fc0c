"""The memory planner against real files and real caches: checkpoints `qviz.export` writes (per tensor, to the
byte), the released GGUF files (per tensor, to the byte) and llama.cpp's Q4_K_M choices in Gemma's, published GGUF
file sizes, transformers' KV cache after a forward pass, the models' own parameter counts; bad input; the figure,
the widget (without a browser) and `qviz fit`."""

import doctest
import math
import tempfile
from pathlib import Path

import pytest
import tiny_models
import torch
from figure_checks import assert_readable
from safetensors import safe_open

import qviz.memory
import qviz.viz.memory
from qviz import cli, rtn
from qviz.export import save_quantized
from qviz.memory import EXAMPLES, GPUS, WeightFormat, gguf_types, plan, tensor_bytes, tensors
from qviz.quant import QuantSpec

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,  # config.json
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)  # fmt: skip


def test_doctests():
    assert doctest.testmod(qviz.memory).failed == 0
    assert doctest.testmod(qviz.viz.memory).failed == 0


def file_bytes_by_module(path) -> dict[str, int]:
    """Bytes of every tensor in a checkpoint's model.safetensors, summed per module ("...q_proj.weight_packed",
    "...q_proj.weight_scale" -> "...q_proj")."""
    out = {}
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            module = key.rsplit(".", 1)[0]
            out[module] = out.get(module, 0) + t.numel() * t.element_size()
    return out


def weight_format(spec: QuantSpec, fmt: str, dtype: torch.dtype) -> WeightFormat:
    name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "float32"}[dtype]
    return WeightFormat(fmt, bits=spec.bits, group_size=spec.group_size, symmetric=spec.symmetric, dtype=name)


CHECKPOINTS = [  # (format, spec, model dtype): every bit width each layout stores, both symmetries, with and without groups
    pytest.param(fmt, QuantSpec(bits=b, symmetric=s, group_size=g), dtype, id=f"{fmt}-b{b}-{'sym' if s else 'asym'}-g{g}-{str(dtype)[6:]}")
    for fmt, b, s, g, dtype in [
        ("compressed-tensors", 4, True, 32, torch.float16),
        ("compressed-tensors", 4, False, 32, torch.float32),
        ("compressed-tensors", 3, False, None, torch.bfloat16),
        ("compressed-tensors", 8, True, 64, torch.float16),
        ("compressed-tensors", 2, False, 16, torch.float32),
        ("gptq", 4, True, 32, torch.float16),
        ("gptq", 3, True, None, torch.float32),
        ("gptq", 8, True, 64, torch.bfloat16),
        ("gptq", 2, True, 32, torch.float16),
    ]
]  # fmt: skip


@pytest.mark.parametrize("fmt, spec, dtype", CHECKPOINTS)
def test_every_tensor_of_a_saved_checkpoint_to_the_byte(tmp_path, fmt, spec, dtype):
    """A tiny Llama (hidden 64, MLP 128, 2 of 4 heads for k/v, lm_head untied) quantized and saved by qviz.export:
    each module's tensors (packed codes, scales, zero points, g_idx, weight_shape; or the float weight) take exactly
    the bytes the planner says. The scales are stored in the model's dtype (GPTQ: float16), as export's default."""
    model = tiny_models.tiny_llama(max_position_embeddings=2048).to(dtype)
    result = rtn.quantize_model(model, spec, progress=False)
    real = file_bytes_by_module(save_quantized(model, result, tmp_path / "ckpt", format=fmt))
    planned = tensor_bytes(model.config, weight_format(spec, fmt, dtype))
    assert real == {name: stored.bytes for name, stored in planned.items()}
    assert {n for n, s in planned.items() if s.quantized} == set(result.linears)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, spec",
    [("compressed-tensors", QuantSpec(bits=4, symmetric=False, group_size=32)),
     ("gptq", QuantSpec(bits=4, group_size=64)), ("compressed-tensors", QuantSpec(bits=8)),
     ("gptq", QuantSpec(bits=3, group_size=32))],
    ids=["ct-int4-asym-g32", "gptq-int4-g64", "ct-int8-per-channel", "gptq-int3-g32"],
)  # fmt: skip
def test_smollm2_checkpoint_to_the_byte(tmp_path, smollm2_fresh, fmt, spec):
    """SmolLM2-135M in bf16, RTN-quantized (the fastest method) and saved: the planner's bytes of every tensor
    equal the file's, quantized linears (scales in bf16; GPTQ's in fp16) and float tensors alike."""
    model = smollm2_fresh[0].to(torch.bfloat16)
    result = rtn.quantize_model(model, spec, progress=False)
    real = file_bytes_by_module(save_quantized(model, result, tmp_path / "ckpt", format=fmt))
    planned = tensor_bytes("smollm2-135m", weight_format(spec, fmt, torch.bfloat16))
    assert real == {name: stored.bytes for name, stored in planned.items()}
    p = plan("smollm2-135m", weight_format(spec, fmt, torch.bfloat16))
    assert p.quantized_weights == sum(real[n] for n in result.linears)
    assert p.weights == sum(real.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_release_gguf_to_the_byte_and_the_file_size(name):
    """From the release's own tensor types (`models.release_types`), the planner's bytes equal every tensor's
    blocks in the released GGUF file. The file is larger by its header alone: metadata, mostly the tokenizer's
    vocabulary (49,152 and 262,144 tokens), which is not weights."""
    from gguf import GGUFReader

    from qviz.models import OFFLINE_MODELS, _gguf_path, gguf_name, release_tensors, release_types

    release, size = release_tensors(name)
    types = release_types(name)
    planned = tensor_bytes(name, types)
    for module in types:
        key = gguf_name(module) if module.startswith("model.layers.") else "token_embd.weight"
        assert planned[module].bytes == release[key].data.nbytes, module
    weights = plan(name, types).weights
    assert weights == sum(t.data.nbytes for t in release.values())
    with tempfile.TemporaryDirectory() as tmp:  # Gemma's file is assembled from its chunk packages
        header = GGUFReader(_gguf_path(OFFLINE_MODELS[name], Path(tmp))).data_offset
    assert size == header + weights  # no padding between these tensors: their sizes are multiples of 32
    assert 0.97 < weights / size < 0.99


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_gguf_file_bytes_within_1_percent_of_the_release_file(name):
    """The tensors plus the estimated header (vocabulary, merges or scores, tensor-info table, other keys,
    padding) come within 1% of the released file's size; the tensors alone are 1.8% and 2.6% short."""
    from transformers import AutoTokenizer

    from qviz.memory import gguf_file_bytes
    from qviz.models import OFFLINE_MODELS, _gguf_path, cached_model_dir, release_types

    types = release_types(name)  # converts on first use: the cache folder holds the tokenizer
    tokenizer = AutoTokenizer.from_pretrained(cached_model_dir(name))
    with tempfile.TemporaryDirectory() as tmp:  # Gemma's file is assembled from its chunk packages
        size = _gguf_path(OFFLINE_MODELS[name], Path(tmp)).stat().st_size
    estimate = gguf_file_bytes(name, types, tokenizer)
    assert abs(estimate - size) < 0.01 * size, (estimate, size)
    assert plan(name, types).weights < 0.99 * size  # the header is what closes the gap


@pytest.mark.slow
def test_gemma_release_is_llamacpp_q4_k_m_as_the_planner_predicts():
    """Gemma-3-270M's file is named Q4_K_M: the planner's llama.cpp rule (Q4_K; Q6_K for attn_v and ffn_down in the
    first and last eighth of the layers and every third between; Q6_K for the tied output; rows of 640 not a
    multiple of 256, so Q4_K -> Q5_0 and Q6_K -> Q8_0) gives every tensor's released type."""
    from qviz.models import release_types

    released = release_types("gemma-3-270m")
    predicted = gguf_types("gemma-3-270m", "Q4_K_M")
    assert {k: predicted[k] for k in released} == released
    assert sorted(set(released.values())) == ["Q4_K", "Q5_0", "Q6_K", "Q8_0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_parameter_count_and_shapes_from_the_config_equal_the_model(name):
    """Every weight the config implies, with its shape, is in the converted model's safetensors, and no other."""
    from qviz.models import cached_model_dir, model_config

    with safe_open(str(cached_model_dir(name) / "model.safetensors"), "pt") as f:
        real = {k.removesuffix(".weight"): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    planned = {n: (rows, cols) if rows > 1 else (cols,) for n, (_, _, rows, cols) in tensors(name).items()}
    assert planned == real
    assert plan(name).parameters == sum(math.prod(s) for s in real.values())
    assert plan(model_config(name)).parameters == plan(name).parameters  # a transformers config works too


def test_parameter_count_of_tiny_models_from_their_configs():
    for model in (tiny_models.tiny_llama(), tiny_models.tiny_gemma3()):
        assert plan(model.config).parameters == sum(p.numel() for p in model.parameters())


def test_smollm2_config_as_a_dict_matches_its_known_parameter_count():
    assert plan(SMOLLM2).parameters == 134_515_008  # the converted model's count (test above)


@pytest.mark.parametrize(
    "make", [tiny_models.tiny_llama, tiny_models.tiny_gemma3], ids=["llama", "gemma3-sliding"]
)
@pytest.mark.parametrize("context, batch", [(3, 1), (10, 2)])
def test_kv_cache_equals_transformers_cache_after_a_forward_pass(make, context, batch):
    """The FP16 cache transformers holds after reading `context` tokens: every layer's K and V; tiny Gemma's
    sliding-window layers (window 4) keep 3 tokens once the context is longer."""
    model = make().to(torch.float16)
    with torch.no_grad():
        cache = model(torch.randint(0, 128, (batch, context)), use_cache=True).past_key_values
    real = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert plan(model.config, "fp16", context=context, batch=batch).kv_cache == real


def test_quantized_kv_cache_is_smaller_in_order_of_its_bits():
    kv = {
        f: plan("llama-2-7b", "Q4_K_M", context=8192, kv=f).kv_cache for f in ("fp16", "int8", "int4", "int2")
    }
    assert kv["fp16"] > kv["int8"] > kv["int4"] > kv["int2"]
    assert kv["fp16"] == 8192 * 512 * 1024  # 2 x 32 layers x 32 heads x 128 x 2 bytes = 512 KiB a token
    assert 0.25 < kv["int4"] / kv["fp16"] < 0.27  # 4 bits plus FP16 scales (qviz.kvcache)


PUBLISHED = [  # llama.cpp GGUF file sizes on the model cards (TheBloke, bartowski), 1 GB = 1e9 bytes
    ("llama-2-7b", "Q4_0", 3.83), ("llama-2-7b", "Q4_K_M", 4.08), ("llama-2-7b", "Q5_K_M", 4.78),
    ("llama-2-7b", "Q6_K", 5.53), ("llama-2-7b", "Q8_0", 7.16), ("llama-2-70b", "Q4_0", 38.87),
    ("llama-2-70b", "Q4_K_M", 41.42), ("llama-2-70b", "Q5_K_M", 48.75), ("llama-3-70b", "Q4_K_M", 42.52),
]  # fmt: skip


@pytest.mark.parametrize("model, fmt, gb", PUBLISHED, ids=[f"{m}-{f}" for m, f, _ in PUBLISHED])
def test_gguf_weights_match_published_file_sizes(model, fmt, gb):
    """A published size is rounded to 0.01 GB and includes the file's header (the tokenizer: under 1 MB for a 32k
    vocabulary, about 8 MB for 128k): the weights alone lie between 0.015 GB below it and 0.005 GB above."""
    assert -0.005 <= gb - plan(model, fmt).weights / 1e9 <= 0.015


def test_worked_examples():
    """The two claims of the module doc, as numbers."""
    int4 = WeightFormat("gptq", bits=4, group_size=128)
    p = plan("llama-2-7b", int4, context=4096)
    # 4 bits + an fp16 scale and a 4-bit (GPTQ: stored even when symmetric) zero point per 128 weights
    assert 3.8e9 < p.weights < 4.0e9 and p.bits_per_weight == pytest.approx(4 + 16 / 128 + 4 / 128, abs=0.01)
    assert not p.fits("6 GB") and p.fits("8 GB") and p.headroom("6 GB") < 0
    assert plan("llama-2-7b", int4, context=1024).fits("6 GB")
    p = plan("llama-3-70b", "Q4_K_M", context=8192)
    assert p.weights / 1e9 == pytest.approx(42.5, abs=0.05) and p.bits_per_weight == pytest.approx(
        4.8, abs=0.03
    )
    assert p.kv_cache == 8192 * 2 * 80 * 8 * 128 * 2  # GQA: 8 KV heads of 128, 320 KiB a token
    assert p.fits("48 GB (A6000, L40S)") and not p.fits("40 GB (A100 40GB)")


def test_parts_add_up_and_scale_with_context_and_batch():
    a = plan("llama-2-7b", "nf4", context=1024, batch=1)
    b = plan("llama-2-7b", "nf4", context=2048, batch=2)
    assert sum(a.parts.values()) == a.total
    assert b.kv_cache == 4 * a.kv_cache and b.weights == a.weights and b.overhead == a.overhead == 2**30
    assert b.activations > 3.9 * a.activations


@pytest.mark.parametrize(
    "fmt, bits",
    [("bf16", 16), ("float32", 32), ("fp8", 8), ("nf4", 4.5), (WeightFormat("nf4", double_quant=True), 4.127),
     ("mxfp4", 4.25), ("nvfp4", 4.5), ("Q8_0", 8.5), ("Q4_0", 4.5), (WeightFormat(bits=8, group_size=None), 8)],
    ids=["bf16", "float32", "fp8", "nf4", "nf4-dq", "mxfp4", "nvfp4", "q8_0", "q4_0", "int8-channel"],
)  # fmt: skip
def test_bits_per_weight_of_each_format(fmt, bits):
    """The textbook bits per weight, from the documented block layouts (qviz.microscaling's for NF4 and FP4)."""
    assert plan(70_000_000_000, fmt).bits_per_weight == pytest.approx(bits, abs=0.01)


def test_a_bare_parameter_count_is_parameters_times_bits():
    p = plan(70_000_000_000, "float32")
    assert (p.weights, p.kv_cache, p.activations) == (280e9, 0, 0)  # "70B parameters at FP32 = 280 GB"
    assert plan(70_000_000_000, WeightFormat(bits=4, group_size=128)).weights / 1e9 == pytest.approx(
        36.1, abs=0.05
    )


def test_which_tensors_each_format_quantizes():
    hf, gguf = tensor_bytes("llama-2-7b", "nf4"), tensor_bytes("llama-2-7b", "Q4_K_M")
    assert not hf["model.embed_tokens"].quantized and not hf["lm_head"].quantized
    assert hf["model.layers.0.mlp.up_proj"].quantized and not hf["model.norm"].quantized
    assert (
        gguf["model.embed_tokens"].quantized
        and gguf["lm_head"].quantized
        and not gguf["model.norm"].quantized
    )
    types = gguf_types("llama-2-7b", "Q4_K_M")
    assert (types["lm_head"], types["model.embed_tokens"], types["model.norm"]) == ("Q6_K", "Q4_K", "F32")
    downs = [types[f"model.layers.{i}.mlp.down_proj"] for i in range(32)]
    assert [i for i, t in enumerate(downs) if t == "Q6_K"] == [
        0,
        1,
        2,
        3,
        6,
        9,
        12,
        15,
        18,
        21,
        24,
        27,
        28,
        29,
        30,
        31,
    ]


BAD = [
    (lambda: WeightFormat(bits=0), r"bits must be one of \(2, 3, 4, 5, 6, 7, 8\) for the compressed-tensors layout, got 0"),
    (lambda: WeightFormat("gptq", bits=5), r"bits must be one of \(2, 3, 4, 8\) for the gptq layout"),
    (lambda: WeightFormat("int4"), "unknown format 'int4': choose one of compressed-tensors, gptq"),
    (lambda: WeightFormat(group_size=0), "group_size must be a positive integer"),
    (lambda: WeightFormat(dtype="fp64"), "dtype must be one of"),
    (lambda: plan(SMOLLM2, WeightFormat(group_size=128)), r"group_size 128 needs rows in multiples of 128: "
     r"model.layers.0.self_attn.q_proj has in_features 576 \(\[16, 32, 64, 96, 192\] divide it\)"),
    (lambda: plan(dict(SMOLLM2, hidden_size=600), "mxfp4"), "MXFP4 needs rows in multiples of 32: .* in_features 600"),
    (lambda: plan("llama-2-7b", context=-1), "context must be a positive integer, got -1"),
    (lambda: plan("llama-2-7b", batch=0), "batch must be a positive integer"),
    (lambda: plan("llama-2-7b", kv="int16"), "kv must be one of"),
    (lambda: plan("llama-2-7b", overhead_gib=-1), "overhead_gib must be a number >= 0"),
    (lambda: plan("smollm2-1.7b"), "unknown model 'smollm2-1.7b': use an offline model .*smollm2-135m.*llama-2-7b"),
    (lambda: plan({"hidden_size": 64}), "the config needs positive integers"),
    (lambda: plan(0, "bf16"), "parameter count must be a positive integer"),
    (lambda: plan(SMOLLM2, {"model.embed_tokens": "Q8_0"}), "the GGUF types given have no entry for"),
    (lambda: plan("llama-2-7b").fits("RTX 9090"), "unknown GPU 'RTX 9090'"),
    (lambda: plan("llama-2-7b").fits(-8), "GPU memory must be a positive number of GB"),
]  # fmt: skip


@pytest.mark.parametrize("call, message", BAD, ids=[
    "bits-0", "gptq-bits-5", "unknown-format", "group-0", "dtype", "group-not-dividing", "mxfp4-block",
    "negative-context", "batch-0", "kv", "overhead", "unknown-model", "config-incomplete", "count-0",
    "gguf-types-incomplete", "unknown-gpu", "negative-memory"])  # fmt: skip
def test_bad_input_says_what_is_allowed(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- figure, widget, command line ----------------------------------------------------------------------------


def test_figure_stacks_the_parts_in_gib_with_gpu_lines():
    plans = {"7B INT4": plan("llama-2-7b", "gptq"), "7B BF16": plan("llama-2-7b", "bf16")}
    fig = qviz.viz.memory.memory_figure(plans, mine=12)
    assert_readable(fig)
    assert [t.name for t in fig.data] == list(plans["7B BF16"].parts)
    assert all(t.orientation == "h" and list(t.y) == list(plans) for t in fig.data)
    assert sum(t.x[1] for t in fig.data) == pytest.approx(plans["7B BF16"].total / 2**30)
    lines = [s.x0 for s in fig.layout.shapes]
    assert lines == [GPUS[g] for g in qviz.viz.memory.FIGURE_GPUS] + [12]
    assert fig.layout.annotations[-1].text == "my GPU: 12 GB" and fig.layout.barmode == "stack"
    assert "GiB" in fig.layout.xaxis.title.text and fig.layout.xaxis.range[1] > plans["7B BF16"].total / 2**30
    one = qviz.viz.memory.memory_figure(plans["7B INT4"])
    assert "llama-2-7b" in one.layout.title.text and "GiB" in one.layout.title.text
    with pytest.raises(ValueError, match="unknown GPUs"):
        qviz.viz.memory.memory_figure(plans, gpus=("9 GB",))


def test_widget_draws_the_plan_it_names_and_reports_bad_choices():
    from qviz.widgets.memory import FORMAT_CHOICES, MemoryPlanner

    w = MemoryPlanner("llama-2-7b", memory_gb=6)
    fig = w.fig
    w.set(format="GGUF Q4_K_M", context=8192, batch=2, kv="int8")
    assert w.fig is fig  # updated in place
    expected = plan("llama-2-7b", FORMAT_CHOICES["GGUF Q4_K_M"], context=8192, batch=2, kv="int8")
    assert w.plan == expected
    assert [t.x[0] for t in fig.data] == pytest.approx([v / 2**30 for v in expected.parts.values()])
    assert "does not fit 6 GB" in w.verdict.value
    w.set(memory=24)
    assert "fits 24 GB" in w.verdict.value and fig.layout.shapes[-1].x0 == 24
    w.set(model="llama-3-70b")
    assert "llama-3-70b" in fig.layout.title.text and fig.layout.xaxis.range[1] > expected.total / 2**30
    w.set(model="llama-2-7b", format="MXFP4")
    assert "cannot plan" not in w.verdict.value


@pytest.mark.slow
def test_widget_survives_every_choice():
    """Every model, format and KV format (sliders at both ends): a number or a message, never an exception; the
    group size 128 on SmolLM2's rows of 576 is named, with the bars at zero."""
    from qviz.widgets.memory import MemoryPlanner

    w = MemoryPlanner()
    for model in w.model.options:
        w.set(model=model, context=w.context.options[-1], batch=64)
        for fmt in w.format.options:
            w.format.value = fmt
            assert all(math.isfinite(v) for t in w.fig.data for v in t.x)
        for kv in w.kv.options:
            w.kv.value = kv
    w.set(model="smollm2-135m", format="INT4 g128 (GPTQ)")
    assert "cannot plan" in w.verdict.value and "576" in w.verdict.value
    assert all(t.x[0] == 0 for t in w.fig.data)
    assert (
        "cannot plan" in MemoryPlanner("smollm2-135m").verdict.value
    )  # the default format does not fit its rows


def test_cli_fit_prints_the_breakdown_and_the_gpus(capsys):
    argv = ["fit", "llama-2-7b", "--format", "gptq", "--bits", "4", "--group-size", "128", "--context", "4096",
            "--memory", "6"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    p = plan("llama-2-7b", WeightFormat("gptq", bits=4, group_size=128), context=4096)
    total = next(line for line in out.splitlines() if line.strip().startswith("total")).split()
    assert total == ["total", f"{p.total / 1e9:.2f}", f"{p.total / 2**30:.2f}"]
    assert "fits: 8 GB" in out and "does not fit: 6 GB (0.9 GiB short)" in out
    assert "your GPU: does not fit 6 GB" in out and "4.16 bits" in out


def test_cli_fit_gguf_and_bad_input(capsys):
    assert cli.main(["fit", "llama-3-70b", "--format", "Q4_K_M", "--context", "8192"]) == 0
    assert "42.51" in capsys.readouterr().out
    assert cli.main(["fit", "llama-2-7b", "--bits", "0"]) == 2
    assert "bits must be one of" in capsys.readouterr().err
    assert cli.main(["fit", "llama-2-7b", "--context", "-5"]) == 2
    assert "context must be a positive integer" in capsys.readouterr().err


def test_example_configs_are_the_published_ones():
    assert plan("llama-2-7b").parameters == 6_738_415_616  # Llama-2-7B
    assert plan("llama-2-70b").parameters == 68_976_648_192
    assert plan("llama-3-70b").parameters == 70_553_706_496
    assert set(EXAMPLES) == {"llama-2-7b", "llama-2-70b", "llama-3-70b"}
