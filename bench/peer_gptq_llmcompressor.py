"""qviz's GPTQ against llm-compressor's GPTQ on the same model, windows and spec, in one run; writes RESULTS.md.

    python bench/peer_gptq_llmcompressor.py --peer-python /work/peer-venv/bin/python --calib-n 32

The peer runs in its own virtual environment (llm-compressor pins an older transformers), as a subprocess
running bench/peer_llmcompressor_side.py on qviz's cached float safetensors folder
(`qviz.models.cached_model_dir`). Both sides get the same calibration windows (`qviz.data.calib_windows`,
BOS-prefixed as `qviz.calib` does, saved to a .pt file) and the same spec: INT4 symmetric, group size
`--group-size`, act-order off, damping 0.01, lazy blocks of 128, every linear of the decoder layers (embeddings
and lm_head stay float). SmolLM2's in_features 576 is not a multiple of 128, so group 128 is impossible on
every q/k/v/o/gate/up there: 64 is the default. The two quantizations run one after the other in this one
invocation, so they see comparable machine load. The peer's dequantized weights come back into a copy of the
same float model; both are scored by `qviz.eval` on the same evaluation windows.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from qviz import gptq  # noqa: E402
from qviz.arch import decoder_layers, family_of, linear_layers  # noqa: E402
from qviz.data import calib_windows, eval_windows  # noqa: E402
from qviz.eval import compare_logits, perplexity  # noqa: E402
from qviz.models import cached_model_dir, load_model  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
PEER_SIDE = Path(__file__).with_name("peer_llmcompressor_side.py")
START, END = (
    "<!-- bench/peer_gptq_llmcompressor.py: start -->",
    "<!-- bench/peer_gptq_llmcompressor.py: end -->",
)


def decoder_linear_names(model) -> list[str]:
    family = family_of(model)
    names = {id(m): n for n, m in model.named_modules()}
    return [
        names[id(lin)] for layer in decoder_layers(model) for lin in linear_layers(layer, family).values()
    ]


def load_peer_weights(model, peer: dict, spec: QuantSpec) -> float:
    """Copy the peer's dequantized weights into `model`; return the largest distance of W/scale from an
    integer code in [qmin, qmax] (0 up to float rounding when the weights really lie on the peer's grid)."""
    expected = decoder_linear_names(model)
    if sorted(peer) != sorted(expected):
        raise RuntimeError(f"peer quantized {sorted(set(peer) ^ set(expected))[:5]}... differently from qviz")
    worst = 0.0
    qmin, qmax = -(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1
    for name, entry in peer.items():
        W, scale = entry["weight"], entry["scale"]  # (out, in), (out, in / g)
        codes = W.reshape(W.shape[0], scale.shape[1], -1) / scale[..., None]  # (out, n_groups, g)
        off_grid = (codes - codes.round()).abs().max().item()
        out_of_range = (codes.round().clamp(qmin, qmax) - codes.round()).abs().max().item()
        worst = max(worst, off_grid, out_of_range)
        model.get_submodule(name).weight.data.copy_(W)
    return worst


def same_weights(a, b) -> float:
    """Fraction of decoder-linear weights on which two quantized models agree exactly."""
    equal = total = 0
    for name in decoder_linear_names(a):
        wa, wb = a.get_submodule(name).weight, b.get_submodule(name).weight
        equal += torch.isclose(wa, wb, rtol=1e-5, atol=1e-7).sum().item()
        total += wa.numel()
    return equal / total


def variants(group_size: int) -> list[tuple[str, QuantSpec, dict]]:
    """(label, spec, GPTQ options) of the qviz runs.

    "qviz" is qviz's own GPTQ: a group's scale is absmax / 7 of its error-compensated weights, chosen when
    GPTQ reaches the group (the paper's reference code). llm-compressor 0.14 instead takes every group's scale
    from the original weights before GPTQ starts (its observer), and compressed-tensors' symmetric scale is
    absmax / ((qmax - qmin) / 2) = absmax / 7.5, so the code -8 is used. "qviz, peer's grid" reproduces that
    with qviz's own options: static_groups=True and clip_ratio = 7 / 7.5.
    """
    spec = QuantSpec(bits=4, symmetric=True, granularity="group", group_size=group_size)
    peer_grid = QuantSpec(
        bits=4, symmetric=True, granularity="group", group_size=group_size, clip_ratio=14 / 15
    )
    return [("qviz", spec, {}), ("qviz, peer's grid", peer_grid, {"static_groups": True})]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    ref, tok = load_model(args.model, fresh=False)  # also converts the GGUF into the cached folder once
    folder = cached_model_dir(args.model)
    cal = calib_windows(tok, seqlen=args.calib_seqlen, n=args.calib_n, seed=0)
    ids = eval_windows(tok, seqlen=args.eval_seqlen, n=args.eval_n)
    bos = ref.config.bos_token_id
    load = [os.getloadavg()[0]]

    models, seconds = {"reference": ref}, {}
    for label, spec, options in variants(args.group_size):
        models[label] = copy.deepcopy(ref)
        start = time.perf_counter()
        gptq.quantize_model(models[label], spec, cal, damp=0.01, block_size=128, progress=False, **options)
        seconds[label] = time.perf_counter() - start
        load.append(os.getloadavg()[0])
        print(f"{label}: {seconds[label]:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        windows, out = Path(tmp, "windows.pt"), Path(tmp, "peer.pt")
        # the peer gets exactly the token rows qviz's capture_layer_inputs builds: BOS + window
        torch.save({"calib": torch.cat([torch.full_like(cal[:, :1], bos), cal], dim=1)}, windows)
        command = [args.peer_python, str(PEER_SIDE), "--model", str(folder), "--windows", str(windows)]
        command += ["--out", str(out), "--group-size", str(args.group_size), "--threads", str(args.threads)]
        start = time.perf_counter()
        subprocess.run(command, check=True, timeout=args.peer_timeout)
        peer_process_seconds = time.perf_counter() - start
        peer = torch.load(out)
    load.append(os.getloadavg()[0])
    seconds["llm-compressor"] = peer["seconds"]
    print(f"peer: {peer['seconds']:.1f} s inside oneshot, {peer_process_seconds:.1f} s process", flush=True)

    models["llm-compressor"] = copy.deepcopy(ref)
    if peer["actorder"] != ["None"]:
        raise RuntimeError(f"the peer ran with act-order {peer['actorder']}, not off")
    off_grid = load_peer_weights(models["llm-compressor"], peer["linears"], variants(args.group_size)[0][1])
    scores = {}
    for label, m in models.items():
        cmp = compare_logits(ref, m, ids, progress=False) if m is not ref else None
        scores[label] = {
            "ppl": perplexity(m, ids, progress=False),
            "kl": cmp.kl if cmp else 0.0,
            "top1": cmp.top1 if cmp else 1.0,
            "seconds": seconds.get(label),
            "same": None if m is ref else same_weights(m, models["llm-compressor"]),
        }
        print(label, scores[label], flush=True)
    load.append(os.getloadavg()[0])
    return {
        "scores": scores,
        "peer_process_seconds": peer_process_seconds,
        "peer_versions": peer["versions"],
        "peer_actorder": peer["actorder"],
        "off_grid": off_grid,
        "load": load,
    }


def section(r: dict, args) -> str:
    s = r["scores"]
    peer = s["llm-compressor"]
    v = r["peer_versions"]
    rows = [
        "| quantizer | perplexity | KL (nats) | top-1 agree | weights identical to the peer's | quantize time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, sc in s.items():
        same = "" if sc["same"] is None else f"{100 * sc['same']:.1f}%"
        secs = "" if sc["seconds"] is None else f"{sc['seconds']:.1f}"
        rows.append(f"| {label} | {sc['ppl']:.2f} | {sc['kl']:.4f} | {sc['top1']:.3f} | {same} | {secs} |")
    verdicts = []
    for label, _, _ in variants(args.group_size):
        gap, ratio = s[label]["ppl"] / peer["ppl"] - 1, s[label]["seconds"] / peer["seconds"]
        verdicts.append(
            f"- {label}: perplexity vs peer {100 * gap:+.2f}% (goal: at most +1%): "
            f"**{'met' if gap <= 0.01 else 'NOT met'}**; time ratio qviz / peer {ratio:.2f} (goal: at most "
            f"0.5, i.e. qviz at least 2x faster): **{'met' if ratio <= 0.5 else 'NOT met'}**"
        )
    return "\n".join(
        [
            START,
            f"## GPTQ: qviz versus llm-compressor on {args.model} (bench/peer_gptq_llmcompressor.py)",
            "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
            f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs; 1-min load average "
            f"{', '.join(f'{x:.1f}' for x in r['load'])} (start, after each qviz run, after the peer, after "
            f"evaluation); {args.threads} torch thread(s) on each side; {platform.platform()}",
            f"- qviz side: torch {torch.__version__}; peer side (own venv, subprocess): llmcompressor "
            f"{v['llmcompressor']}, transformers {v['transformers']}, torch {v['torch']}",
            f"- command: `python bench/peer_gptq_llmcompressor.py {' '.join(sys.argv[1:])}`",
            f"- model: qviz's cached float folder of {args.model} (the dequantized GGUF release), float32 on "
            "both sides",
            f"- spec (all): INT4 symmetric, group {args.group_size}, act-order off, damping 0.01, block 128, "
            "every linear of the decoder layers (embeddings and lm_head float). Group 128 is impossible on "
            "SmolLM2 (in_features 576 is not a multiple of 128; llm-compressor 0.14 refuses such layers unless "
            'they are ignored). "qviz, peer\'s grid" = static_groups=True, clip_ratio=14/15 (scale absmax/7.5 '
            "from the original weights, as llm-compressor does); see `variants`",
            f"- calibration: {args.calib_n} x {args.calib_seqlen} tokens (`calib_windows`, seed 0), each "
            f"prefixed with BOS, identical rows on both sides; evaluation: {args.eval_n} x {args.eval_seqlen} "
            "Britannica tokens (`eval_windows`), scored by `qviz.eval` (BOS-prefixed)",
            "- time: qviz = `gptq.quantize_model`; peer = the `oneshot` call (its calibration forward passes, "
            "GPTQ and bookkeeping; model load and imports excluded: the whole peer process took "
            f"{r['peer_process_seconds']:.1f} s). Wall time on a shared machine",
            f"- check: the peer's weights lie on its INT4 grid (largest |W/scale - code| {r['off_grid']:.1e}); "
            f"act-order the peer's layers report after oneshot: {r['peer_actorder']}",
            "",
            "\n".join(rows),
            "",
            *verdicts,
            END,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", required=True, help="python of the venv holding llmcompressor")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--calib-n", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-n", type=int, default=2)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same on both sides")
    parser.add_argument("--peer-timeout", type=float, default=3600)
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    text = section(run(args), args)
    print(text, flush=True)
    if not args.no_write:
        results = (
            RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        )  # re-read: others append
        if START in results and END in results:
            results = results[: results.index(START)] + text + results[results.index(END) + len(END) :]
        else:
            results = results.rstrip("\n") + "\n\n" + text + "\n"
        RESULTS.write_text(results)


if __name__ == "__main__":
    main()
