"""qviz's GGUF files in llama.cpp itself (through llama-cpp-python): our k-quant blocks against llama.cpp's own
quantizer on the same float model, perplexity from llama.cpp's logits, bits per weight on disk, and tokens per
second on the CPU against PyTorch float32. Writes bench/RESULTS_LLAMACPP.md.

    python bench/llamacpp.py                          # Gemma-3-270M (the notebooks' model)
    python bench/llamacpp.py --models smollm2-135m   # or both

For each file type (Q4_K_M, what people download most; Q3_K_S, where llama.cpp stores ffn_down and attn_output in
Q3_K): llama.cpp's `llama_model_quantize` writes "theirs" from the float reference (the dequantized release, in a
float32 GGUF). "Ours" is the same file with every tensor whose type qviz writes (Q8_0, Q4_K, Q3_K) quantized by
`qviz.kquants` from the same floats: the tensors llama.cpp falls back to (Q5_0, IQ4_NL, Q6_K, ...: rows that are
not a multiple of 256, or a type qviz does not write) are copied from theirs, so the comparison is exactly our
quantizer against theirs. "Ours + imatrix" adds an importance matrix (mean x² per input column from calibration
text; llama.cpp's quantizer takes one only from its llama-imatrix tool, so theirs has none). Perplexity: llama.cpp's
logits on held-out Britannica windows (BOS first), with ± 2 standard errors of the paired per-token difference to
theirs. Speed: greedy decoding after a short prompt, 2 threads on both sides; PyTorch runs the float32 reference
with its KV cache. All of it is `qviz.llamacpp.compare`, the function notebook 09 shows.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from _peer import write_section  # noqa: E402

from qviz import llamacpp  # noqa: E402
from qviz.export import save_quantized  # noqa: E402
from qviz.gguf import read_gguf  # noqa: E402
from qviz.models import OFFLINE_MODELS, release_tensors  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_LLAMACPP.md")
THREADS = 2


def run(name, args):
    lines = []
    for file_type in args.file_types:
        r = llamacpp.compare(
            name, file_type, eval_n=args.eval_n, eval_seqlen=args.eval_seqlen, calib_n=args.calib_n,
            calib_seqlen=args.calib_seqlen, new_tokens=args.new_tokens, threads=THREADS, refresh=True,
        )  # fmt: skip
        mix = ", ".join(f"{kind} {n}" for kind, n in r["types"].items())
        lines += [
            f"**{file_type}**: qviz writes the {mix} tensors of llama.cpp's file, the rest are llama.cpp's own "
            "fallbacks (rows not a multiple of 256) and F32 norms. Our blocks equal llama.cpp's: "
            + "; ".join(f"{kind} {share:.4%}" for kind, share in r["same_blocks"].items())
            + f"; the whole file {'is' if r['identical_to_theirs'] else 'is not'} byte-identical to llama.cpp's.",
            "",
            "| file | bits/weight (file) | size (MB) | perplexity (llama.cpp) | Δ ppl vs theirs | Δ NLL ± 2 s.e. (nats/token) |",
            "|---|---|---|---|---|---|",
        ]
        theirs = r["files"]["theirs"]["ppl"]
        for label, f in r["files"].items():
            delta = (
                ""
                if label == "theirs"
                else f"{f['ppl'] / theirs - 1:+.2%} | {f['dnll']:+.4f} ± {2 * f['dnll_se']:.4f}"
            )
            lines.append(
                f"| {label} | {f['bits_per_weight']:.2f} | {f['size_mb']:.0f} | {f['ppl']:.3f} | {delta or ' |'} |"
            )
        speed = r["speed"]
        ratio = speed["llama.cpp ours + imatrix"] / speed["PyTorch float32"]
        lines += [
            "",
            f"Decoding {args.new_tokens} greedy tokens, {THREADS} threads: llama.cpp ({file_type}, ours + imatrix) "
            f"{speed['llama.cpp ours + imatrix']:.1f} tokens/s, PyTorch float32 {speed['PyTorch float32']:.1f} "
            f"tokens/s: **{ratio:.1f}×**.",
            "",
        ]

    # the release itself against llama.cpp's requantization of its dequantized weights: the grid is found again
    release, size = release_tensors(name)
    with tempfile.TemporaryDirectory(prefix="qviz-llamacpp-") as tmp:
        floats = save_quantized(name, {}, Path(tmp) / "float.gguf", format="gguf")
        again = read_gguf(
            llamacpp.quantize_file(floats, Path(tmp) / "q4_k_m.gguf", "Q4_K_M", threads=THREADS)
        )
    same_type = [k for k, t in release.items() if again[k].type == t.type]
    shares = [float((again[k].data == release[k].data).all(1).mean()) for k in same_type]
    n_weights = sum(int(np.prod(t.shape)) for t in release.values())
    lines += [
        f"The released file ({size / 1e6:.0f} MB, {8 * size / n_weights:.2f} bits per weight) against llama.cpp's "
        f"Q4_K_M of its dequantized weights: {len(same_type)} of {len(release)} tensors get the same type; "
        f"{sum(s == 1 for s in shares)} of those are byte-identical, and {np.mean(shares):.2%} of their blocks on "
        "average. Rounding a rounded model again finds its grid again: you cannot un-round a released model.",
        "",
    ]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["gemma-3-270m"], choices=list(OFFLINE_MODELS))
    parser.add_argument("--file-types", nargs="*", default=["Q4_K_M", "Q3_K_S"])
    parser.add_argument("--eval-n", type=int, default=4)
    parser.add_argument("--eval-seqlen", type=int, default=511)  # + BOS: 512 positions
    parser.add_argument("--calib-n", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    for name in args.models:
        start = time.perf_counter()
        body = run(name, args)
        import llama_cpp

        head = [
            f"## {name}",
            "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit}; machine: "
            f"{platform.machine()}, {os.cpu_count()} CPUs; {platform.platform()}",
            f"- command: `python bench/llamacpp.py --models {name} --file-types {' '.join(args.file_types)}` "
            f"({time.perf_counter() - start:.0f} s); llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__}",
            f"- evaluation: {args.eval_n} × {args.eval_seqlen} Britannica tokens (+ BOS); importance matrix: "
            f"{args.calib_n} × {args.calib_seqlen} calibration tokens; reference: the dequantized release "
            f"({OFFLINE_MODELS[name].gguf}) in float32",
            "",
        ]
        marks = f"<!-- bench/llamacpp.py {name}: start -->", f"<!-- bench/llamacpp.py {name}: end -->"
        write_section(RESULTS, *marks, "\n".join([marks[0], *head, *body, marks[1]]))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
