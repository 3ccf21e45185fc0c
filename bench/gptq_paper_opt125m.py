"""Reproduce the GPTQ paper's OPT-125M WikiText-2 row with qviz (needs internet: model and datasets hub).

    python bench/gptq_paper_opt125m.py                    # FP16 reference, RTN 4-bit, GPTQ 4-bit
    python bench/gptq_paper_opt125m.py --bits 3           # the 3-bit row (paper: RTN ~1.3e3, GPTQ 53.85)
    python bench/gptq_paper_opt125m.py --calib wikitext2  # calibrate on WikiText-2 train if C4 is unreachable

Paper (Frantar et al. 2022, Table 3, OPT-125M, WikiText-2 perplexity): FP16 27.65, RTN-4bit 37.28,
GPTQ-4bit 31.12. Protocol, as in the reference code (IST-DASLab/gptq, opt.py and datautils.py):

- calibration: 128 random 2048-token windows, each from a random C4 training document (shard
  en/c4-train.00000-of-01024.json.gz) longer than 2048 tokens; seed 0. No BOS is prepended.
- quantization: every linear of the decoder layers, per-channel (no groups), asymmetric, damp 0.01, lazy
  batches of 128 columns, no act-order; layers in sequence, each calibrated on the quantized model's outputs.
  RTN uses the same grid without data.
- evaluation: WikiText-2 raw test split joined with "\\n\\n", tokenized once, cut into non-overlapping
  2048-token windows (the remainder dropped); ppl = exp(mean NLL over the predicted tokens).

Expect a few tenths of perplexity from the paper: C4 sampling, fp32 instead of fp16 on a CPU, library
versions.
On a 2-core CPU the GPTQ run takes tens of minutes; use --device cuda where there is a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from qviz import gptq, rtn  # noqa: E402
from qviz.eval import perplexity  # noqa: E402
from qviz.models import hub_reachable  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402

PAPER = {  # OPT-125M, WikiText-2 (Table 3 of the paper)
    16: {"FP16": 27.65},
    4: {"RTN": 37.28, "GPTQ": 31.12},
    3: {"RTN": 1.3e3, "GPTQ": 53.85},
}
C4_SHARD = "en/c4-train.00000-of-01024.json.gz"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="facebook/opt-125m", help="Hugging Face id (OPT family, as the paper)")
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8), help="code width")
    p.add_argument(
        "--group-size", type=int, default=None, help="group size (default: per-channel, the paper)"
    )
    p.add_argument("--calib", default="c4", choices=("c4", "wikitext2"), help="calibration text")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per window (calibration and evaluation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--damp", type=float, default=0.01, help="relative damping λ / mean(diag H)")
    p.add_argument(
        "--act-order", action="store_true", help="columns by descending diag(H) (not in the paper)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward pass")
    args = p.parse_args(argv)
    if args.nsamples < 1 or args.seqlen < 2:
        p.error("--nsamples must be >= 1 and --seqlen >= 2")
    return args


def require_online() -> None:
    """Fail fast, before loading anything, when the hub or `datasets` is missing."""
    problems = []
    if importlib.util.find_spec("datasets") is None:
        problems.append("the `datasets` package is not installed (pip install datasets)")
    if not hub_reachable():
        problems.append("huggingface.co is not reachable (offline, or HF_HUB_OFFLINE is set)")
    if problems:
        sys.exit(
            "gptq_paper_opt125m needs the Hugging Face hub for facebook/opt-125m, WikiText-2 and C4:\n  - "
            + "\n  - ".join(problems)
            + "\nOffline, notebooks/05_gptq.ipynb runs the same comparison on gemma-3-270m with local text."
        )


def wikitext2_test(tokenizer, seqlen: int) -> torch.Tensor:
    """(n, seqlen) non-overlapping windows of the tokenized WikiText-2 test split (remainder dropped)."""
    import datasets

    text = "\n\n".join(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])
    ids = tokenizer(text, return_tensors="pt").input_ids[0]  # one BOS at the very start, as the reference
    n = ids.numel() // seqlen
    return ids[: n * seqlen].reshape(n, seqlen)


def calibration(tokenizer, name: str, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """(nsamples, seqlen) random windows: one per random C4 document longer than seqlen, or from the
    WikiText-2 train split joined into one stream."""
    import datasets

    rng = random.Random(seed)
    if name == "wikitext2":
        text = "\n\n".join(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train")["text"])
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)]
        return torch.stack([ids[s : s + seqlen] for s in starts])
    docs = datasets.load_dataset("allenai/c4", data_files={"train": C4_SHARD}, split="train")
    windows = []
    while len(windows) < nsamples:
        ids = tokenizer(docs[rng.randint(0, len(docs) - 1)]["text"], return_tensors="pt").input_ids[0]
        if ids.numel() > seqlen:
            start = rng.randint(0, ids.numel() - seqlen - 1)
            windows.append(ids[start : start + seqlen])
    return torch.stack(windows)


def main(argv=None) -> dict:
    args = parse_args(argv)
    require_online()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32

    def load():
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device)
        return model.eval()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    test = wikitext2_test(tokenizer, args.seqlen)
    calib = calibration(tokenizer, args.calib, args.nsamples, args.seqlen, args.seed)
    spec = QuantSpec(bits=args.bits, symmetric=False, group_size=args.group_size)
    print(
        f"{args.model}: {len(test)} test windows of {args.seqlen}; "
        f"{len(calib)} {args.calib} calibration windows"
    )

    def ppl(model):
        return perplexity(model, test, bos_token_id=None)  # windows are raw token slices, as the reference

    results = {"FP16": ppl(load())}
    model = load()
    rtn.quantize_model(model, spec)
    results["RTN"] = ppl(model)
    model = load()
    start = time.perf_counter()
    gptq.quantize_model(
        model,
        spec,
        calib,
        damp=args.damp,
        act_order=args.act_order,
        batch_size=args.batch_size,
        bos_token_id=None,
    )
    seconds = time.perf_counter() - start
    results["GPTQ"] = ppl(model)

    paper = {**PAPER[16], **PAPER.get(args.bits, {})} if args.group_size is None else PAPER[16]
    print(f"\n{spec.label}, calibration {args.calib}, GPTQ took {seconds:.0f} s on {args.device}")
    print(f"{'method':8s} {'qviz':>9s} {'paper':>9s}")
    for method, value in results.items():
        ref = paper.get(method)
        print(f"{method:8s} {value:9.2f} {ref if ref is not None else float('nan'):9.2f}")
    return results


if __name__ == "__main__":
    main()
