"""Save a quantized model as a Hugging Face checkpoint other tools load, atomically; load it back bit-exactly.

Two formats, both a folder with config.json (+ the tokenizer when given) and model.safetensors:

- "compressed-tensors" (what llm-compressor writes and vLLM / transformers read): every quantized Linear
  `name` stores name.weight_packed, name.weight_scale, name.weight_shape (+ name.weight_zero_point when
  asymmetric), and config.json carries
      "quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
              "symmetric": true, "strategy": "group", "group_size": 128, ...}}},
          "ignore": ["lm_head"], "quantization_status": "compressed"}
- "gptq" (GPTQ v1, what AutoGPTQ / GPTQModel / transformers' GPTQ integration read): name.qweight,
  name.qzeros, name.scales (fp16), name.g_idx, and quant_method "gptq" with bits, group_size, desc_act, sym
  in config.json (also written to quantize_config.json for older loaders).

Everything that is not a quantized Linear (embeddings, norms, lm_head, biases) is saved as it is.

Atomic: the files are written into a temporary folder beside the target, flushed to disk (fsync), and only
then renamed into place. A crash or an error midway leaves the old checkpoint (or nothing), never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .pack import pack_compressed_tensors, pack_gptq, unpack_compressed_tensors, unpack_gptq
from .qlinear import QuantLinear, quantize_linears
from .quant import QuantizedTensor, QuantSpec

__all__ = [
    "FORMATS",
    "QuantizedCheckpoint",
    "save_quantized",
    "load_quantized",
    "load_quantized_model",
    "quantization_config",
]

FORMATS = ("compressed-tensors", "gptq")
SAFETENSORS = "model.safetensors"
_save_file = save_file  # called through this name so that a test can make it fail midway


@dataclass
class QuantizedCheckpoint:
    """What `load_quantized` returns: the quantized weights by module name and every other tensor."""

    format: str  # "compressed-tensors" or "gptq"
    config: dict  # config.json as saved (with "quantization_config")
    quantized: dict[str, QuantizedTensor]  # module name -> codes, scale, zero_point
    g_idx: dict[str, torch.Tensor] = field(default_factory=dict)  # GPTQ act-order only
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # non-quantized tensors, by state_dict key


def _quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise ValueError("the model has no QuantLinear layers: call qviz.qlinear.quantize_linears first")
    specs = {(m.spec.bits, m.spec.symmetric, m.spec.group_size) for m in layers.values()}
    if len(specs) > 1:
        raise ValueError(f"one checkpoint holds one quantization scheme; layers use {sorted(specs, key=str)}")
    return layers


def quantization_config(spec: QuantSpec, fmt: str, ignore: list[str], desc_act: bool = False) -> dict:
    """The config.json "quantization_config" entry for `spec` in format `fmt`."""
    if fmt == "gptq":
        return {
            "quant_method": "gptq",
            "bits": spec.bits,
            "group_size": spec.group_size or -1,  # -1: one group per output channel
            "desc_act": desc_act,
            "sym": spec.symmetric,
            "checkpoint_format": "gptq",
        }
    weights = {
        "num_bits": spec.bits,
        "type": "int",
        "symmetric": spec.symmetric,
        "strategy": "group" if spec.group_size else "channel",
        "group_size": spec.group_size,
        "dynamic": False,
        "observer": "minmax",
    }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
        },
        "ignore": ignore,
        "kv_cache_scheme": None,
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_folder(target: Path, overwrite: bool):
    """Yield a temporary folder beside `target`; on success make it `target` in one rename."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise ValueError(f"{target} already exists: pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if target.exists():  # a folder cannot be renamed over a non-empty one: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "ckpt")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_quantized(
    model: nn.Module,
    path: str | os.PathLike,
    format: str = "compressed-tensors",
    tokenizer=None,
    scale_dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (its decoder linears swapped for QuantLinear) as a checkpoint folder at `path`.

    scale_dtype: dtype of the stored scales; default: the layers' own (GPTQ always stores float16).
    Returns the folder. Raises ValueError for an unknown format or an existing path without overwrite.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    layers = _quant_layers(model)
    spec = next(iter(layers.values())).spec
    tensors, stored = {}, set()
    for key, t in model.state_dict().items():  # everything that is not a QuantLinear's own buffer
        owner, _, leaf = key.rpartition(".")
        # a tied weight (lm_head = embedding) is stored once, under its first name; loading re-ties it
        if (owner not in layers or leaf == "bias") and (t.data_ptr(), t.shape) not in stored:
            stored.add((t.data_ptr(), t.shape))
            tensors[key] = t.detach().contiguous()
    desc_act = False
    for name, layer in layers.items():
        qt = layer.quantized()
        if format == "gptq":
            desc_act |= layer.g_idx is not None
            packed = pack_gptq(qt, layer.g_idx)
        else:
            if layer.g_idx is not None:
                raise ValueError(f"{name} has an act-order g_idx: save it in the 'gptq' format")
            packed = pack_compressed_tensors(qt, scale_dtype or layer.scales.dtype)
        tensors.update({f"{name}.{k}": v for k, v in packed.items()})
    ignore = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear)
    ]
    qconfig = quantization_config(spec, format, ignore, desc_act)
    config = model.config.to_dict() if hasattr(model, "config") else {}
    config["quantization_config"] = qconfig

    with _atomic_folder(Path(path), overwrite) as tmp:
        _save_file(tensors, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if format == "gptq":
            (tmp / "quantize_config.json").write_text(json.dumps(qconfig, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(path)


def load_quantized(path: str | os.PathLike) -> QuantizedCheckpoint:
    """Read a folder written by `save_quantized` (or another tool writing the same formats) bit-exactly."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    qconfig = config.get("quantization_config")
    if not qconfig:
        raise ValueError(f"{path}/config.json has no quantization_config")
    tensors = load_file(str(path / SAFETENSORS))
    ckpt = QuantizedCheckpoint(qconfig["quant_method"], config, {})
    if ckpt.format == "gptq":
        names = [k.removesuffix(".qweight") for k in tensors if k.endswith(".qweight")]
        for name in names:
            parts = {s: tensors.pop(f"{name}.{s}") for s in ("qweight", "qzeros", "scales", "g_idx")}
            qt, g_idx = unpack_gptq(parts, qconfig["bits"], qconfig["sym"], dtype=parts["scales"].dtype)
            ckpt.quantized[name] = qt
            if g_idx is not None:
                ckpt.g_idx[name] = g_idx
    elif ckpt.format == "compressed-tensors":
        weights = qconfig["config_groups"]["group_0"]["weights"]
        names = [k.removesuffix(".weight_packed") for k in tensors if k.endswith(".weight_packed")]
        for name in names:
            keys = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")
            parts = {s: tensors.pop(f"{name}.{s}") for s in keys if f"{name}.{s}" in tensors}
            ckpt.quantized[name] = unpack_compressed_tensors(
                parts, weights["num_bits"], weights["symmetric"], dtype=parts["weight_scale"].dtype
            )
    else:
        raise ValueError(f"quant_method must be one of {FORMATS}, got {ckpt.format!r}")
    ckpt.tensors = tensors
    return ckpt


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # transformers 4.x
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def load_quantized_model(path: str | os.PathLike, backend: str = "auto") -> nn.Module:
    """A transformers causal LM whose decoder linears are QuantLinear, rebuilt from a `save_quantized` folder.

    The architecture comes from config.json, the float tensors and packed weights from model.safetensors;
    no float copy of the quantized weights is ever made.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = load_quantized(path)
    cfg = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with _no_init_weights():  # every tensor is overwritten below: skip the random initialisation
        model = AutoModelForCausalLM.from_config(config).eval()
    dtypes = {t.dtype for t in ckpt.tensors.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(dtypes.pop())
    results = {name: (qt, ckpt.g_idx.get(name)) for name, qt in ckpt.quantized.items()}
    quantize_linears(model, results, backend)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    missing, unexpected = model.load_state_dict(ckpt.tensors, strict=False)
    quantized = {f"{n}.{b}" for n in results for b in ("qweight", "scales", "zero_point", "g_idx")}
    state = model.state_dict()
    loaded = {state[k].data_ptr() for k in ckpt.tensors if k in state}
    # tied weights (lm_head = embedding) were stored once: they count as loaded through their twin
    missing = [k for k in missing if k not in quantized and state[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model
