"""Shared pieces of the peer benchmarks (qviz against llm-compressor, one method per script):
bench/peer_gptq_llmcompressor.py and bench/peer_awq_llmcompressor.py.

Each script quantizes qviz's copies of the float model, then `run_peer` saves the calibration windows and runs
the peer's half (a script for llm-compressor's own virtual environment) as a subprocess; `load_peer_weights`
puts the peer's dequantized weights (and any other decoder-layer parameter it changed, such as AWQ's folded
norms) into another copy of the float model; `evaluate` scores every model with `qviz.eval` on the same
evaluation windows; `machine_line`, `versions_line`, `table`, `verdict` and `write_section` build and store
the results section between the script's markers.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from qviz.arch import decoder_layers, family_of, linear_layers
from qviz.data import calib_windows, eval_windows
from qviz.eval import evaluate as evaluate_model
from qviz.models import cached_model_dir, load_model


def add_common_args(parser, results: Path) -> None:
    """The options both peer benchmarks take (each script adds its own)."""
    parser.add_argument("--peer-python", required=True, help="python of the venv holding llmcompressor")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--calib-n", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-n", type=int, default=2)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same on both sides")
    parser.add_argument("--peer-timeout", type=float, default=3600)
    parser.add_argument("--results", type=Path, default=results, help="file whose section is replaced")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")


def prepare(args):
    """(float model, its cached folder, calibration windows, evaluation windows, BOS id) for `args`."""
    torch.set_num_threads(args.threads)
    ref, tok = load_model(args.model, fresh=False)  # also converts the GGUF into the cached folder once
    cal = calib_windows(tok, seqlen=args.calib_seqlen, n=args.calib_n, seed=0)
    ids = eval_windows(tok, seqlen=args.eval_seqlen, n=args.eval_n)
    return ref, cached_model_dir(args.model), cal, ids, ref.config.bos_token_id


def decoder_linear_names(model) -> list[str]:
    family = family_of(model)
    names = {id(m): n for n, m in model.named_modules()}
    return [
        names[id(lin)] for layer in decoder_layers(model) for lin in linear_layers(layer, family).values()
    ]


def run_peer(
    peer_python: str,
    side: Path,
    model_dir: Path,
    cal: torch.Tensor,
    bos: int,
    options: list[str],
    threads: int,
    timeout: float,
    extra: dict | None = None,
) -> tuple[dict, float]:
    """Run the peer's half `side` on the float folder `model_dir`; return (what it saved, process seconds).

    cal: (n, seq) calibration ids as given to qviz; the peer gets exactly the token rows qviz's
    capture_layer_inputs builds, BOS + window, (n, seq + 1). options: the side script's own flags.
    extra: more tensors for the side script, saved in the same windows file (e.g. evaluation ids).
    """
    with tempfile.TemporaryDirectory() as tmp:
        windows, out = Path(tmp, "windows.pt"), Path(tmp, "peer.pt")
        calib = torch.cat([torch.full_like(cal[:, :1], bos), cal], dim=1)
        torch.save({"calib": calib, **(extra or {})}, windows)
        command = [peer_python, str(side), "--model", str(model_dir), "--windows", str(windows)]
        command += ["--out", str(out), *options, "--threads", str(threads)]
        start = time.perf_counter()
        subprocess.run(command, check=True, timeout=timeout)
        seconds = time.perf_counter() - start
        return torch.load(out), seconds


def load_peer_weights(model, peer: dict, bits: int) -> float:
    """Copy the peer's dequantized weights (peer["linears"]) and its other decoder-layer parameters
    (peer["params"], if any) into `model`; return the largest distance of W/scale + zero_point from an
    integer code in compressed-tensors' signed range [-2^(b-1), 2^(b-1) - 1] (0 up to float rounding when the
    weights really lie on the peer's grid; the zero point is 0 when the peer saved none: symmetric)."""
    linears = peer["linears"]
    expected = decoder_linear_names(model)
    if sorted(linears) != sorted(expected):
        raise RuntimeError(
            f"peer quantized {sorted(set(linears) ^ set(expected))[:5]}... differently from qviz"
        )
    worst = 0.0
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for name, entry in linears.items():
        W, scale = entry["weight"], entry["scale"]  # (out, in), (out, in / g)
        zero = entry.get("zero_point", torch.zeros_like(scale))
        codes = (
            W.reshape(W.shape[0], scale.shape[1], -1) / scale[..., None] + zero[..., None]
        )  # (out, n_g, g)
        off_grid = (codes - codes.round()).abs().max().item()
        out_of_range = (codes.round().clamp(qmin, qmax) - codes.round()).abs().max().item()
        worst = max(worst, off_grid, out_of_range)
        model.get_submodule(name).weight.data.copy_(W)
    for name, value in peer.get("params", {}).items():
        model.get_parameter(name).data.copy_(value)
    return worst


