"""Perplexity, KL and time of round-to-nearest and GPTQ on the offline models; writes bench/RESULTS.md.

    python bench/rtn_gptq.py                                  # both offline models, default settings
    python bench/rtn_gptq.py --models smollm2-135m --calib-n 16 --calib-seqlen 256   # quick

Evaluation: `qviz.data.eval_windows` (Britannica prose, non-overlapping, BOS-prefixed by qviz.eval);
calibration: `qviz.data.calib_windows` from the disjoint calibration region. The reference is the dequantized
GGUF release (see DESIGN.md). The group size is the largest of 128/64/32 that divides every linear's
in_features (SmolLM2's 576 rules out 128). Prints each row and (re)writes the model's section of RESULTS.md after each one.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from _peer import write_section  # noqa: E402

from qviz import gptq, rtn  # noqa: E402
from qviz.arch import decoder_layers, family_of, linear_layers  # noqa: E402
from qviz.data import calib_windows, eval_windows  # noqa: E402
from qviz.eval import evaluate  # noqa: E402
from qviz.models import load_model  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
MARK = "<!-- bench/rtn_gptq.py {}: {} -->"  # one section per model, replaced when that model is rerun


def group_size_for(model) -> int:
    family = family_of(model)
    sizes = {
        lin.in_features for layer in decoder_layers(model) for lin in linear_layers(layer, family).values()
    }
    return next(g for g in (128, 64, 32) if all(s % g == 0 for s in sizes))


def settings(g: int) -> list[tuple[str, QuantSpec, dict | None]]:
    """(method, spec, GPTQ options or None for RTN). GPTQ's defaults: act-order, static groups."""
    return [
        ("RTN", QuantSpec(bits=8), None),
        ("RTN", QuantSpec(bits=4), None),
        ("RTN", QuantSpec(bits=4, group_size=g), None),
        ("GPTQ", QuantSpec(bits=4, group_size=g), {}),
        ("RTN", QuantSpec(bits=3, group_size=g), None),
        ("GPTQ", QuantSpec(bits=3, group_size=g), {}),
        ("GPTQ", QuantSpec(bits=4, group_size=g), {"act_order": False}),
        ("GPTQ", QuantSpec(bits=4, group_size=g), {"true_sequential": False}),
        ("GPTQ", QuantSpec(bits=3, group_size=g), {"true_sequential": False}),
    ]


def run_model(name: str, args, rows: list[dict]) -> None:
    """Append one row per setting to `rows`, rewriting the results after each."""
    ref, tok = load_model(name, fresh=False)
    ids = eval_windows(tok, seqlen=args.eval_seqlen, n=args.eval_n)
    cal = calib_windows(tok, seqlen=args.calib_seqlen, n=args.calib_n, seed=0)
    ppl = evaluate(ref, ids, progress=False).ppl
    rows.append({"model": name, "method": "reference", "spec": "float32", "ppl": ppl, "kl": 0.0})
    write(rows, args)
    for method, spec, options in settings(group_size_for(ref)):
        model = copy.deepcopy(ref)
        start = time.perf_counter()
        if options is None:
            rtn.quantize_model(model, spec, progress=False)
        else:
            gptq.quantize_model(model, spec, cal, progress=False, **options)
        seconds = time.perf_counter() - start
        options = options or {}
        label = spec.label + (" act-order" if options.get("act_order", True) else " natural order")
        label += "" if options.get("true_sequential", True) else " all-at-once"
        ev = evaluate(model, ids, ref, progress=False)  # one pass: perplexity, KL and top-1
        rows.append(
            {
                "model": name,
                "method": method,
                "spec": label,
                "ppl": ev.ppl,
                "kl": ev.kl,
                "top1": ev.top1,
                "seconds": seconds,
            }
        )
        write(rows, args)
        del model


def table(rows: list[dict]) -> str:
    lines = [
        "| model | method | spec | perplexity | KL (nats) | top-1 agree | quantize time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        top1 = f"{r['top1']:.3f}" if "top1" in r else "1"
        secs = f"{r['seconds']:.1f}" if "seconds" in r else ""
        lines.append(
            f"| {r['model']} | {r['method']} | {r['spec']} | {r['ppl']:.2f} | {r['kl']:.4f} | {top1} | {secs} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma-3-270m"])
    parser.add_argument("--eval-n", type=int, default=4)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--calib-n", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models:
        run_model(name, args, [])


def write(rows: list[dict], args) -> None:
    """Print the latest row and (re)write this model's section of RESULTS.md with its rows so far."""
    print(rows[-1], flush=True)
    start, end = MARK.format(rows[0]["model"], "start"), MARK.format(rows[0]["model"], "end")
    section = "\n".join(
        [
            start,
            f"## RTN and GPTQ on {rows[0]['model']} (bench/rtn_gptq.py)",
            "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
            f"{os.cpu_count()} CPUs (1-min load average {os.getloadavg()[0]:.1f} at the last row), "
            f"{torch.get_num_threads()} torch threads, {platform.platform()}; torch {torch.__version__}",
            f"- command: `python bench/rtn_gptq.py {' '.join(sys.argv[1:])}`",
            f"- evaluation: {args.eval_n} x {args.eval_seqlen} Britannica tokens (BOS-prefixed); calibration: "
            f"{args.calib_n} x {args.calib_seqlen} tokens from the disjoint calibration region; GPTQ damp 0.01, "
            "block 128, all linears of the decoder layers (embeddings and lm_head stay float); GPTQ true-sequential "
            "(each group of linears calibrated on the outputs of the quantized groups before it) unless marked "
            "all-at-once (every H from the float layer)",
            "- reference: the dequantized GGUF release; quantize time is wall time on a shared machine",
            "",
            table(rows),
            end,
        ]
    )
    if not args.no_write:
        write_section(RESULTS, start, end, section)


if __name__ == "__main__":
    main()
