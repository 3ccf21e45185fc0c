"""qviz.recipes: a run's llm-compressor recipe parses, carries the run's spec and options exactly (checked against
the checkpoint config qviz.export writes and the module names of real models), says in comments what it cannot
carry, refuses runs it cannot express, and (slow, where llm-compressor's own venv exists) parses in llm-compressor."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import tiny_models
import yaml
from transformers import LlamaConfig

import qviz
from qviz import rtn
from qviz.export import llmcompressor_recipe, save_quantized, write_llmcompressor_recipe
from qviz.quant import QuantSpec
from qviz.runs import Run

GPTQ = Run("smollm2-135m", "gptq", QuantSpec(bits=4, group_size=64), n_calib=16, calib_len=256)
AWQ = Run("smollm2-135m", "awq", QuantSpec(bits=4, symmetric=False, group_size=64))


@pytest.fixture(scope="module")
def llama():
    return tiny_models.tiny_llama(0)


def modifiers(text: str) -> dict:
    return yaml.safe_load(text)["quant_stage"]["quant_modifiers"]


SPECS = [
    pytest.param(QuantSpec(bits=b, symmetric=s, group_size=g), id=f"b{b}-{'sym' if s else 'asym'}-g{g}")
    for b, s, g in [(4, True, 32), (4, False, 64), (8, True, None), (3, False, 32), (2, True, 16)]
] + [pytest.param(QuantSpec(bits=4, granularity="tensor"), id="b4-sym-tensor")]


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
@pytest.mark.parametrize("spec", SPECS)
def test_weights_and_ignore_are_what_the_export_writes(spec, method, tmp_path):
    """The oracle is the config.json qviz.export.save_quantized writes for the same spec and model: the recipe's
    weight arguments are those of its config_groups, and its ignore list is the same."""
    model = tiny_models.tiny_llama(0)  # its own: RTN rounds it in place
    exported = save_quantized(model, rtn.quantize_model(model, spec, progress=False), tmp_path / "ckpt")
    qconfig = json.loads((exported / "config.json").read_text())["quantization_config"]
    stage = modifiers(llmcompressor_recipe(Run("m", method, spec), model))
    quantizer = stage["GPTQModifier" if method == "gptq" else "QuantizationModifier"]
    group = quantizer["config_groups"]["group_0"]
    assert group["targets"] == qconfig["config_groups"]["group_0"]["targets"] == ["Linear"]
    theirs = qconfig["config_groups"]["group_0"]["weights"]
    if spec.granularity == "tensor":  # the export stores the one scale on every row: strategy "channel"
        theirs = {**theirs, "strategy": "tensor"}
    assert group["weights"] == {k: theirs[k] for k in group["weights"]}
    assert {"num_bits", "symmetric", "strategy", "type"} <= set(group["weights"])
    assert group["weights"].get("group_size") == spec.group_size
    assert quantizer["ignore"] == qconfig["ignore"] == ["lm_head"]
    assert list(stage) == {"rtn": ["QuantizationModifier"], "gptq": ["GPTQModifier"],
                           "awq": ["AWQModifier", "QuantizationModifier"]}[method]  # fmt: skip


def test_gptq_options_map_to_the_modifier(llama):
    stage = modifiers(llmcompressor_recipe(GPTQ, llama))["GPTQModifier"]
    assert (stage["dampening_frac"], stage["block_size"], stage["actorder"]) == (0.01, 128, "static")
    run = Run("m", "gptq", GPTQ.spec, options=dict(damp=0.1, block_size=32, act_order=False, batch_size=4))
    text = llmcompressor_recipe(run, llama)
    stage = modifiers(text)["GPTQModifier"]
    # act-order off must be said: left out, the modifier's default is "static"
    assert (stage["dampening_frac"], stage["block_size"], stage["actorder"]) == (0.1, 32, None)
    assert "actorder: null" in text
    assert yaml.safe_load(text)["calibration"]["oneshot"]["batch_size"] == 4
    assert "true_sequential=True has no equivalent" in text  # qviz's default, said where it is not carried
    off = Run(
        "m", "gptq", GPTQ.spec, options=dict(true_sequential=False, act_order=False, static_groups=False)
    )
    text = llmcompressor_recipe(off, llama)
    assert (
        "true_sequential" not in text.split("qviz_run:")[0]
        and "static_groups=False has no equivalent" in text
    )


def test_calibration_is_what_oneshot_takes(llama):
    recipe = yaml.safe_load(llmcompressor_recipe(GPTQ, llama))
    oneshot = recipe["calibration"]["oneshot"]
    # qviz prefixes every window with BOS: the rows llm-compressor gets are one token longer
    assert oneshot == {
        "num_calibration_samples": 16,
        "max_seq_length": 257,
        "shuffle_calibration_samples": False,
    }
    assert "calib_windows(tokenizer, 'britannica', seqlen=256, n=16)" in recipe["calibration"]["dataset"]
    no_bos = Run("m", "gptq", GPTQ.spec, calib_len=256, options=dict(bos_token_id=None))
    assert (
        yaml.safe_load(llmcompressor_recipe(no_bos, llama))["calibration"]["oneshot"]["max_seq_length"] == 256
    )
    assert yaml.safe_load(llmcompressor_recipe(Run("m", "rtn"), llama))["calibration"] is None
    assert recipe["qviz_run"]["spec"]["group_size"] == 64 and recipe["qviz_run"]["method"] == "gptq"


@pytest.mark.parametrize(
    "model, norms",
    [
        pytest.param(tiny_models.tiny_llama, ("input_layernorm", "post_attention_layernorm"), id="llama"),
        pytest.param(tiny_models.tiny_gemma3, ("input_layernorm", "pre_feedforward_layernorm"), id="gemma3"),
    ],
)
def test_awq_mappings_name_the_scale_groups_of_the_model(model, norms):
    """Each mapping's regexes (read as llm-compressor reads them: 're:' then re.match on module names) pick one
    previous op and its linears in every decoder layer of a real transformers model."""
    m = model(0)
    text = llmcompressor_recipe(AWQ, m)
    awq = modifiers(text)["AWQModifier"]
    assert (awq["duo_scaling"], awq["n_grid"]) == (
        False,
        21,
    )  # 21 points i/20 hold qviz's 20 α = i/20, i < 20
    names = [n for n, _ in m.named_modules()]
    layers = m.config.num_hidden_layers

    def matches(pattern):
        assert pattern.startswith("re:")
        return [n for n in names if re.match(pattern[3:], n)]

    smooth = [matches(mapping["smooth_layer"]) for mapping in awq["mappings"]]
    assert [s[0].split(".", 3)[-1] for s in smooth] == [norms[0], "self_attn.v_proj", norms[1], "mlp.up_proj"]
    assert all(len(s) == layers for s in smooth)
    balance = [sum((matches(p) for p in mapping["balance_layers"]), []) for mapping in awq["mappings"]]
    assert [len(b) // layers for b in balance] == [3, 1, 2, 1]
    assert "search_tokens=512 has no equivalent" in text and "clip=True" in text


def test_mse_clip_is_the_mse_observer_over_the_same_ratios(llama):
    weights = modifiers(
        llmcompressor_recipe(Run("m", "rtn", QuantSpec(bits=4, group_size=32, mse_clip=True)), llama)
    )
    args = weights["QuantizationModifier"]["config_groups"]["group_0"]["weights"]
    assert args["observer"] == "memoryless_mse"
    kw = args["observer_kwargs"]
    # llm-compressor tries p = 1 - i/grid for i < int(maxshrink * grid): qviz's linspace(1, 0.5, 51)
    ratios = [1 - i / kw["grid"] for i in range(int(kw["maxshrink"] * kw["grid"]))]
    assert (
        len(ratios) == 51 and ratios[-1] == pytest.approx(0.5) and kw["norm"] == 2.0 and kw["patience"] >= 51
    )


@pytest.mark.parametrize(
    "run, message",
    [
        pytest.param(Run("m", "qat"), "QAT trains", id="qat"),
        pytest.param(Run("m", "gptq", n_layers=2), "first 2 layers", id="n_layers"),
        pytest.param(Run("m", "rtn", QuantSpec(bits=4, restricted_range=True)), "restricted grid", id="restricted"),
        pytest.param(Run("m", "rtn", QuantSpec(bits=4, clip_ratio=0.9)), "clip_ratio=0.9", id="clip-ratio"),
        pytest.param(Run("m", "rtn", QuantSpec(bits=16)), "not 16", id="16-bit"),
        pytest.param(Run("m", "gptq", GPTQ.spec, options=dict(static_groups=False)), "processing order",
                     id="dynamic-groups"),
        pytest.param(Run("m", "gptq", options=dict(dampening=0.1)), "unknown GPTQ options", id="gptq-option"),
        pytest.param(Run("m", "gptq", options=dict(damp=-1)), "damp must be", id="gptq-bad-value"),
        pytest.param(Run("m", "awq", options=dict(alpha=0.5)), "unknown AWQ options", id="awq-option"),
        pytest.param("gptq", "qviz.runs.Run", id="not-a-run"),
    ],
)  # fmt: skip
def test_runs_it_cannot_express_are_refused(llama, run, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        llmcompressor_recipe(run, llama)
    target = tmp_path / "recipe.yaml"
    target.write_text("old")
    with pytest.raises(ValueError, match=message):
        write_llmcompressor_recipe(run, target, llama, overwrite=True)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["recipe.yaml"]


def test_writing_is_atomic_and_does_not_overwrite_by_default(llama, tmp_path):
    path = write_llmcompressor_recipe(GPTQ, tmp_path / "sub" / "recipe.yaml", llama)
    assert path.read_text() == llmcompressor_recipe(GPTQ, llama)
    with pytest.raises(ValueError, match="already exists"):
        write_llmcompressor_recipe(AWQ, path, llama)
    write_llmcompressor_recipe(AWQ, path, llama, overwrite=True)
    assert "AWQModifier" in path.read_text() and os.listdir(path.parent) == ["recipe.yaml"]


def test_a_config_alone_is_enough():
    """Without a model, the recipe builds the run's model from its config on the meta device: nothing is read."""
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    assert llmcompressor_recipe(AWQ, config) == llmcompressor_recipe(AWQ, tiny_models.tiny_llama(0))