def same_weights(a, b) -> float:
    """Fraction of decoder-linear weights on which two quantized models agree exactly."""
    equal = total = 0
    for name in decoder_linear_names(a):
        wa, wb = a.get_submodule(name).weight, b.get_submodule(name).weight
        equal += torch.isclose(wa, wb, rtol=1e-5, atol=1e-7).sum().item()
        total += wa.numel()
    return equal / total


def evaluate(models: dict, ids: torch.Tensor, seconds: dict, same_as=None) -> dict:
    """{label: {"ppl", "kl", "top1", "seconds"(, "same")}} for every model; models["reference"] is the
    float model the others are compared with; same_as: a model to report `same_weights` against."""
    ref = models["reference"]
    scores = {}
    for label, m in models.items():
        ev = evaluate_model(m, ids, ref if m is not ref else None, progress=False)  # one pass: ppl, KL, top-1
        scores[label] = {
            "ppl": ev.ppl,
            "kl": ev.kl if m is not ref else 0.0,
            "kl_p99": ev.kl_p99 if m is not ref else 0.0,
            "top1": ev.top1 if m is not ref else 1.0,
            "seconds": seconds.get(label),
        }
        if same_as is not None:
            scores[label]["same"] = None if m is ref else same_weights(m, same_as)
        print(label, scores[label], flush=True)
    return scores


def table(scores: dict, columns: list[tuple[str, str, str]]) -> str:
    """A markdown table, one row per label; columns: (header, key, format spec); None prints empty."""
    rows = ["| quantizer | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, sc in scores.items():
        cells = ["" if sc.get(key) is None else format(sc[key], spec) for _, key, spec in columns]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def verdict(label: str, score: dict, peer: dict, max_ratio: float) -> str:
    """The two goals: perplexity at most 1% above the peer's; time at most `max_ratio` of the peer's."""
    gap, ratio = score["ppl"] / peer["ppl"] - 1, score["seconds"] / peer["seconds"]
    return (
        f"- {label}: perplexity vs peer {100 * gap:+.2f}% (goal: at most +1%): "
        f"**{'met' if gap <= 0.01 else 'NOT met'}**; time ratio qviz / peer {ratio:.2f} (goal: at most "
        f"{max_ratio:g}, i.e. qviz at least {1 / max_ratio:g}x faster): "
        f"**{'met' if ratio <= max_ratio else 'NOT met'}**"
    )


def machine_line(load: list[float], threads: int) -> str:
    return (
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs; 1-min load average "
        f"{', '.join(f'{x:.1f}' for x in load)} (start, after each qviz run, after the peer, after "
        f"evaluation); {threads} torch thread(s) on each side; {platform.platform()}"
    )


def versions_line(peer_versions: dict) -> str:
    v = peer_versions
    return (
        f"- qviz side: torch {torch.__version__}; peer side (own venv, subprocess): llmcompressor "
        f"{v['llmcompressor']}, transformers {v['transformers']}, torch {v['torch']}"
    )


def write_section(path: Path, start: str, end: str, text: str) -> None:
    """Replace the part of `path` between the markers `start` and `end` (included) with `text`, or append
    it; the file is re-read just before writing, since other benchmarks write other sections of it."""
    results = path.read_text() if path.exists() else "# Benchmark results\n"
    if start in results and end in results:
        results = results[: results.index(start)] + text + results[results.index(end) + len(end) :]
    else:
        results = results.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(results)
