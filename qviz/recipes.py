"""Hand a qviz run to llm-compressor: the recipe (YAML) that asks its `oneshot` for the same quantization, for
models a laptop cannot hold (docs/SCALE.md walks the path to 70B).

    run = Run("smollm2-135m", "gptq", QuantSpec(bits=4, group_size=64), n_calib=16, calib_len=256)
    write_llmcompressor_recipe(run, "recipe.yaml")
    # in llm-compressor's environment:
    #   oneshot(model=..., recipe="recipe.yaml", dataset=..., num_calibration_samples=16, max_seq_length=257,
    #           shuffle_calibration_samples=False)

What maps to what (llm-compressor 0.14's field names; `LLMCOMPRESSOR` is the version the recipe was checked with):

    qviz                                    llm-compressor
    QuantSpec bits / symmetric              weights.num_bits / weights.symmetric (type int)
    granularity group, group_size           weights.strategy group, group_size (channel, tensor likewise)
    mse_clip                                weights.observer memoryless_mse, the same ratios 1, 0.99, ..., 0.5
    the linears of the decoder layers       targets [Linear] less `ignore`: every other Linear (lm_head), the
                                            same list qviz.export.save_quantized writes into config.json
    rtn                                     QuantizationModifier (data-free)
    gptq damp, block_size                   GPTQModifier dampening_frac, block_size
    gptq act_order (+ static_groups)        actorder static (act-order off: null)
    awq (AWQConfig)                         AWQModifier(duo_scaling false, n_grid, mappings from qviz.arch's
                                            scale groups) + QuantizationModifier
    Run calib, n_calib, calib_len           oneshot's num_calibration_samples, max_seq_length (+ BOS), no shuffle

An option without an equivalent is written as a comment beside the nearest field, never dropped in silence; a
run whose *grid* llm-compressor cannot produce (restricted_range, a fixed clip_ratio, more than 8 bits, GPTQ's
dynamic groups under act-order) or that it cannot run at all (QAT, n_layers) raises ValueError. llm-compressor
reads only the `*_stage` keys of the file: `calibration` (oneshot's data arguments) and `qviz_run` (the run the
recipe came from) are there for the reader and for `bench/peer_recipe_llmcompressor.py`.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import tempfile
import textwrap
from dataclasses import asdict, fields
from pathlib import Path

import yaml
from torch import nn

from . import __version__, awq, gptq
from .arch import decoder_linears, family_of
from .pack import LAYOUT_BITS
from .runs import Run

__all__ = ["LLMCOMPRESSOR", "llmcompressor_recipe", "write_llmcompressor_recipe"]

# the llm-compressor whose modifiers and fields these recipes use (bench/RESULTS_RECIPE.md)
LLMCOMPRESSOR = "0.14"
_GPTQ_RUN_OPTIONS = ("true_sequential", "batch_size", "bos_token_id")  # gptq.quantize_model's, not GPTQ's


def _skeleton(run: Run, model) -> nn.Module:
    """The run's model as modules only: `model` itself, or built from its config on the meta device (no weights
    read or allocated; `qviz.models.model_config` reads the config of run.model)."""
    if isinstance(model, nn.Module):
        return model
    import torch
    from transformers import AutoModelForCausalLM

    if model is None:
        from .models import model_config

        model = model_config(run.model)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model)


def _weights(spec) -> tuple[dict, list[str]]:
    """compressed-tensors' QuantizationArgs for `spec`, and the notes on how its grid matches qviz's."""
    if spec.bits not in LAYOUT_BITS["compressed-tensors"]:
        raise ValueError(f"llm-compressor packs integer weights of {LAYOUT_BITS['compressed-tensors']} bits, "
                         f"not {spec.bits}")  # fmt: skip
    if spec.restricted_range or spec.clip_ratio != 1.0:
        raise ValueError(
            "llm-compressor's observers choose no restricted grid (scale = absmax / qmax) and no fixed clip "
            f"ratio: {spec.label} with clip_ratio={spec.clip_ratio} cannot be handed over; use the full-range "
            "grid (restricted_range=False) and clip_ratio=1.0, or mse_clip=True"
        )
    weights = {
        "num_bits": spec.bits,
        "type": "int",
        "symmetric": spec.symmetric,
        "strategy": spec.granularity,
    }
    if spec.granularity == "group":
        weights["group_size"] = spec.group_size
    grid = (f"scale = absmax / {spec.qmax + 0.5:g}, codes {spec.qmin}..{spec.qmax}" if spec.symmetric else
            f"scale = (max - min) / {spec.qmax}; qviz's codes 0..{spec.qmax} are compressed-tensors' "
            f"{-(2 ** (spec.bits - 1))}..{2 ** (spec.bits - 1) - 1} with a signed zero point: the same grid, shifted")  # fmt: skip
    unit = {"group": "group's", "channel": "row's", "tensor": "tensor's"}[spec.granularity]
    notes = [
        f"the same grid as qviz's {spec.label}: each {unit} range [min, max] widened to include 0; {grid}"
    ]
    if spec.mse_clip:  # qviz: ratios linspace(1, 0.5, 51) on the weights' MSE; here p = 1 - i/grid, i < 51
        weights["observer"] = "memoryless_mse"
        weights["observer_kwargs"] = {"maxshrink": 0.51, "grid": 100, "norm": 2.0, "patience": 51}
        notes.append(f"mse_clip: each {unit} range shrunk by the ratio in 1, 0.99, ..., 0.50 with the smallest "
                     "squared weight error, as qviz does (patience 51: the search never stops early)")  # fmt: skip
    return weights, notes


def _quantization(spec, ignore: list[str]) -> tuple[dict, dict]:
    """The fields every quantizing modifier shares, and their notes (keyed by field)."""
    weights, grid_notes = _weights(spec)
    args = {"ignore": ignore, "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}}
    notes = {
        ("ignore",): ["every Linear is quantized but these: the ones outside the decoder layers, which qviz "
                      "leaves in float (the ignore list of the config.json qviz.export.save_quantized writes)"],
        ("config_groups", "group_0", "weights"): grid_notes,
    }  # fmt: skip
    return args, notes


def _gptq(run: Run) -> tuple[dict, dict, dict, int | str | None]:
    """GPTQModifier's fields and notes, oneshot's arguments the run's options set, and the run's BOS."""
    methods = {f.name for f in fields(gptq.GPTQ) if f.init and f.name != "spec"}
    defaults = inspect.signature(gptq.quantize_model).parameters
    unknown = set(run.options) - methods - set(_GPTQ_RUN_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown GPTQ options {sorted(unknown)}: allowed {sorted(methods | set(_GPTQ_RUN_OPTIONS))}"
        )
    method = gptq.GPTQ(run.spec, **{k: v for k, v in run.options.items() if k in methods})  # validates them
    opt = {k: run.options.get(k, defaults[k].default) for k in _GPTQ_RUN_OPTIONS}
    if method.act_order and not method.static_groups and run.spec.granularity == "group":
        raise ValueError(
            "GPTQ with act_order and static_groups=False makes groups in processing order (a g_idx in the "
            f"checkpoint): llm-compressor {LLMCOMPRESSOR} removed that ordering ('group'); use static_groups=True"
        )
    args = {"dampening_frac": method.damp, "block_size": method.block_size,
            "actorder": "static" if method.act_order else None}  # fmt: skip
    notes = {
        ("dampening_frac",): [f"damp={method.damp}: λ = damp · mean(diag H) added to H's diagonal, as qviz. Where "
                              "Cholesky still fails qviz retries with 10x the damping; llm-compressor rounds that "
                              "layer to nearest (RTN) instead"],
        ("actorder",): ["act_order=True, static_groups=True: columns by descending diag(H), each group's qparams "
                        "from the original weights" if method.act_order else "act_order=False: columns in order "
                        "(null here: the modifier's default would be static)"],
    }  # fmt: skip
    if not method.static_groups and not method.act_order and run.spec.granularity == "group":
        notes[("actorder",)].append("static_groups=False has no equivalent: qviz then chooses a group's qparams "
                                    "from the error-compensated weights when the group starts; llm-compressor "
                                    "always from the original weights (qviz's static_groups=True)")  # fmt: skip
    if opt["true_sequential"]:
        notes[()] = ["true_sequential=True has no equivalent: qviz gives each group of a layer's linears (q/k/v, "
                     "o, gate/up, down) the Hessian of the inputs the groups before it produce once quantized; "
                     "llm-compressor's sequential pipeline takes every Hessian of a layer from one pass (qviz's "
                     "true_sequential=False). Both feed each quantized layer's outputs to the next"]  # fmt: skip
    oneshot = {"batch_size": opt["batch_size"]} if "batch_size" in run.options else {}
    return args, notes, oneshot, opt["bos_token_id"]


def _awq(run: Run, skeleton: nn.Module) -> tuple[dict, dict]:
    """AWQModifier's fields and notes."""
    names = {f.name for f in fields(awq.AWQConfig)}
    if set(run.options) - names:
        raise ValueError(f"unknown AWQ options {sorted(set(run.options) - names)}: allowed {sorted(names)}")
    config = awq.AWQConfig(**run.options)  # validates them
    family = family_of(skeleton)
    mappings = [{"smooth_layer": f"re:.*\\.{re.escape(g.prev_op)}$",
                 "balance_layers": [f"re:.*\\.{re.escape(name)}$" for name in g.linears]}
                for g in family.scale_groups]  # fmt: skip
    args = {"duo_scaling": False, "n_grid": config.n_grid + 1, "mappings": mappings}
    clip = (f"clip=True: qviz then searches each group's clipping (max shrunk by 1 - i/{config.clip_grid}, "
            f"i < {config.max_shrink * config.clip_grid:g}) on the output error, except {list(config.no_clip)}; "
            "llm-compressor has no such search (its memoryless_mse observer shrinks ranges on the weight error "
            "instead): left at min-max" if config.clip else "clip=False: min-max ranges, as here")  # fmt: skip
    notes = {
        ("duo_scaling",): ["false: the paper's s = s_x^α normalised by sqrt(max(s) · min(s)), s_x = mean|X|, as "
                           "qviz.awq (true, the default, divides by mean|W|^(1-α): AutoAWQ's form)"],
        ("n_grid",): [f"qviz's n_grid={config.n_grid} tries α = 0, 1/{config.n_grid}, ..., "
                      f"{config.n_grid - 1}/{config.n_grid}; llm-compressor's n_grid points are i/(n_grid - 1) up "
                      f"to 1, so {config.n_grid + 1} holds every α qviz tries, and α = 1"],
        ("mappings",): [f"qviz.arch's scale groups for {family.name} (previous op -> the linears it feeds); "
                        "llm-compressor skips a mapping whose shapes do not match (v_proj -> o_proj under "
                        "grouped-query attention), as qviz does. The loss compares the output of the linears' "
                        "lowest common parent (the attention block, the MLP, or the single linear), as qviz's"],
        (): [f"search_tokens={config.search_tokens} has no equivalent: llm-compressor searches α on every "
             "calibration token",
             "qviz calibrates each layer on the outputs of the already quantized layers; llm-compressor runs the "
             "float model (AWQ leaves the weights float; QuantizationModifier rounds them at the end)", clip],
    }  # fmt: skip
    return args, notes


