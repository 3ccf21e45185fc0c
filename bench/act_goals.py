"""Issue 12's three goals for activation quantization, on both offline models in one run; writes a section of
RESULTS_ACT.md.

    python bench/act_goals.py                       # smollm2-135m and gemma-3-270m, 16 x 256 calibration tokens

Per model, every setting quantizes a fresh copy of the float model (the dequantized GGUF release) and is scored
against it by `qviz.eval` on the same held-out Britannica windows (KL, perplexity, top-1 in one pass):

1. W8A8 with static per-tensor INT8 activations (one calibrated scale per linear input, `calibrate_act_scales`;
   weights INT8 per output channel, round-to-nearest), with and without SmoothQuant (α = 0.5, from the same
   calibration windows). Goal: KL with smoothing <= 0.5 x without.
2. W4A4 round-to-nearest: INT4 weights in groups of 64, INT4 per-token activations, with and without a Hadamard
   rotation of every linear's input (`qviz.rotate.rotate_linears`: block-diagonal where the width is not a
   power of two; the rotated weights W·R are what is rounded). Goal: KL with rotation <= 0.5 x without.
3. FP8 E4M3 W8A8 ("FP8 dynamic"): weights in E4M3 with one scale per output channel, activations in E4M3 with one
   scale per token (dynamic). Goal: perplexity within 1% of the float model's. Also recorded: FP8 activations
   with INT8 weights (notebook 08's FP8 rows), which separates the cost of the two.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from _peer import write_section  # noqa: E402

from qviz.act import (  # noqa: E402
    ActSpec,
    calibrate_act_scales,
    channel_absmax,
    fake_quantize_act,
    quantize_activations,
)
from qviz.arch import decoder_linears  # noqa: E402
from qviz.data import calib_windows, eval_windows  # noqa: E402
from qviz.eval import ReferenceLogits, evaluate  # noqa: E402
from qviz.models import load_model  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402
from qviz.rotate import rotate_linears  # noqa: E402
from qviz.rtn import quantize_model  # noqa: E402
from qviz.smooth import smooth_model  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_ACT.md")
START, END = "<!-- bench/act_goals.py: start -->", "<!-- bench/act_goals.py: end -->"
W8, W4 = QuantSpec(bits=8), QuantSpec(bits=4, group_size=64)
STATIC, A4 = ActSpec("int8", "per-tensor", static=True), ActSpec("int4", "per-token")
FP8 = ActSpec("fp8_e4m3", "per-token")  # on a weight (out, in): one scale per output channel


def score(model, ref: ReferenceLogits) -> dict:
    e = evaluate(model, ref.windows, ref, progress=False)
    return {"ppl": e.ppl, "kl": e.kl, "top1": e.top1}


def w8a8_static(model, calib, ref, smooth: bool) -> dict:
    if smooth:
        smooth_model(model, channel_absmax(model, calib), 0.5)
    quantize_model(model, W8, progress=False)
    with quantize_activations(model, STATIC, scales=calibrate_act_scales(model, calib, STATIC)):
        return score(model, ref)


def w4a4(model, ref, rotate: bool) -> dict:
    if not rotate:
        quantize_model(model, W4, progress=False)
        with quantize_activations(model, A4):
            return score(model, ref)
    with rotate_linears(model, "hadamard", 0, act_quant=lambda x: fake_quantize_act(x, A4)):
        quantize_model(model, W4, progress=False)  # the rotated weights W·R are rounded
        return score(model, ref)


def fp8_dynamic(model, ref, fp8_weights: bool = True) -> dict:
    if fp8_weights:
        with torch.no_grad():
            for linear in decoder_linears(model).values():
                linear.weight.copy_(fake_quantize_act(linear.weight, FP8))  # E4M3, a scale per output channel
    else:
        quantize_model(model, W8, progress=False)  # INT8 per output channel
    with quantize_activations(model, FP8):
        return score(model, ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma-3-270m"])
    parser.add_argument("--calib-n", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--eval-n", type=int, default=2)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    rows, verdicts, start, load = [], [], time.perf_counter(), [os.getloadavg()[0]]
    for name in args.models:
        reference, tok = load_model(name, fresh=False)
        calib = calib_windows(tok, "britannica", seqlen=args.calib_seqlen, n=args.calib_n)
        ref = ReferenceLogits(
            reference, eval_windows(tok, "britannica", seqlen=args.eval_seqlen, n=args.eval_n)
        )
        ref_ppl = ref.evaluation().ppl
        r = {
            "W8A8 static per-tensor INT8": w8a8_static(load_model(name)[0], calib, ref, smooth=False),
            "W8A8 static per-tensor INT8, SmoothQuant α = 0.5": w8a8_static(
                load_model(name)[0], calib, ref, True
            ),
            "W4A4 (g64, per-token)": w4a4(load_model(name)[0], ref, rotate=False),
            "W4A4 (g64, per-token), Hadamard rotation": w4a4(load_model(name)[0], ref, rotate=True),
            "FP8 E4M3 W8A8 (per-channel weights, per-token activations)": fp8_dynamic(
                load_model(name)[0], ref
            ),
            "INT8 weights (per channel), FP8 E4M3 activations (per token)": fp8_dynamic(
                load_model(name)[0], ref, fp8_weights=False
            ),
        }
        load.append(os.getloadavg()[0])
        rows += [(name, "float (the dequantized GGUF release)", {"ppl": ref_ppl, "kl": 0.0, "top1": 1.0})]
        rows += [(name, label, v) for label, v in r.items()]
        for label, v in r.items():
            print(
                f"{name:14s} {label:62s} ppl {v['ppl']:8.2f} KL {v['kl']:.4f} top-1 {v['top1']:.3f}",
                flush=True,
            )
        kl = {k: v["kl"] for k, v in r.items()}
        smooth_ratio = (
            kl["W8A8 static per-tensor INT8, SmoothQuant α = 0.5"] / kl["W8A8 static per-tensor INT8"]
        )
        rotate_ratio = kl["W4A4 (g64, per-token), Hadamard rotation"] / kl["W4A4 (g64, per-token)"]
        fp8_gap = r["FP8 E4M3 W8A8 (per-channel weights, per-token activations)"]["ppl"] / ref_ppl - 1
        fp8_act_gap = r["INT8 weights (per channel), FP8 E4M3 activations (per token)"]["ppl"] / ref_ppl - 1
        verdicts += [
            f"- {name}: SmoothQuant KL ratio {smooth_ratio:.2f} (goal <= 0.5): "
            f"**{'met' if smooth_ratio <= 0.5 else 'NOT met'}**; rotation KL ratio {rotate_ratio:.2f} (goal <= 0.5): "
            f"**{'met' if rotate_ratio <= 0.5 else 'NOT met'}**; FP8 perplexity {100 * fp8_gap:+.2f}% (goal within "
            f"1%): **{'met' if abs(fp8_gap) <= 0.01 else 'NOT met'}** (FP8 activations alone, INT8 weights: "
            f"{100 * fp8_act_gap:+.2f}%)"
        ]
    minutes = (time.perf_counter() - start) / 60
    lines = [
        START,
        "## Activation quantization: issue 12's goals on both offline models (bench/act_goals.py)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs; 1-min load average {', '.join(f'{x:.1f}' for x in load)} (start, after each "
        f"model); torch {torch.__version__}, {torch.get_num_threads()} threads; {minutes:.1f} min in all",
        f"- command: `python bench/act_goals.py {' '.join(sys.argv[1:])}`",
        f"- calibration: {args.calib_n} x {args.calib_seqlen} Britannica tokens; evaluation: {args.eval_n} x "
        f"{args.eval_seqlen} held-out tokens; KL against the float model (the dequantized GGUF release)",
        "",
        "| model | setting | perplexity | KL (nats) | top-1 agree |",
        "|---|---|---|---|---|",
        *(f"| {m} | {label} | {v['ppl']:.2f} | {v['kl']:.4f} | {v['top1']:.3f} |" for m, label, v in rows),
        "",
        *verdicts,
        END,
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(RESULTS, START, END, text)


if __name__ == "__main__":
    main()