GOLDEN = """\
# llm-compressor recipe for the qviz run GPTQ INT4 sym g64 of smollm2-135m
# written by qviz.export.llmcompressor_recipe (qviz {version}) for llm-compressor 0.14.
# llm-compressor reads only quant_stage; `calibration` holds oneshot's data arguments:
#   oneshot(model=MODEL, recipe=THIS_FILE, dataset=WINDOWS, **calibration['oneshot'])
# Options with no llm-compressor equivalent are comments beside the nearest field.
quant_stage:
  quant_modifiers:
    # true_sequential=True has no equivalent: qviz gives each group of a layer's linears (q/k/v, o, gate/up,
    #   down) the Hessian of the inputs the groups before it produce once quantized; llm-compressor's
    #   sequential pipeline takes every Hessian of a layer from one pass (qviz's true_sequential=False). Both
    #   feed each quantized layer's outputs to the next
    GPTQModifier:
      # every Linear is quantized but these: the ones outside the decoder layers, which qviz leaves in float
      #   (the ignore list of the config.json qviz.export.save_quantized writes)
      ignore: [lm_head]
      config_groups:
        group_0:
          targets: [Linear]
          # the same grid as qviz's INT4 sym g64: each group's range [min, max] widened to include 0; scale =
          #   absmax / 7.5, codes -8..7
          weights:
            num_bits: 4
            type: int
            symmetric: true
            strategy: group
            group_size: 64
      # damp=0.01: λ = damp · mean(diag H) added to H's diagonal, as qviz. Where Cholesky still fails qviz
      #   retries with 10x the damping; llm-compressor rounds that layer to nearest (RTN) instead
      dampening_frac: 0.01
      block_size: 128
      # act_order=True, static_groups=True: columns by descending diag(H), each group's qparams from the
      #   original weights
      actorder: static
# not read by llm-compressor: pass `oneshot` below to oneshot() with the same windows (qviz's calibration
#   text; at scale, any ordinary prose of the same size)
calibration:
  dataset: '16 windows of BOS + 256 tokens: qviz.data.calib_windows(tokenizer, ''britannica'', seqlen=256, n=16), as input_ids'
  oneshot:
    num_calibration_samples: 16
    max_seq_length: 257
    shuffle_calibration_samples: false
# the run this recipe was written from (qviz.runs.Run's fields)
qviz_run:
  model: smollm2-135m
  method: gptq
  spec:
    bits: 4
    symmetric: true
    group_size: 64
    granularity: group
    restricted_range: false
    clip_ratio: 1.0
    mse_clip: false
  calib: britannica
  n_calib: 16
  calib_len: 256
  options: {{}}
  n_layers: null
"""


