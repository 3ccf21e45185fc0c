"""GGUF k-quants written by qviz (llama.cpp's reference algorithm, `qviz.kquants`) on the offline models: Q4_K and
Q3_K with and without an importance matrix, and the leakage when the matrix comes from the evaluation text itself.
Writes bench/RESULTS_KQUANTS.md.

    python bench/kquants.py                              # both offline models
    python bench/kquants.py --models smollm2-135m       # one

Which weights: the k-quants store rows in super-blocks of 256, so only the decoder linears whose input width is a
multiple of 256 are quantized (llama.cpp itself falls back to another type for the others), and of those only
the ones released with more bits than the target and on another grid: the reference is the dequantized release,
and requantizing a Q4_K (or Q4_1) tensor to Q4_K finds its grid again (notebook 09). Everything else stays in
float, and the header says how many weights that is. Reference: the dequantized GGUF release in float32
(DESIGN.md). Evaluation: held-out Britannica windows (`qviz.data.eval_windows`); the importance matrix: mean x²
per input column on calibration windows from the disjoint calibration region (`qviz.data.calib_windows`), or,
for the leakage row, on the evaluation windows themselves.
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

from qviz import gguf, kquants  # noqa: E402
from qviz.arch import decoder_linears  # noqa: E402
from qviz.data import calib_windows, eval_windows  # noqa: E402
from qviz.eval import ReferenceLogits, evaluate  # noqa: E402
from qviz.models import load_model, release_types  # noqa: E402
from qviz.quant import QuantSpec, fake_quantize  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_KQUANTS.md")


def quantized_copy(model, names, kind, imatrix=None):
    """A copy of `model` whose linears `names` hold their k-quant values, decoded from the written blocks."""
    out = copy.deepcopy(model)
    linears = decoder_linears(out)
    for name in names:
        W = linears[name].weight
        if kind.startswith("RTN"):
            values = fake_quantize(W.detach(), QuantSpec(bits=4, symmetric=False, group_size=32))
        else:
            blocks = kquants.quantize(W, kind, None if imatrix is None else imatrix[name])
            values = gguf.dequantize(blocks)
        with torch.no_grad():
            W.copy_(values.to(W.dtype))
    return out


def weighted_error(model, quantized, names, imatrix):
    """Σ over the linears of Σ_ij imatrix_j (W_ij − Q_ij)²: the error the importance matrix asks to minimise,
    on the calibration data it came from (≈ the layers' output error with independent inputs)."""
    a, b = decoder_linears(model), decoder_linears(quantized)
    return sum(((a[n].weight - b[n].weight).pow(2) * imatrix[n]).sum().item() for n in names)


HONEST = {  # target -> release types it may be tested on: fewer bits than released, and not the release's own grid
    "Q4_K": {
        "Q5_0",
        "Q5_K",
        "Q6_K",
        "Q8_0",
        "F16",
        "BF16",
        "F32",
    },  # Q4_K rediscovers Q4_K's and Q4_1's grids
    "Q3_K": {"Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_K", "Q6_K", "Q8_0", "F16", "BF16", "F32"},
}


def run(model_name: str, args) -> list[str]:
    model, tok = load_model(model_name)
    released = release_types(model_name)
    linears = decoder_linears(model)
    eligible = [n for n, m in linears.items() if m.in_features % 256 == 0]
    calib = calib_windows(tok, "britannica", seqlen=args.calib_seqlen, n=args.calib_n)
    windows = eval_windows(tok, "britannica", seqlen=args.eval_seqlen, n=args.eval_n)
    imatrix = kquants.importance_matrix(model, calib, {n: linears[n] for n in eligible})
    leaked = kquants.importance_matrix(model, windows, {n: linears[n] for n in eligible})
    reference = ReferenceLogits(model, windows)
    ref = reference.evaluation()
    rows = [f"| {model_name} | reference (float32) | | | | {ref.ppl:.2f} | | | |"]
    n_all = sum(m.weight.numel() for m in linears.values())
    scope = {}
    for target in ("Q4_K", "Q3_K"):
        names = [n for n in eligible if released[n] in HONEST[target]]
        n_k = sum(linears[n].weight.numel() for n in names)
        scope[target] = (
            f"{target} rows: {len(names)} of {len(linears)} linears ({n_k / 1e6:.1f}M of {n_all / 1e6:.1f}M weights), "
            f"released as {', '.join(sorted({released[n] for n in names})) or '-'}"
        )
        if not names:
            continue
        settings = [  # (quantizer, importance matrix, where it came from)
            (target, None, ""),
            (target, imatrix, "calibration text"),
            (target, leaked, "the evaluation text (leak)"),
        ]
        if target == "Q4_K":
            settings.append(("RTN INT4 asym g32", None, ""))  # integer zero point, fp16 scale: 4.625 bits
        plain = None
        for kind, im, source in settings:
            t0 = time.perf_counter()
            q = quantized_copy(model, names, kind, im)
            seconds = time.perf_counter() - t0
            e = evaluate(q, reference.windows, reference, progress=False)
            werr = weighted_error(model, q, names, imatrix)
            plain = werr if plain is None else plain
            label = kind if im is None else f"{kind} + imatrix"
            rows.append(
                f"| {model_name} | {label} | {source} | {len(names)} | {werr / plain:.3f} | {e.ppl:.2f} | "
                f"{e.kl:.4f} | {e.top1:.3f} | {seconds:.1f} |"
            )
            print(rows[-1], flush=True)
            del q
    head = [
        f"## {model_name}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, {platform.platform()}; torch {torch.__version__}",
        f"- command: `python bench/kquants.py {' '.join(sys.argv[1:])}`",
        "- quantized: the decoder linears whose input width divides 256 (k-quant super-blocks) AND that were released "
        "with more bits than the target and not on its grid (requantizing a Q4_K or Q4_1 release to Q4_K gives its "
        "grid back); the rest stay float32. " + "; ".join(scope.values()),
        f"- evaluation: {args.eval_n} x {args.eval_seqlen} Britannica tokens (BOS-prefixed); importance matrix: "
        f"{args.calib_n} x {args.calib_seqlen} calibration tokens, or the evaluation windows (leak)",
        "- weighted error: Σ imatrix_j (W_ij − Q_ij)² with the calibration imatrix, relative to the plain row of the "
        "same block (RTN: relative to Q4_K); time: quantize + decode, seconds",
        "",
        "| model | quantizer | importance matrix from | linears | weighted error | perplexity | KL (nats) | top-1 | time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return head + rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["smollm2-135m", "gemma-3-270m"])
    parser.add_argument("--eval-n", type=int, default=4)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--calib-n", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    args = parser.parse_args()
    for name in args.models:
        start, end = f"<!-- bench/kquants.py {name}: start -->", f"<!-- bench/kquants.py {name}: end -->"
        write_section(RESULTS, start, end, "\n".join([start, *run(name, args), end]))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
