"""QAT (`qviz.qat`: straight-through estimator, distillation from the float model) against the post-training
methods at the same bits, on SmolLM2-135M: how much of rounding's KL gap each closes, and the CPU seconds it
took. Writes bench/RESULTS_QAT.md.

    python bench/qat.py                                  # INT3 asymmetric g64, 150 QAT steps
    python bench/qat.py --bits 4 --steps 300

Every method gets the same calibration windows (Britannica, disjoint from the evaluation windows); QAT trains on
them (distillation), GPTQ and AWQ calibrate on them. Evaluation: KL to the float reference
(the dequantized release, in float32), perplexity and top-1 agreement on held-out Britannica windows, with the
paired standard error of the KL difference to the best post-training method. "Gap closed" = 1 − KL / KL(RTN).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from _peer import write_section  # noqa: E402

from qviz import awq, gptq, qat, rtn  # noqa: E402
from qviz.data import calib_windows, eval_windows  # noqa: E402
from qviz.eval import ReferenceLogits, evaluate, paired_difference  # noqa: E402
from qviz.models import load_model  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_QAT.md")
MODEL = "smollm2-135m"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learn-scales", action="store_true")
    parser.add_argument("--calib-n", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--eval-n", type=int, default=4)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = QuantSpec(bits=args.bits, symmetric=False, group_size=args.group_size)
    reference, tokenizer = load_model(MODEL, fresh=False)
    calib = calib_windows(tokenizer, "britannica", seqlen=args.calib_seqlen, n=args.calib_n)
    ref = ReferenceLogits(
        reference, eval_windows(tokenizer, "britannica", seqlen=args.eval_seqlen, n=args.eval_n)
    )
    methods = {
        "RTN": lambda m: rtn.quantize_model(m, spec),
        "GPTQ": lambda m: gptq.quantize_model(m, spec, calib),
        "AWQ": lambda m: awq.quantize_model(m, spec, calib),
        f"QAT ({args.steps} steps{', learned scales' if args.learn_scales else ''})": lambda m: (
            qat.quantize_model(
                m,
                spec,
                calib,
                steps=args.steps,
                lr=args.lr,
                batch_size=args.batch_size,
                learn_scales=args.learn_scales,
                teacher=reference,
            )
        ),
    }
    rows = {}
    for label, run in methods.items():
        model = copy.deepcopy(reference)
        start = time.perf_counter()
        result = run(model)
        seconds = time.perf_counter() - start
        ev = evaluate(model, ref.windows, ref)
        rows[label] = dict(ev=ev, seconds=seconds, losses=result.options.get("losses"))
        print(f"{label}: KL {ev.kl:.4f}, ppl {ev.ppl:.2f}, {seconds:.0f} s", flush=True)
        del model

    best_ptq = min(("GPTQ", "AWQ"), key=lambda k: rows[k]["ev"].kl)
    rtn_kl = rows["RTN"]["ev"].kl
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"## {MODEL}, {spec.label}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit}; machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs; {platform.platform()}; torch {torch.__version__}",
        f"- command: `python bench/qat.py {' '.join(sys.argv[1:])}`",
        f"- calibration (QAT's training data too): {args.calib_n} × {args.calib_seqlen} Britannica tokens; evaluation: "
        f"{ref.windows.numel():,} held-out tokens; QAT: lr {args.lr}, batches of {args.batch_size} windows, distillation from the "
        "float model; reference: the dequantized release in float32",
        f"- float reference perplexity: {rows['RTN']['ev'].ref_ppl:.2f}",
        "",
        f"| method | KL (nats/token) | KL p99 | gap closed vs RTN | perplexity | top-1 | ΔKL vs {best_ptq} ± 2 s.e. | CPU time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        ev = r["ev"]
        d, se = paired_difference(ev.token_kl, rows[best_ptq]["ev"].token_kl)
        delta = "" if label == best_ptq else f"{d:+.4f} ± {2 * se:.4f}"
        lines.append(
            f"| {label} | {ev.kl:.4f} | {ev.kl_p99:.3f} | {1 - ev.kl / rtn_kl:.0%} | {ev.ppl:.2f} | {ev.top1:.1%} | "
            f"{delta} | {r['seconds']:.0f} |"
        )
    qat_label = next(k for k in rows if k.startswith("QAT"))
    losses = rows[qat_label]["losses"]
    tenth = max(1, len(losses) // 10)
    lines += [
        "",
        f"QAT's distillation loss (mean KL on its training batches), first and last {tenth} steps: "
        f"{sum(losses[:tenth]) / tenth:.4f} -> {sum(losses[-tenth:]) / tenth:.4f}.",
    ]
    marks = f"<!-- bench/qat.py {spec.label}: start -->", f"<!-- bench/qat.py {spec.label}: end -->"
    write_section(RESULTS, *marks, "\n".join([marks[0], *lines, marks[1]]))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