def _calibration(run: Run, bos, extra: dict) -> tuple[dict, list[str]]:
    """oneshot's data arguments (and where the windows come from) for a calibrated run."""
    seq = run.calib_len + (bos is not None)
    first = "BOS + " if bos is not None else ""
    data = {
        "dataset": f"{run.n_calib} windows of {first}{run.calib_len} tokens: qviz.data.calib_windows(tokenizer, "
                   f"{run.calib!r}, seqlen={run.calib_len}, n={run.n_calib}), as input_ids",
        "oneshot": {"num_calibration_samples": run.n_calib, "max_seq_length": seq,
                    "shuffle_calibration_samples": False, **extra},
    }  # fmt: skip
    return data, ["not read by llm-compressor: pass `oneshot` below to oneshot() with the same windows "
                  "(qviz's calibration text; at scale, any ordinary prose of the same size)"]  # fmt: skip


def llmcompressor_recipe(run: Run, model=None) -> str:
    """The llm-compressor recipe (YAML text) that quantizes like `run` (method rtn, gptq or awq).

    model: the run's model (an nn.Module) or its transformers config, for the ignore list and AWQ's mappings;
    default: built from `qviz.models.model_config(run.model)` on the meta device (no weights are read).
    Raises ValueError for a run llm-compressor cannot reproduce (see the module doc).
    """
    if not isinstance(run, Run):
        raise ValueError(f"run must be a qviz.runs.Run, got {type(run).__name__}")
    if run.method == "qat":
        raise ValueError(f"QAT trains the model; llm-compressor {LLMCOMPRESSOR} only calibrates (oneshot, no "
                         "training entrypoint): hand over a GPTQ or AWQ run instead")  # fmt: skip
    if run.n_layers is not None:
        raise ValueError(f"the run quantizes only the first {run.n_layers} layers: a recipe quantizes a whole "
                         "model; use n_layers=None")  # fmt: skip
    skeleton = _skeleton(run, model)
    wanted = decoder_linears(skeleton)
    ignore = [n for n, m in skeleton.named_modules() if isinstance(m, nn.Linear) and n not in wanted]
    quant, quant_notes = _quantization(run.spec, ignore)
    stage, notes, extra, bos = {}, {}, {}, "auto"
    if run.method == "gptq":
        method, method_notes, extra, bos = _gptq(run)
        stage["GPTQModifier"] = {**quant, **method}
        notes.update({("GPTQModifier", *k): v for k, v in {**quant_notes, **method_notes}.items()})
    else:
        if run.method == "awq":
            method, method_notes = _awq(run, skeleton)
            stage["AWQModifier"] = method
            notes.update({("AWQModifier", *k): v for k, v in method_notes.items()})
        stage["QuantizationModifier"] = quant
        notes.update({("QuantizationModifier", *k): v for k, v in quant_notes.items()})
    recipe = {"quant_stage": {"quant_modifiers": stage}}
    notes = {("quant_stage", "quant_modifiers", *k): v for k, v in notes.items()}
    if run.method == "rtn":
        recipe["calibration"] = None
        notes[("calibration",)] = ["none: RTN reads no data (oneshot(model=..., recipe=...), no dataset)"]
    else:
        recipe["calibration"], notes[("calibration",)] = _calibration(run, bos, extra)
    recipe["qviz_run"] = json.loads(json.dumps(asdict(run)))  # plain YAML: tuples as lists
    notes[("qviz_run",)] = ["the run this recipe was written from (qviz.runs.Run's fields)"]
    head = [f"llm-compressor recipe for the qviz run {run.label} of {run.model}",
            f"written by qviz.export.llmcompressor_recipe (qviz {__version__}) for llm-compressor {LLMCOMPRESSOR}.",
            "llm-compressor reads only quant_stage; `calibration` holds oneshot's data arguments:",
            "  oneshot(model=MODEL, recipe=THIS_FILE, dataset=WINDOWS, **calibration['oneshot'])",
            "Options with no llm-compressor equivalent are comments beside the nearest field."]  # fmt: skip
    return "\n".join(["# " + line for line in head] + _emit(recipe, notes)) + "\n"


