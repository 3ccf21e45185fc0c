"""AWQ versus round-to-nearest on the offline models: perplexity, KL, top-1 and quantize time, and how few
tokens AWQ's α search needs. Writes bench/RESULTS_AWQ.md.

    python bench/awq.py                                                   # both models, INT4 and INT3
    python bench/awq.py --models smollm2-135m --bits 4 --search-tokens 257 1028 --calib-n 16 --calib-seqlen 256

Evaluation: `qviz.data.eval_windows` (Britannica prose, BOS-prefixed by qviz.eval); calibration:
`qviz.data.calib_windows` from the disjoint calibration region, one window per forward call, so
`AWQConfig.search_tokens` = k·(seqlen + 1) runs the α search on k evenly spaced windows (BOS included).
Spec: asymmetric INT-b with the largest group size of 128/64 that divides every linear's in_features (the
paper's g128 on Gemma; g64 on SmolLM2, whose 576 rules out 128, and whose release is exactly asym g32).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from _peer import write_section  # noqa: E402

from qviz import awq, rtn  # noqa: E402
from qviz.arch import decoder_layers, family_of, linear_layers  # noqa: E402
from qviz.data import calib_windows, eval_windows  # noqa: E402
from qviz.eval import evaluate as evaluate_model  # noqa: E402
from qviz.models import load_model  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_AWQ.md")


def group_size_for(model) -> int:
    family = family_of(model)
    sizes = {
        lin.in_features for layer in decoder_layers(model) for lin in linear_layers(layer, family).values()
    }
    return next(g for g in (128, 64, 32) if all(s % g == 0 for s in sizes))


def evaluate(ref, model, ids) -> dict:
    ev = evaluate_model(model, ids, ref, progress=False)  # one pass: perplexity, KL and top-1 together
    return {"ppl": ev.ppl, "kl": ev.kl, "top1": ev.top1}


def run_model(name: str, args) -> list[dict]:
    ref, tok = load_model(name, fresh=False)
    ids = eval_windows(tok, seqlen=args.eval_seqlen, n=args.eval_n)
    cal = calib_windows(tok, seqlen=args.calib_seqlen, n=args.calib_n, seed=0)
    rows = [{"model": name, "method": "reference", "spec": "float32", "ppl": evaluate_model(ref, ids, progress=False).ppl,
             "kl": 0.0, "top1": 1.0}]  # fmt: skip
    print(rows[-1], flush=True)
    g = group_size_for(ref)
    for bits in args.bits:
        spec = QuantSpec(bits=bits, symmetric=False, group_size=g)
        runs = [("RTN", None)] + [("AWQ", awq.AWQConfig(search_tokens=t)) for t in args.search_tokens]
        if args.no_clip:
            runs.append(("AWQ no clip", awq.AWQConfig(search_tokens=args.search_tokens[0], clip=False)))
        for method, config in runs:
            model = copy.deepcopy(ref)
            start = time.perf_counter()
            if config is None:
                rtn.quantize_model(model, spec, progress=False)
            else:
                awq.quantize_model(model, spec, cal, config, progress=False)
            seconds = time.perf_counter() - start
            search = "" if config is None else str(config.search_tokens or "all")
            rows.append({"model": name, "method": method, "spec": spec.label, "search": search,
                         "seconds": seconds, **evaluate(ref, model, ids)})  # fmt: skip
            print(rows[-1], flush=True)
            del model
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | method | spec | search tokens | perplexity | KL (nats) | top-1 agree | quantize time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        secs = f"{r['seconds']:.0f}" if "seconds" in r else ""
        lines.append(f"| {r['model']} | {r['method']} | {r['spec']} | {r.get('search', '')} | {r['ppl']:.2f} "
                     f"| {r['kl']:.4f} | {r['top1']:.3f} | {secs} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma-3-270m"])
    parser.add_argument("--bits", nargs="+", type=int, default=[4, 3])
    parser.add_argument("--search-tokens", nargs="+", type=int, default=[257, 1028, 4112])
    parser.add_argument("--no-clip", action="store_true", help="also run AWQ without the clipping search")
    parser.add_argument("--eval-n", type=int, default=4)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--calib-n", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS_AWQ.md alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for name in args.models for row in run_model(name, args)]
    key = " ".join(args.models)
    start, end = f"<!-- bench/awq.py {key}: start -->", f"<!-- bench/awq.py {key}: end -->"
    text = "\n".join(
        [
            start,
            f"## AWQ versus RTN on {', '.join(args.models)} (bench/awq.py)",
            "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
            f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"{platform.processor() or platform.platform()}; torch {torch.__version__}",
            f"- command: `python bench/awq.py {' '.join(sys.argv[1:])}`",
            f"- evaluation: {args.eval_n} x {args.eval_seqlen} Britannica tokens (BOS-prefixed); calibration: "
            f"{args.calib_n} x {args.calib_seqlen} tokens (+ BOS) from the disjoint calibration region, one "
            "window per call; AWQ: α grid 0..0.95, clipping search (ratios 1..0.55) except q/k, asymmetric",
            "- reference: the dequantized GGUF release; quantize time is wall time on a shared machine",
            "",
            table(rows),
            end,
        ]
    )
    print(text)
    if not args.no_write:  # one section per list of models, between its markers: other sections stay
        write_section(RESULTS, start, end, text)


if __name__ == "__main__":
    main()
