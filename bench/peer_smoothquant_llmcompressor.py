"""qviz's SmoothQuant + W8A8 against llm-compressor's on the same model and windows, in one run (issue 12);
writes a section of RESULTS_ACT.md.

    python bench/peer_smoothquant_llmcompressor.py --peer-python /work/peer-venv/bin/python --calib-n 16 \
        --calib-seqlen 256

Both sides smooth with α = 0.5 (`--alpha`) from the calibration windows' channel maxima, then quantize every
decoder linear's weight to INT8 per output channel (round-to-nearest, symmetric) and its input to INT8 per token
(dynamic, symmetric): llm-compressor's "W8A8" preset, its SmoothQuant example. qviz smooths every scale group of a
layer (`qviz.smooth.smooth_model`: the norms before q/k/v and gate/up, v -> o, up -> down); the peer its default
mappings (the two norms). The peer runs in its own virtual environment as a subprocess
(bench/peer_llmcompressor_smoothquant_side.py) on qviz's cached float folder, and returns the logits of its own
quantized forward on the evaluation rows (compressed-tensors fake-quantizes weights and activations), its
dequantized weights and its smoothed norms.

Rows: the float reference; W8A8 without smoothing; qviz's SmoothQuant; the peer's, as its own runtime computes
it; the peer's smoothed INT8 weights under qviz's activation quantizer (a cross-check: the same activation
quantizer as qviz's row, so only the smoothing and weights differ). Each quantized model is also measured with
static per-tensor INT8 activations (one calibrated scale per input: the SmoothQuant paper's cheapest setting),
where smoothing matters most. KL, perplexity and top-1 come from `qviz.eval` against the float model's logits
on the same evaluation windows. Time: qviz's channel maxima + smoothing + weight rounding against the peer's
`oneshot` call (its calibration pass, smoothing and quantization), one torch thread each by default.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from _peer import (  # noqa: E402
    add_common_args,
    load_peer_weights,
    machine_line,
    prepare,
    run_peer,
    versions_line,
    write_section,
)

from qviz.act import ActSpec, calibrate_act_scales, channel_absmax, quantize_activations  # noqa: E402
from qviz.eval import Evaluation, ReferenceLogits, _token_stats, evaluate  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402
from qviz.rtn import quantize_model  # noqa: E402
from qviz.smooth import smooth_model  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_ACT.md")
PEER_SIDE = Path(__file__).with_name("peer_llmcompressor_smoothquant_side.py")
START, END = (
    "<!-- bench/peer_smoothquant_llmcompressor.py: start -->",
    "<!-- bench/peer_smoothquant_llmcompressor.py: end -->",
)
PER_TOKEN = ActSpec("int8", "per-token")
STATIC = ActSpec("int8", "per-tensor", static=True)


def score_logits(ref: ReferenceLogits, logits: list[torch.Tensor]) -> dict:
    """KL, perplexity and top-1 of logits computed elsewhere (the peer's process), against the reference's, by
    the same per-token formulas `qviz.eval.evaluate` uses (`_token_stats`)."""
    stats = [_token_stats(ref.logits(i), z, ref.ids[i, 1:], ref.stats(i)) for i, z in enumerate(logits)]
    nll, kl = (torch.cat([s[k] for s in stats]).double() for k in ("nll", "kl"))
    agree = torch.cat([s["agree"] for s in stats]).double()
    return {"ppl": float(nll.mean().exp()), "kl": float(kl.mean()), "top1": float(agree.mean())}


def score(model, ref: ReferenceLogits, spec: ActSpec, calib) -> dict:
    scales = calibrate_act_scales(model, calib, spec) if spec.static else None
    with quantize_activations(model, spec, scales=scales):
        e: Evaluation = evaluate(model, ref.windows, ref, progress=False)
    return {"ppl": e.ppl, "kl": e.kl, "top1": e.top1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, RESULTS)
    parser.add_argument("--alpha", type=float, default=0.5)
    args = parser.parse_args()
    ref_model, model_dir, cal, ids, bos = prepare(args)
    ref = ReferenceLogits(ref_model, ids)
    load = [os.getloadavg()[0]]

    plain = copy.deepcopy(ref_model)
    quantize_model(plain, QuantSpec(bits=8), progress=False)

    start = time.perf_counter()
    mine = copy.deepcopy(ref_model)
    smooth_model(mine, channel_absmax(mine, cal), args.alpha)
    quantize_model(mine, QuantSpec(bits=8), progress=False)
    seconds = {"qviz": time.perf_counter() - start}
    load.append(os.getloadavg()[0])

    peer, process_s = run_peer(args.peer_python, PEER_SIDE, model_dir, cal, bos, ["--alpha", str(args.alpha)],
                               args.threads, args.peer_timeout, extra={"eval": ref.ids})  # fmt: skip
    seconds["peer"] = peer["seconds"]
    load.append(os.getloadavg()[0])
    theirs = copy.deepcopy(ref_model)
    off_grid = load_peer_weights(theirs, peer, bits=8)

    rows = [
        ("float (the dequantized GGUF release)", "-", {"ppl": ref.evaluation().ppl, "kl": 0.0, "top1": 1.0})
    ]
    for label, model in [("W8A8, no smoothing", plain), ("qviz SmoothQuant", mine)]:
        for spec in (PER_TOKEN, STATIC):
            rows.append((label, spec.label, score(model, ref, spec, cal)))
    rows.append(
        ("llm-compressor SmoothQuant, its own runtime", PER_TOKEN.label, score_logits(ref, peer["logits"]))
    )
    for spec in (PER_TOKEN, STATIC):
        rows.append(("llm-compressor's smoothed weights, qviz's activations", spec.label,
                     score(theirs, ref, spec, cal)))  # fmt: skip
    load.append(os.getloadavg()[0])
    for label, acts, r in rows:
        print(
            f"{label:55s} {acts:24s} ppl {r['ppl']:8.2f} KL {r['kl']:.4f} top-1 {r['top1']:.3f}", flush=True
        )

    kl = {(label, acts): r["kl"] for label, acts, r in rows}
    ours, peers = (
        kl["qviz SmoothQuant", PER_TOKEN.label],
        kl["llm-compressor SmoothQuant, its own runtime", PER_TOKEN.label],
    )
    ratio = seconds["qviz"] / seconds["peer"]
    lines = [
        START,
        f"## SmoothQuant + W8A8: qviz versus llm-compressor on {args.model} (bench/{Path(__file__).name})",
        "",
        machine_line(load, args.threads),
        versions_line(peer["versions"]),
        f"- command: `python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        f"- calibration: {args.calib_n} x {args.calib_seqlen} Britannica tokens (BOS added), the same on both "
        f"sides; evaluation: {args.eval_n} x {args.eval_seqlen} held-out tokens; α = {args.alpha}",
        "- weights INT8 per output channel (round-to-nearest, symmetric); activations INT8 per token (dynamic), "
        "or per tensor with a static calibrated scale; qviz smooths the norms before q/k/v and gate/up, v -> o "
        f"and up -> down, the peer its default mappings ({', '.join(peer['smoothed']) or 'not reported'})",
        f"- the peer's weights lie on its INT8 grid within {off_grid:.1e} (codes from W / scale)",
        f"- time: qviz {seconds['qviz']:.1f} s (channel maxima, smoothing, rounding); peer {seconds['peer']:.1f} s "
        f"(its `oneshot` call; the whole process {process_s:.1f} s)",
        "",
        "| model | activations | perplexity | KL (nats) | top-1 agree |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {acts} | {r['ppl']:.2f} | {r['kl']:.4f} | {r['top1']:.3f} |"
            for label, acts, r in rows
        ),
        "",
        f"- qviz's KL against the peer's own runtime (per-token INT8): {ours:.4f} vs {peers:.4f} (goal: no worse): "
        f"**{'met' if ours <= peers else 'NOT met'}**; time ratio qviz / peer {ratio:.2f}",
        END,
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(args.results, START, END, text)


if __name__ == "__main__":
    main()