def write_llmcompressor_recipe(
    run: Run, path: str | os.PathLike, model=None, overwrite: bool = False
) -> Path:
    """Write `llmcompressor_recipe(run, model)` to `path` atomically (a temporary file beside it, flushed to disk,
    then renamed into place). Raises ValueError for an existing path without overwrite."""
    path = Path(path)
    text = llmcompressor_recipe(run, model)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists: pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _scalar(value) -> str:
    """One YAML value on one line (flow style), as yaml.safe_load reads it back."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _emit(node: dict, notes: dict, path: tuple = (), indent: int = 0) -> list[str]:
    """Block-style YAML lines for `node`, each key preceded by its notes (by key path) as wrapped comments."""
    pad, lines = "  " * indent, []
    for key, value in node.items():
        here = (*path, key)
        for note in notes.get(here, ()):
            lines += textwrap.wrap(note, 110, initial_indent=pad + "# ", subsequent_indent=pad + "#   ")
        if isinstance(value, dict) and value:
            lines += [f"{pad}{key}:", *_emit(value, notes, here, indent + 1)]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key}:")
            for item in value:  # "- first: ..." then the item's other keys under it
                sub = _emit(item, {}, here, indent + 2)
                lines += [f"{pad}  - {sub[0].lstrip()}", *sub[1:]]
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines
