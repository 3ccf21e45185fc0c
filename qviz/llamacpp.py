"""llama.cpp as a runtime: run a GGUF file on the CPU, score text with it, and quantize with llama.cpp's own
quantizer, through its Python binding `llama-cpp-python` (which builds llama.cpp from source when installed:
about 4 minutes on 2 cores; `scripts/setup.sh` installs it, `pip install -e '.[llama]'` does by hand).

What it is for: to check a file qviz wrote (`qviz.gguf.write_gguf`) in the program people actually run, and to
compare qviz's quantizers with llama.cpp's on the same float model. Where the binding is missing, every function
here raises an error that says how to install it.

llama.cpp on the CPU multiplies k-quant weights with activations that it rounds to 8 bits itself (Q8_K blocks), so
its logits are close to, not equal to, those of the dequantized model in PyTorch: `nll` reports what llama.cpp
computes.
"""

from __future__ import annotations

import ctypes
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from .gguf import atomic_file, check_complete

__all__ = [
    "FILE_TYPES",
    "INSTALL",
    "available",
    "compare",
    "generate",
    "load",
    "nll",
    "perplexity",
    "quantize_file",
]

# llama.cpp's file types (`llama-quantize`'s names) that `quantize_file` writes
FILE_TYPES = (
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q4_K_S",
    "Q4_K_M",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q5_K_M",
    "Q6_K",
)
INSTALL = (
    "llama.cpp's Python binding is not installed: `pip install -e '.[llama]'` in the qviz folder (it builds "
    "llama.cpp from source with cmake and a C++ compiler, about 4 minutes), or run scripts/setup.sh again"
)


def available() -> bool:
    """Whether llama-cpp-python imports."""
    try:
        _binding()
    except RuntimeError:
        return False
    return True


_QUIET = []  # the log callback, kept alive for as long as llama.cpp may call it


def _binding():
    """The llama_cpp module, with llama.cpp's own logging (hundreds of lines a load) switched off."""
    try:
        import llama_cpp
    except ImportError as err:
        raise RuntimeError(f"{INSTALL} ({err})") from None
    if not _QUIET:
        _QUIET.append(llama_cpp.llama_log_callback(lambda level, text, user_data: None))
        llama_cpp.llama_log_set(_QUIET[0], ctypes.c_void_p())
    return llama_cpp


def _gguf_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file (a GGUF model file is expected)")
    return path


def load(path: str | os.PathLike, n_ctx: int = 512, threads: int | None = None):
    """The GGUF file at `path` as a `llama_cpp.Llama` on the CPU, keeping the logits of every position."""
    llama_cpp = _binding()
    path = _gguf_file(path)
    check_complete(path)  # llama.cpp's own error for a cut file is terse, and the binding then logs another
    threads = threads or max(1, os.cpu_count() or 1)
    try:
        return llama_cpp.Llama(
            str(path), n_ctx=n_ctx, logits_all=True, n_threads=threads, n_gpu_layers=0, verbose=False
        )
    except ValueError as err:  # the binding's "Failed to load model from file"
        raise ValueError(f"llama.cpp cannot load {path}: {err}") from None


def nll(llm, ids: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """Score token rows with llama.cpp: ids (n, L) token ids, BOS already in front when the model wants one (as
    `qviz.data.with_bos` gives them). Each row is read at once from an empty cache; position p's logits predict
    token p + 1. Returns (the negative log-likelihood of every scored token in nats, in row order; the top-1
    predictions (n, L − 1)), for comparison with qviz.eval on the same rows."""
    ids = torch.as_tensor(ids)
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(
            f"ids must be (rows, tokens) with at least 2 tokens a row, got shape {tuple(ids.shape)}"
        )
    if ids.shape[1] > llm.n_ctx():
        raise ValueError(
            f"rows of {ids.shape[1]} tokens do not fit the context of {llm.n_ctx()}: load(n_ctx=...)"
        )
    losses, top1 = [], []
    for row in ids.tolist():
        llm.reset()
        llm.eval(row)
        logits = torch.from_numpy(llm.scores[: len(row) - 1].copy())  # (L - 1, vocab) float32
        losses += torch.nn.functional.cross_entropy(logits, torch.tensor(row[1:]), reduction="none").tolist()
        top1.append(logits.argmax(-1))
    return losses, torch.stack(top1)


def generate(llm, prompt_ids: list[int], new_tokens: int = 32) -> tuple[list[int], float]:
    """Greedy decoding in llama.cpp: (the new token ids, tokens per second after the prompt is read)."""
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 2:
        raise ValueError(f"new_tokens must be an integer >= 2 (one to time), got {new_tokens!r}")
    if not prompt_ids or len(prompt_ids) + new_tokens > llm.n_ctx():
        raise ValueError(
            f"need a prompt of 1 to {llm.n_ctx() - new_tokens} tokens for {new_tokens} new ones in a context of "
            f"{llm.n_ctx()}, got {len(prompt_ids)}"
        )
    llm.reset()
    llm.eval(list(prompt_ids))
    out = [int(llm.scores[len(prompt_ids) - 1].argmax())]
    start = time.perf_counter()
    while len(out) < new_tokens:
        llm.eval([out[-1]])
        out.append(int(llm.scores[llm.n_tokens - 1].argmax()))
    return out, (len(out) - 1) / max(time.perf_counter() - start, 1e-9)


def quantize_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    file_type: str = "Q4_K_M",
    *,
    threads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize` runs) from the GGUF `src`
    (float32/16 tensors) to `dst`, with llama.cpp's per-tensor choices for `file_type` (e.g. Q4_K_M keeps some
    tensors in Q6_K, and falls back to Q5_0 or IQ4_NL where a row is not a multiple of 256). No importance
    matrix. Atomic: written beside `dst`, then renamed.
    """
    llama_cpp = _binding()
    src, dst = _gguf_file(src), Path(dst)
    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type must be one of {', '.join(FILE_TYPES)}, got {file_type!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    params.nthread = threads or max(1, os.cpu_count() or 1)
    with atomic_file(dst, overwrite) as tmp:
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if status != 0:
            raise ValueError(f"llama.cpp could not quantize {src} to {file_type} (status {status})")
    return dst


def perplexity(losses: list[float]) -> float:
    """exp(mean NLL)."""
    return math.exp(sum(losses) / len(losses))


def compare(
    name: str,
    file_type: str = "Q3_K_S",
    *,
    eval_n: int = 1,
    eval_seqlen: int = 511,
    calib_n: int = 8,
    calib_seqlen: int = 256,
    prompt: str = "The invention of the printing press",
    new_tokens: int = 32,
    threads: int | None = None,
    refresh: bool = False,
) -> dict:
    """qviz's GGUF against llama.cpp's own, both run in llama.cpp, for an offline model (cached by the arguments,
    `qviz.cache`; refresh=True recomputes). In a temporary folder:

    1. "float": the float reference (the dequantized release) as a float32 GGUF (`qviz.export`, format="gguf");
    2. "theirs": llama.cpp's `file_type` file quantized from it (`quantize_file`);
    3. "ours": the same file with every tensor whose type qviz writes (Q8_0, Q4_K, Q3_K) quantized by
       `qviz.kquants` from the same floats, the rest (llama.cpp's fallbacks) copied from theirs;
    4. "ours + imatrix": the same with an importance matrix from calib_n × calib_seqlen Britannica tokens.

    Returns JSON data: per file its perplexity from llama.cpp's logits on eval_n × eval_seqlen held-out tokens (BOS
    first), the paired per-token NLL difference to theirs with its standard error, bits per weight and size on disk;
    the share of our blocks equal to theirs by type; tokens per second of llama.cpp (ours + imatrix) and of
    PyTorch float32 (transformers' greedy generate with its KV cache) decoding `new_tokens` after `prompt`, and the
    texts;
    "from_cache": whether it was read from the cache (~/.cache/qviz/results).
    """
    from .cache import cached, result_path

    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type must be one of {', '.join(FILE_TYPES)}, got {file_type!r}")
    threads = threads or max(1, os.cpu_count() or 1)
    params = dict(
        model=name, file_type=file_type, eval_n=eval_n, eval_seqlen=eval_seqlen, calib_n=calib_n,
        calib_seqlen=calib_seqlen, prompt=prompt, new_tokens=new_tokens, threads=threads,
        llama_cpp=_binding().__version__,
    )  # fmt: skip
    from_cache = result_path("llamacpp", params).exists() and not refresh
    return {
        **cached("llamacpp", params, lambda: _compare(**params), refresh=refresh),
        "from_cache": from_cache,
    }


def comparison_table(run: dict, file_type: str = "Q3_K_S") -> str:
    """`compare`'s result as text: where it came from, which tensors qviz wrote, how many of its blocks equal
    llama.cpp's, and each file's bits per weight, size, perplexity and paired difference to llama.cpp's file."""
    lines = [
        ("read from the cache (~/.cache/qviz/results; delete it to recompute)" if run["from_cache"] else "computed now")
        + f"; llama.cpp on {run['threads']} CPU threads",
        f"tensors qviz writes in llama.cpp's {file_type} file: " + ", ".join(f"{n} {k}" for k, n in run["types"].items()),
        "our blocks equal to llama.cpp's: " + ", ".join(f"{k} {share:.4%}" for k, share in run["same_blocks"].items()),
        "",
        f"{'file':16s} {'bits/weight':>11s} {'MB':>6s} {'perplexity':>10s}  {'Δ NLL vs theirs ± 2 s.e.':>29s}",
    ]  # fmt: skip
    for label, f in run["files"].items():
        delta = "" if label == "theirs" else f"{f['dnll']:+.4f} ± {2 * f['dnll_se']:.4f} nats/token"
        lines.append(
            f"{label:16s} {f['bits_per_weight']:11.2f} {f['size_mb']:6.0f} {f['ppl']:10.2f}  {delta:>29s}"
        )
    return "\n".join(lines)


def _compare(
    model, file_type, eval_n, eval_seqlen, calib_n, calib_seqlen, prompt, new_tokens, threads, llama_cpp
):
    import numpy as np
    from tqdm.auto import tqdm

    from . import kquants
    from .arch import decoder_linears
    from .data import calib_windows, eval_windows, with_bos
    from .eval import paired_difference
    from .export import save_quantized
    from .gguf import dequantize, read_gguf, write_gguf
    from .models import gguf_name, load_model, release_tensors

    steps = tqdm(total=8, desc=f"llama.cpp: {model} {file_type}", unit="step")
    reference, tokenizer = load_model(model, fresh=False)
    rows, _ = with_bos(reference, eval_windows(tokenizer, "britannica", seqlen=eval_seqlen, n=eval_n))
    calib = calib_windows(tokenizer, "britannica", seqlen=calib_seqlen, n=calib_n)
    imatrix = kquants.importance_matrix(reference, calib, decoder_linears(reference))
    imatrix = {gguf_name(n): v for n, v in imatrix.items()}
    release, _ = release_tensors(model)
    floats = {k: dequantize(t) for k, t in release.items()}
    n_weights = sum(t.numel() for t in floats.values())
    steps.update()
    with tempfile.TemporaryDirectory(prefix=f"qviz-llamacpp-{model}-") as tmp:
        folder = Path(tmp)
        files = {"float": save_quantized(model, {}, folder / "float.gguf", format="gguf")}
        steps.update()
        files["theirs"] = quantize_file(files["float"], folder / "theirs.gguf", file_type, threads=threads)
        theirs = read_gguf(files["theirs"], any_type=True)
        types = {k: t.type for k, t in theirs.items() if t.type in kquants.KINDS}
        steps.update()
        ours = {}
        for label, im in (("ours", None), ("ours + imatrix", imatrix)):
            ours[label] = kquants.quantize_tensors(floats, types, im)
            path = folder / f"{label.replace(' + ', '-')}.gguf"
            files[label] = write_gguf(
                path, [ours[label].get(k, t) for k, t in theirs.items()], files["theirs"]
            )
            steps.update()
        same = {
            kind: float(np.mean(np.concatenate([(ours["ours"][k].data == theirs[k].data).all(1)
                                                for k in types if types[k] == kind])))
            for kind in sorted(set(types.values()))
        }  # fmt: skip
        nlls = {}
        for label, path in files.items():
            nlls[label] = nll(load(path, n_ctx=rows.shape[1], threads=threads), rows)[0]
        steps.update()
        result = {
            "files": {},
            "same_blocks": same,
            "types": dict(sorted(_count(types).items())),
            "threads": threads,
        }
        result["identical_to_theirs"] = files["ours"].read_bytes() == files["theirs"].read_bytes()
        for label, path in files.items():
            d, se = paired_difference(nlls[label], nlls["theirs"]) if label != "theirs" else (0.0, 0.0)
            result["files"][label] = {
                "ppl": perplexity(nlls[label]), "dnll": d, "dnll_se": se, "size_mb": path.stat().st_size / 1e6,
                "bits_per_weight": 8 * path.stat().st_size / n_weights,
            }  # fmt: skip
        prompt_ids = tokenizer(prompt).input_ids
        ids, speed = generate(
            load(files["ours + imatrix"], n_ctx=256, threads=threads), prompt_ids, new_tokens
        )
        steps.update()
    text_ids, torch_speed = _torch_generate(reference, prompt_ids, new_tokens)
    steps.update()
    steps.close()
    result["speed"] = {"llama.cpp ours + imatrix": speed, "PyTorch float32": torch_speed}
    result["text"] = {
        "llama.cpp ours + imatrix": tokenizer.decode(ids),
        "PyTorch float32": tokenizer.decode(text_ids),
    }
    return result


@torch.no_grad()
def _torch_generate(model, prompt_ids: list[int], new_tokens: int) -> tuple[list[int], float]:
    """`generate`'s twin in PyTorch: transformers' greedy `generate` with its KV cache, timed from the first new
    token to the last (a streamer notes when each token arrives), as `generate` times llama.cpp."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        times: list[float] = []

        def put(self, value):  # first the prompt, then each new token
            self.times.append(time.perf_counter())

        def end(self):
            pass

    clock = Clock()
    clock.times = []
    ids = torch.tensor([prompt_ids])
    pad = model.generation_config.pad_token_id or model.generation_config.eos_token_id
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, top_p=None, top_k=None, pad_token_id=pad, streamer=clock,
    )  # fmt: skip
    times = clock.times[1:]  # one per new token
    return out[0, len(prompt_ids) :].tolist(), (len(times) - 1) / max(times[-1] - times[0], 1e-9)


def _count(types: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in types.values():
        counts[kind] = counts.get(kind, 0) + 1
    return counts