def test_golden_recipe(llama):
    assert llmcompressor_recipe(GPTQ, llama) == GOLDEN.format(version=qviz.__version__)


def _peer_python() -> Path | None:
    """llm-compressor's own venv, as the README sets it up (peer-venv beside or inside the checkout), or
    $QVIZ_PEER_PYTHON."""
    root = Path(__file__).resolve().parents[1]
    candidates = [
        os.environ.get("QVIZ_PEER_PYTHON"),
        root / "peer-venv/bin/python",
        root.parent / "peer-venv/bin/python",
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


PARSE = """
import json, sys
from compressed_tensors.utils import match_named_modules
from llmcompressor.recipe import Recipe
from transformers import LlamaConfig, LlamaForCausalLM

plain = lambda v: None if v is None else str(getattr(v, "value", v))  # enums and strings alike
model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2))
out = {}
for path in sys.argv[1:]:
    mods = {}
    for m in Recipe.create_instance(path).modifiers:
        d = {k: getattr(m, k) for k in ("dampening_frac", "block_size", "duo_scaling", "n_grid", "ignore")
             if hasattr(m, k)}
        if hasattr(m, "actorder"):
            d["actorder"] = plain(m.actorder)
        if getattr(m, "mappings", None):  # the modules each regex selects, as llm-compressor matches them
            d["mappings"] = [[x.smooth_layer, list(x.balance_layers)] for x in m.mappings]
            d["matched"] = [[len(list(match_named_modules(model, [x.smooth_layer]))),
                             len(list(match_named_modules(model, x.balance_layers)))] for x in m.mappings]
        if hasattr(m, "resolve_quantization_config"):
            w = m.resolve_quantization_config().config_groups["group_0"].weights
            d["weights"] = [w.num_bits, w.symmetric, plain(w.strategy), w.group_size, plain(w.actorder),
                            w.observer]
        mods[type(m).__name__] = d
    out[path] = mods
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_llmcompressor_parses_the_recipe(llama, tmp_path):
    """llm-compressor itself (its Recipe loader, in its own venv) reads every field as the recipe states it."""
    python = _peer_python()
    if python is None:
        pytest.skip("no llm-compressor venv (README: python -m venv peer-venv && peer-venv/bin/pip install "
                    "torch==2.13.0 llmcompressor==0.14.0.1), nor $QVIZ_PEER_PYTHON")  # fmt: skip
    runs = {
        "gptq": GPTQ,
        "gptq-off": Run(
            "m", "gptq", QuantSpec(bits=4, group_size=32), options=dict(act_order=False, damp=0.1)
        ),
        "awq": AWQ,
        "rtn": Run("m", "rtn", QuantSpec(bits=8, mse_clip=True)),
    }
    paths = {
        k: str(write_llmcompressor_recipe(run, tmp_path / f"{k}.yaml", llama)) for k, run in runs.items()
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(python), "-c", PARSE, *paths.values()], capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip
    if proc.returncode and "No module named 'llmcompressor'" in proc.stderr:
        pytest.skip(f"{python} has no llmcompressor")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.split("RESULT", 1)[1])
    for key, run in runs.items():
        recipe = modifiers(Path(paths[key]).read_text())
        parsed = got[paths[key]]
        assert list(parsed) == list(recipe), key  # the modifiers, in order
        for name, fields in recipe.items():
            for field in ("dampening_frac", "block_size", "duo_scaling", "n_grid", "ignore", "actorder"):
                if field in fields:
                    assert parsed[name][field] == fields[field], (key, name, field)
            if "mappings" in fields:
                assert parsed[name]["mappings"] == [
                    [m["smooth_layer"], m["balance_layers"]] for m in fields["mappings"]
                ]
                # 2 layers: one norm (or linear) and its 3, 1, 2, 1 linears in each
                assert parsed[name]["matched"] == [[2, 6], [2, 2], [2, 4], [2, 2]]
            if "config_groups" in fields:
                s = run.spec
                actorder = parsed[name].get("actorder")
                observer = "memoryless_mse" if s.mse_clip else "memoryless_minmax"
                assert parsed[name]["weights"] == [s.bits, s.symmetric, s.granularity, s.group_size, actorder,
                                                   observer], (key, name)  # fmt: skip
    assert got[paths["gptq"]]["GPTQModifier"]["weights"][4] == "static"
    assert got[paths["gptq-off"]]["GPTQModifier"]["weights"][4] is None
