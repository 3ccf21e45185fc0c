"""Save a quantized model as a Hugging Face checkpoint other tools load, atomically; load it back bit-exactly.

Two Hugging Face formats, both a folder with config.json (+ the tokenizer when given) and model.safetensors:

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

And one file for llama.cpp (and Ollama, LM Studio):

- "gguf": an offline model's GGUF file, its metadata (architecture, tokenizer) copied from the released file,
  with the GGUF tensors given (e.g. `qviz.kquants.quantize_tensors`' Q4_K blocks, byte for byte what llama.cpp's
  own quantizer writes) and every other tensor in float32, from qviz's float reference. `qviz.llamacpp` runs it.

The quantized weights are exactly the codes, scales and zero points a method chose (a `qviz.result.QuantResult`
from `qviz.rtn`, `qviz.gptq` or `qviz.awq`), never re-derived; everything that is not a quantized Linear
(embeddings, norms, lm_head, biases) is saved as the model holds it, with the tensors the method changed (AWQ
folds 1/s into norms) taken from the result. `load_quantized` gives back the codes bit for bit.

And one recipe: `llmcompressor_recipe` / `write_llmcompressor_recipe` (from `qviz.recipes`), the llm-compressor
recipe that quantizes like a `qviz.runs.Run`, for models past a laptop (docs/SCALE.md).

Atomic: the files are written into a temporary folder beside the target, flushed to disk (fsync), and only
then renamed into place. A crash or an error midway leaves the old checkpoint (or nothing), never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .pack import pack_compressed_tensors, pack_gptq, unpack_compressed_tensors, unpack_gptq
from .qlinear import quantize_linears
from .quant import QuantSpec
from .result import QuantResult

__all__ = [
    "FORMATS",
    "QuantizedCheckpoint",
    "save_quantized",
    "load_quantized",
    "load_quantized_model",
    "quantization_config",
    "llmcompressor_recipe",
    "write_llmcompressor_recipe",
]

FORMATS = ("compressed-tensors", "gptq", "gguf")
SAFETENSORS = "model.safetensors"
_save_file = save_file  # called through this name so that a test can make it fail midway
_QUANT_BUFFERS = ("qweight", "scales", "zero_point", "g_idx")  # a QuantLinear's own state (its bias is kept)
# per format: the packed weight that marks a quantized Linear, and every tensor such a Linear stores
_RESAVE = "The checkpoint is incomplete or damaged: save it again with qviz.export.save_quantized"
_LAYER_TENSORS = {
    "gptq": ("qweight", ("qweight", "qzeros", "scales", "g_idx")),
    "compressed-tensors": (
        "weight_packed",
        ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point"),
    ),
}


@dataclass
class QuantizedCheckpoint:
    """What `load_quantized` returns: the quantized weights (as a QuantResult) and every other tensor."""

    format: str  # "compressed-tensors" or "gptq"
    config: dict  # config.json as saved (with "quantization_config")
    result: QuantResult  # codes, scales and zero points (and g_idx) of every quantized linear
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # non-quantized tensors, by state_dict key


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
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old / "ckpt", target)  # the old checkpoint goes back where it was
                old.rmdir()
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_quantized(
    model: nn.Module,
    result: QuantResult,
    path: str | os.PathLike,
    format: str = "compressed-tensors",
    tokenizer=None,
    scale_dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a quantized model as a checkpoint folder at `path` (format="gguf": one file, see `_save_gguf`): for
    every linear in `result`, exactly the
    codes, scales and zero points the method chose; every other tensor from `model` (the float model, the
    fake-quantized one or the packed one: same architecture), with the tensors the method changed (AWQ's
    folded norms) taken from `result`.

    scale_dtype: dtype of the stored scales; default: the dtype most of the model's other tensors have (float32
    keeps the scales exact; the GPTQ format always stores float16). Returns the folder. Raises ValueError for
    an unknown format, a result that does not fit the model, or an existing path without overwrite.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "gguf":
        return _save_gguf(model, result, Path(path), overwrite)
    if not isinstance(result, QuantResult) or not result.linears:
        raise ValueError(
            "result must be a qviz.result.QuantResult with quantized linears (from quantize_model)"
        )
    state = model.state_dict()
    absent = [n for n in result.linears if f"{n}.weight" not in state and f"{n}.qweight" not in state]
    absent += [k for k in result.float_tensors if k not in state]
    if absent:
        raise ValueError(f"the {result.method} result does not fit this model: it has no {absent[:3]}")
    owned = {f"{name}.{leaf}" for name in result.linears for leaf in ("weight", *_QUANT_BUFFERS)}
    tensors, stored = {}, set()
    for key, t in state.items():  # everything that is not a quantized weight
        t = (
            result.float_tensors[key].to(t.dtype) if key in result.float_tensors else t
        )  # in the model's dtype
        # a tied weight (lm_head = embedding) is stored once, under its first name; loading re-ties it
        if key not in owned and (t.data_ptr(), t.shape) not in stored:
            stored.add((t.data_ptr(), t.shape))
            tensors[key] = t.detach().contiguous()
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
    scale_dtype = scale_dtype or (max(set(floats), key=floats.count) if floats else torch.float32)
    for name, qt in result.linears.items():
        packed = pack_gptq(qt) if format == "gptq" else pack_compressed_tensors(qt, scale_dtype)
        tensors.update({f"{name}.{k}": v for k, v in packed.items()})
    desc_act = any(qt.g_idx is not None for qt in result.linears.values())
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in result.linears]
    qconfig = quantization_config(result.spec, format, ignore, desc_act)
    config = model.config.to_dict() if hasattr(model, "config") else {}
    config["quantization_config"] = qconfig
    meta = {
        "method": result.method,
        "spec": asdict(result.spec),
        "options": result.options,
        "linears": sorted(result.linears),  # so that load_quantized can tell when one is missing
    }

    with _atomic_folder(Path(path), overwrite) as tmp:
        _save_file(tensors, str(tmp / SAFETENSORS), metadata={"format": "pt", "qviz": json.dumps(meta)})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if format == "gptq":
            (tmp / "quantize_config.json").write_text(json.dumps(qconfig, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(path)


def _save_gguf(model: str, tensors: dict, path: Path, overwrite: bool) -> Path:
    """format="gguf": `model` is an offline model's name (qviz.models.OFFLINE_MODELS), `tensors` a dict of GGUF
    name -> `qviz.gguf.GGUFTensor` (any GGML type) to store as given; every other tensor of the released file is
    stored as float32, dequantized (qviz's float reference). Names and order are the release's; its metadata is
    copied. Written atomically (`qviz.gguf.write_gguf`)."""
    import tempfile

    from .gguf import GGUFTensor, dequantize, write_gguf
    from .models import OFFLINE_MODELS, _gguf_path, release_tensors

    if not isinstance(model, str) or model not in OFFLINE_MODELS:
        raise ValueError(
            f"format='gguf' writes an offline model's file: pass its name ({', '.join(OFFLINE_MODELS)}) as model, "
            f"got {model!r}"
        )
    if not isinstance(tensors, dict) or not all(isinstance(t, GGUFTensor) for t in tensors.values()):
        raise ValueError("for format='gguf', result must be a dict of GGUF name -> qviz.gguf.GGUFTensor")
    release, _ = release_tensors(model)
    unknown = [k for k in tensors if k not in release]
    if unknown:
        raise ValueError(f"{model}'s file has no tensor {unknown[0]!r} (names like {next(iter(release))!r})")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(release[k].shape):
            raise ValueError(f"tensor {k} has shape {tuple(t.shape)}, the model's has {release[k].shape}")

    def stored(key, t):
        if key in tensors:
            return GGUFTensor(key, tensors[key].type, t.shape, tensors[key].data)
        return GGUFTensor(key, "F32", t.shape, dequantize(t).numpy().view("uint8").reshape(-1, 4))

    with tempfile.TemporaryDirectory(prefix=f"qviz-{model}-") as tmp:
        template = _gguf_path(OFFLINE_MODELS[model], Path(tmp))
        return write_gguf(path, (stored(k, t) for k, t in release.items()), template, overwrite=overwrite)


def load_quantized(path: str | os.PathLike) -> QuantizedCheckpoint:
    """Read a folder written by `save_quantized` (or another tool writing the same formats) bit-exactly.

    Raises ValueError, naming the file or the layer, for a missing or truncated file, a config without the
    fields of its format, a layer whose tensors are incomplete or disagree with each other, and (for files
    qviz wrote) a quantized linear that is missing or that contradicts the recorded spec. Files of other tools
    do not record which linears they quantized: there a wholly missing layer shows in `load_quantized_model`.
    """
    path = Path(path)
    config, meta, tensors = _read_folder(path)
    weights = path / SAFETENSORS
    fmt, bits, symmetric, group_size = _format_of(config, path / "config.json")
    packed, parts = _LAYER_TENSORS[fmt]
    quantized = {}
    for name in [k.removesuffix(f".{packed}") for k in tensors if k.endswith(f".{packed}")]:
        layer = {s: tensors.pop(f"{name}.{s}") for s in parts if f"{name}.{s}" in tensors}
        scales = layer.get("scales", layer.get("weight_scale"))
        dtype = scales.dtype if scales is not None else torch.float16
        try:
            if fmt == "gptq":
                quantized[name] = unpack_gptq(layer, bits, symmetric, dtype=dtype)
            else:
                quantized[name] = unpack_compressed_tensors(layer, bits, symmetric, dtype=dtype)
        except ValueError as err:
            raise ValueError(f"{weights}: layer {name}: {err}. {_RESAVE}") from None
    orphans = sorted({k.rpartition(".")[0] for k in tensors if k.rpartition(".")[2] in parts})
    if orphans:
        raise ValueError(f"{weights}: {orphans[:3]} have quantization tensors but no {packed}. {_RESAVE}")
    if not quantized:
        raise ValueError(f"{weights} holds no quantized linears (no *.{packed} tensors). {_RESAVE}")
    saved = set(meta.get("linears", quantized))  # written by qviz: exactly these linears were quantized
    if saved != set(quantized):
        missing, extra = sorted(saved - set(quantized)), sorted(set(quantized) - saved)
        problems = [f"{len(missing)} of them have no tensors, e.g. {missing[:3]}"] if missing else []
        problems += [f"{len(extra)} other linears have tensors, e.g. {extra[:3]}"] if extra else []
        raise ValueError(
            f"{weights} was saved with {len(saved)} quantized linears, but {' and '.join(problems)}. {_RESAVE}"
        )
    try:
        spec = QuantSpec(**meta["spec"]) if "spec" in meta else None  # qviz's exact spec (restricted_range)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{weights}: its qviz metadata holds no valid spec ({err}). {_RESAVE}") from None
    try:
        spec = spec or QuantSpec(bits=bits, symmetric=symmetric, group_size=group_size)
    except ValueError as err:
        raise ValueError(f"{path / 'config.json'}: {err}") from None
    # the grid, with the group length as stored: "tensor" per row, "channel" one group as long as the row
    grid = lambda s, k: (s.bits, s.symmetric, s.group_size or k)
    for name, qt in quantized.items():
        if grid(qt.spec, qt.codes.shape[-1]) != grid(spec, qt.codes.shape[-1]):
            raise ValueError(
                f"{weights}: layer {name} holds {qt.spec.label} codes, but the checkpoint says {spec.label}. "
                f"{_RESAVE}"
            )
    result = QuantResult(meta.get("method", fmt), spec, quantized, options=meta.get("options", {}))
    return QuantizedCheckpoint(fmt, config, result, tensors)


def _read_folder(path: Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(config.json, qviz's metadata, every tensor) of a checkpoint folder; ValueError naming what is wrong."""
    if not path.is_dir():
        raise ValueError(f"{path} is not a checkpoint folder: pass the folder that save_quantized wrote")
    config_file, weights = path / "config.json", path / SAFETENSORS
    for f in (config_file, weights):
        if not f.is_file():
            raise ValueError(f"{f} is missing. {_RESAVE}")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:  # not JSON, or not UTF-8
        raise ValueError(f"{config_file} is not valid JSON ({err}). {_RESAVE}") from None
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = (f.metadata() or {}).get("qviz", "{}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{weights} is not a readable safetensors file ({err}): truncated? {_RESAVE}"
        ) from None
    try:
        meta = json.loads(meta)
    except ValueError:
        raise ValueError(f"{weights}: its qviz metadata is not valid JSON. {_RESAVE}") from None
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise ValueError(f"{config_file} or the metadata of {weights} is not a JSON object. {_RESAVE}")
    return config, meta, tensors


def _format_of(config: dict, config_file: Path) -> tuple[str, int, bool, int | None]:
    """(format, bits, symmetric, group_size or None) from config.json's quantization_config."""
    qconfig = config.get("quantization_config")
    if not qconfig:
        raise ValueError(
            f"{config_file} has no quantization_config: not a quantized checkpoint (a float model loads with "
            "qviz.models.load_model)"
        )
    fmt = qconfig.get("quant_method") if isinstance(qconfig, dict) else None
    if fmt not in FORMATS:
        raise ValueError(f"{config_file}: quant_method must be one of {FORMATS}, got {fmt!r}")
    try:
        if fmt == "gptq":  # group_size -1: one group per output channel
            return fmt, qconfig["bits"], qconfig["sym"], max(qconfig["group_size"], 0) or None
        weights = qconfig["config_groups"]["group_0"]["weights"]
        return fmt, weights["num_bits"], weights["symmetric"], weights.get("group_size")
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{config_file}: the {fmt} quantization_config has no field {err}. {_RESAVE}"
        ) from None


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # transformers 4.x
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def load_quantized_model(
    path: str | os.PathLike, backend: str = "auto", dtype: torch.dtype | None = None
) -> nn.Module:
    """A transformers causal LM whose decoder linears are QuantLinear, rebuilt from a `save_quantized` folder.

    The architecture comes from config.json, the float tensors and packed weights from model.safetensors;
    no float copy of the quantized weights is ever made. dtype: of the float tensors (default: as stored). The
    model is built in that dtype, as transformers' from_pretrained does, so buffers computed at construction
    (rotary frequencies, Gemma's embedding scale) get the same values as there.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = load_quantized(path)
    cfg = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    if "model_type" not in cfg:
        raise ValueError(
            f"{Path(path) / 'config.json'} has no model_type: cannot tell which architecture to build"
        )
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    if dtype is None:
        stored = {t.dtype for t in ckpt.tensors.values() if t.is_floating_point()}
        dtype = stored.pop() if len(stored) == 1 else torch.float32
    with _no_init_weights():  # every tensor is overwritten below: skip the random initialisation
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    quantized = {f"{n}.{b}" for n in ckpt.result.linears for b in _QUANT_BUFFERS}
    stray = [k for k in ckpt.tensors if k in quantized]  # would overwrite a QuantLinear's own buffers
    if stray:
        raise ValueError(
            f"{path}: tensors {stray[:3]} belong to quantized linears but are not in the {ckpt.format} layout. "
            f"{_RESAVE}"
        )
    try:
        quantize_linears(model, ckpt.result, backend)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        missing, unexpected = model.load_state_dict(ckpt.tensors, strict=False)
    except (ValueError, RuntimeError) as err:  # RuntimeError: load_state_dict's size mismatches
        raise ValueError(f"{path}: the checkpoint does not match its config.json: {err}") from None
    state = model.state_dict()
    loaded = {state[k].data_ptr() for k in ckpt.tensors if k in state}
    # tied weights (lm_head = embedding) were stored once: they count as loaded through their twin
    missing = [k for k in missing if k not in quantized and state[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise ValueError(
            f"{path}: the checkpoint does not match its config.json: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. {_RESAVE}"
        )
    return model


# The llm-compressor recipe of a run (qviz.recipes): the same quantization handed to the tools built for scale.
from .recipes import llmcompressor_recipe, write_llmcompressor_recipe  # noqa: E402
