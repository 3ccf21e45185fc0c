"""QAT: qviz.qat against torchao's QAT (the library a user would pick), on SmolLM2-135M, the same spec, data,
steps, optimizer and loss, side by side in one run. Writes a section of bench/RESULTS_QAT.md.

torchao is not a qviz dependency. Install its pure-Python QAT into a folder of its own and put it on the path:

    .venv/bin/pip install --target /tmp/torchao-pkg --no-deps torchao==0.18.0
    PYTHONPATH=/tmp/torchao-pkg .venv/bin/python bench/peer_qat_torchao.py --steps 100

What is the same on both sides: the float model (the dequantized release, float32), the decoder layers' linears
fake-quantized on INT3 asymmetric groups of 64 with min-max scales recomputed every step (qviz: learn_scales=False;
torchao: IntxFakeQuantizeConfig, is_dynamic=True), the calibration windows with BOS, their seeded order, batches
of `--batch-size`, Adam at `--lr`, and the loss (mean KL from the float model's logits, `qviz.qat`'s). Only the
fake quantization differs: whose code computes Q(W) and its straight-through gradient. After training, both are
scored with `qviz.eval.evaluate` on the same held-out Britannica windows.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peer import write_section  # noqa: E402

from qviz import qat, rtn  # noqa: E402
from qviz.arch import decoder_layers, family_of, linear_layers  # noqa: E402
from qviz.data import calib_windows, eval_windows, with_bos  # noqa: E402
from qviz.eval import ReferenceLogits, evaluate, paired_difference  # noqa: E402
from qviz.models import load_model  # noqa: E402
from qviz.quant import QuantSpec  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_QAT.md")
MODEL = "smollm2-135m"


def torchao_qat(model, reference, windows, args) -> tuple[list[float], int]:
    """torchao's fake quantization on the same linears, trained with qviz.qat's loop (same order, loss, Adam).
    Returns the loss of every step and how many weights trained."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    weight = IntxFakeQuantizeConfig(torch.int3, group_size=args.group_size, is_symmetric=False)
    targets = {
        linear
        for layer in decoder_layers(model)
        for linear in linear_layers(layer, family_of(model)).values()
    }
    quantize_(model, QATConfig(weight_config=weight, step="prepare"), filter_fn=lambda m, _: m in targets)
    ids, _ = with_bos(model, windows, "auto", "calibration windows")
    model.requires_grad_(False)
    trained = [m.weight for m in model.modules() if m in targets or type(m).__name__ == "FakeQuantizedLinear"]
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=args.lr)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))  # qviz.qat's order (seed 0)
    losses = []
    model.train()
    for step in range(args.steps):
        batch = ids[order[(torch.arange(args.batch_size) + step * args.batch_size) % len(ids)]]
        with torch.no_grad():
            target = reference(input_ids=batch).logits
        loss = qat._distillation_loss(model(input_ids=batch).logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses, len(trained)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--calib-n", type=int, default=64)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    args = parser.parse_args()
    try:
        import torchao
    except ImportError:
        sys.exit("torchao is not importable: see this script's docstring for the two commands")
    spec = QuantSpec(bits=3, symmetric=False, group_size=args.group_size)
    reference, tokenizer = load_model(MODEL, fresh=False)
    windows = calib_windows(tokenizer, "britannica", seqlen=args.calib_seqlen, n=args.calib_n)
    ref = ReferenceLogits(reference, eval_windows(tokenizer, "britannica", seqlen=512, n=2))
    rows = {}
    model = copy.deepcopy(reference)
    rtn.quantize_model(model, spec, progress=False)
    rows["RTN (no training)"] = dict(ev=evaluate(model, ref.windows, ref, progress=False), seconds=0.0)

    model = copy.deepcopy(reference)
    start = time.perf_counter()
    result = qat.quantize_model(
        model, spec, windows, steps=args.steps, lr=args.lr, batch_size=args.batch_size, teacher=reference
    )
    seconds = time.perf_counter() - start
    rows["qviz.qat"] = dict(ev=evaluate(model, ref.windows, ref, progress=False), seconds=seconds,
                            losses=result.options["losses"])  # fmt: skip

    model = copy.deepcopy(reference)
    start = time.perf_counter()
    losses, n_trained = torchao_qat(model, reference, windows, args)
    seconds = time.perf_counter() - start
    rows[f"torchao {torchao.__version__} QAT"] = dict(
        ev=evaluate(model, ref.windows, ref, progress=False), seconds=seconds, losses=losses
    )
    for label, r in rows.items():
        print(f"{label}: KL {r['ev'].kl:.4f}, ppl {r['ev'].ppl:.2f}, {r['seconds']:.0f} s", flush=True)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    q, t = rows["qviz.qat"], rows[f"torchao {torchao.__version__} QAT"]
    d, se = paired_difference(q["ev"].token_kl, t["ev"].token_kl)
    lines = [
        f"## qviz.qat against torchao's QAT: {MODEL}, {spec.label}, {args.steps} steps",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit}; machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, torchao {torchao.__version__}",
        f"- command: `PYTHONPATH=/tmp/torchao-pkg python bench/peer_qat_torchao.py {' '.join(sys.argv[1:])}`",
        f"- both: min-max scales every step (torchao is_dynamic=True), {args.calib_n} × {args.calib_seqlen} Britannica "
        f"calibration tokens in one seeded order, batches of {args.batch_size}, Adam lr {args.lr}, distillation KL "
        f"from the float model; torchao trained {n_trained} weights, qviz {len(result.linears)}",
        f"- evaluation: {ref.windows.numel():,} held-out Britannica tokens, KL to the float model",
        "",
        "| QAT | KL (nats/token) | perplexity | top-1 | loss, first → last 10 steps | CPU time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        ls = r.get("losses")
        curve = f"{sum(ls[:10]) / 10:.3f} → {sum(ls[-10:]) / 10:.3f}" if ls and len(ls) >= 10 else ""
        lines.append(
            f"| {label} | {r['ev'].kl:.4f} | {r['ev'].ppl:.2f} | {r['ev'].top1:.1%} | {curve} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        f"qviz − torchao, KL: {d:+.4f} ± {2 * se:.4f} (2 s.e., paired over tokens); time ratio qviz / torchao: "
        f"{q['seconds'] / t['seconds']:.2f}.",
    ]
    marks = "<!-- bench/peer_qat_torchao.py: start -->", "<!-- bench/peer_qat_torchao.py: end -->"
    write_section(RESULTS, *marks, "\n".join([marks[0], *lines, marks[1]]))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
