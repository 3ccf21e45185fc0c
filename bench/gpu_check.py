"""Check qviz's INT4 kernels on a GPU: correctness, matmul latency / bandwidth, and end-to-end decoding.

    python bench/gpu_check.py              # on a CUDA machine (torch, transformers, triton; no internet)
    python bench/gpu_check.py --dry-run    # anywhere: tiny shapes on CPU, Triton under its interpreter

1. Correctness: every kernel (Triton W4A16, torch's tinygemm int4) against QuantLinear's reference forward
   (unpack -> dequantize -> float32 matmul) on Llama-3-8B layer shapes: K x N = 4096x4096 (q/o_proj),
   4096x14336 (gate/up_proj), 14336x4096 (down_proj); INT4 symmetric, group size 128.
2. Latency at batch 1, 16, 64 (CUDA events, warm-up, median) and achieved GB/s (bytes of weights, x and y
   moved / time), against a dense FP16 / BF16 matmul of the same shape.
3. Decoding: tokens/s and peak memory of the GPTQ INT4 model notebook 07 ships (qviz.runs.shipped_runs: the
   offline gemma-3-270m, its GPTQ result from the cache or computed here), in BF16 and with its decoder
   linears packed. Where the offline model is not installed (the lent GPU machines have no model packages),
   a random 1B-parameter Llama, quantized here by GPTQ on random token windows (the speed and memory of
   packed INT4 do not depend on which codes it holds; its text is noise).
Prints a table and writes it (device name, date) to bench/GPU_RESULTS.md. Finishes in a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from qviz import gptq  # noqa: E402
from qviz.qlinear import QuantLinear, quantize_linears, triton_available, weight_bytes  # noqa: E402
from qviz.quant import QuantSpec, quantize  # noqa: E402

SPEC = QuantSpec(bits=4, symmetric=True, group_size=128)
MAX_REL_ERR = 2e-2  # a kernel further than this from the reference forward computes something else
# INT4 batch-1 on 4096x14336 and end-to-end decoding >= 2.5x FP16; decoder linear weights >= 3.5x smaller
GOAL_SPEEDUP, GOAL_MEMORY = 2.5, 3.5


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--dry-run", action="store_true", help="tiny shapes on CPU (Triton interpreted): checks the script"
    )
    p.add_argument(
        "--out", default=None, help="results file (default bench/GPU_RESULTS.md; none in --dry-run)"
    )
    p.add_argument("--model", default="gemma-3-270m", help="qviz offline model name or local folder")
    p.add_argument("--tokens", type=int, default=128, help="tokens to decode per end-to-end run")
    return p.parse_args()


def timer(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median milliseconds of fn(): CUDA events on a GPU, perf_counter on a CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def int4_bytes(n: int, k: int) -> int:
    """Packed codes + fp16 scales + uint8 zero points for a (n, k) weight in groups of 128."""
    return n * k // 2 + (n * k // SPEC.group_size) * 3


def kernel_section(shapes, batches, device, dtypes, warmup, reps, rows, notes):
    from qviz.kernels.torch_int4 import check_int4_shapes

    for k, n in shapes:
        torch.manual_seed(0)
        w = torch.randn(n, k, device=device) * 0.02
        ql = QuantLinear.from_quantized(quantize(w, SPEC), scale_dtype=torch.float16)
        w_hat = ql.dequantized_weight(torch.float32)
        kernels = [("dense", dt, None) for dt in sorted(set(dtypes.values()), key=str)]
        if triton_available():
            kernels.append(("triton", dtypes["triton"], "triton"))
        try:
            check_int4_shapes(n, k, SPEC.group_size, 4)
            kernels.append(("torch_int4", dtypes["torch_int4"], "torch_int4"))
        except ValueError as e:
            notes.append(f"torch_int4 skipped on {k}x{n}: {e}")
        for m in batches:
            x32 = torch.randn(m, k, device=device)
            ref = x32 @ w_hat.T  # float32 reference of the quantized layer
            dense_ms = {}
            for name, dt, backend in kernels:
                x = x32.to(dt)
                if backend is None:
                    wd = w_hat.to(dt)
                    fn, moved = (lambda x=x, wd=wd: x @ wd.T), n * k * wd.element_size()
                else:
                    ql.backend = backend
                    fn, moved = (lambda x=x, ql=ql: ql(x)), int4_bytes(n, k)
                y = fn().float()
                rel_err = ((y - ref).abs().max() / ref.abs().max()).item()
                ms = timer(fn, device, warmup, reps)
                moved += (m * k + m * n) * x.element_size()
                if backend is None:
                    dense_ms[dt] = ms
                speedup = dense_ms[dt] / ms if dt in dense_ms else float("nan")
                label = f"{name} ({str(dt).removeprefix('torch.')})"
                rows.append((f"{k}x{n}", m, label, ms, moved / ms / 1e6, speedup, rel_err))
            if m == 1 and "triton" in [kn[0] for kn in kernels]:
                rows.append(
                    triton_sweep(
                        ql, x32.to(dtypes["triton"]), ref, device, warmup, reps, dense_ms, f"{k}x{n}"
                    )
                )
            ql.backend = "reference"  # drop the tinygemm copy before the next shape
        if device.type == "cuda":
            torch.cuda.empty_cache()


def triton_sweep(ql, x, ref, device, warmup, reps, dense_ms, shape):
    """The fastest of a few Triton configurations (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K; None = the default
    heuristic) at this batch: tuning data for the kernel's defaults."""
    from qviz.kernels.triton_w4a16 import w4a16_matmul

    configs = [
        (16, 32, 64, None),
        (16, 32, 64, 1),
        (16, 64, 128, 1),
        (16, 32, 128, 4),
        (16, 64, 128, 4),
        (16, 32, 64, 8),
    ]
    best = None
    for cfg in configs if device.type == "cuda" else configs[:2]:  # the CPU interpreter is slow
        fn = lambda cfg=cfg: w4a16_matmul(x, ql.qweight, ql.scales, ql.zero_point, ql.group_size, None, *cfg)
        ms = timer(fn, device, warmup, reps)
        if best is None or ms < best[0]:
            err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
            best = (ms, cfg, err)
    ms, cfg, err = best
    moved = int4_bytes(ql.out_features, ql.in_features) + (x.numel() + ref.numel()) * x.element_size()
    label = f"triton best of sweep {cfg} ({str(x.dtype).removeprefix('torch.')})"
    return (shape, x.shape[0], label, ms, moved / ms / 1e6, dense_ms[x.dtype] / ms, err)


def load_e2e_model(name: str, device, dry_run: bool):
    """(float32 model, tokenizer or None, its GPTQ INT4 QuantResult, description): the offline model with the
    result notebook 07 ships, else a random Llama of similar cost quantized here."""
    if not dry_run:
        try:
            from qviz.models import load_model
            from qviz.runs import quantize as run_quantize
            from qviz.runs import shipped_runs

            run = shipped_runs(name)["gptq"]
            result = run_quantize(run)  # from the cache when notebook 05 or 07 ran here; else computed now
            model, tok = load_model(name)
            return model.to(device), tok, result, f"{name}, {run.label} (notebook 07's model)"
        except Exception as e:  # not installed on this machine, or qviz.models missing: fall back, say so
            print(
                f"[gpu_check] {name} unavailable ({type(e).__name__}: {e}); using a random-weight Llama instead"
            )
    from transformers import LlamaConfig, LlamaForCausalLM

    size = (
        dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, vocab_size=256) if dry_run else {}
    )
    cfg = LlamaConfig(
        **(size or dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, vocab_size=32000)),
        num_attention_heads=16 if not dry_run else 4, num_key_value_heads=4 if not dry_run else 2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device=device).eval()
    windows = torch.randint(
        0, cfg.vocab_size, (8, 128 if not dry_run else 16), generator=torch.Generator().manual_seed(0)
    )
    result = gptq.quantize_model(model, SPEC, windows, progress=False)  # act-order, static groups
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    return (
        model,
        None,
        result,
        f"random Llama ({n_params:.1f}M params, {cfg.num_hidden_layers} layers), GPTQ {SPEC.label} on random tokens",
    )


def decoder_linear_bytes(model: nn.Module) -> int:
    return sum(
        weight_bytes(m)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, QuantLinear)) and "lm_head" not in n
    )


def e2e_section(args, device, dtype, backends, rows, notes):
    model, tok, result, desc = load_e2e_model(args.model, device, args.dry_run)
    model = model.to(dtype)
    if tok is not None:
        ids = tok("The history of the printing press", return_tensors="pt").input_ids.to(device)
    else:
        ids = torch.randint(0, model.config.vocab_size, (1, 8), device=device)
    gen = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)

    def run(label):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up (kernel compilation)
            t0 = time.perf_counter()
            out = model.generate(ids, **gen)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        text = tok.decode(out[0, ids.shape[1] :][:12]) if tok is not None else ""
        rows.append(
            (label, args.tokens / dt, peak, decoder_linear_bytes(model) / 2**20, weight_bytes(model) / 2**20)
        )
        if text:
            notes.append(f"{label} continues: {text!r}")

    run(f"{str(dtype).removeprefix('torch.')} dense")
    quantize_linears(model, result, backend=backends[0])  # exactly GPTQ's codes, packed
    model.to(dtype)  # the copied-in float tensors and the new layers' scales in the model's dtype
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for backend in backends:
        for m in model.modules():
            if isinstance(m, QuantLinear):
                m.backend = backend
        run(f"GPTQ INT4 g128 {backend}")
    return desc


def table(headers, rows, fmts) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(f.format(v) for f, v in zip(fmts, r)) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    if not torch.cuda.is_available() and not args.dry_run:
        print(
            "gpu_check: no CUDA GPU found (torch.cuda.is_available() is False). This script measures INT4 "
            "kernels on a GPU; run it on a CUDA machine, or pass --dry-run to exercise it on CPU."
        )
        return 2
    if args.dry_run and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported (lazily, by qlinear)
        device, shapes, batches, warmup, reps = torch.device("cpu"), [(256, 512), (512, 256)], (1, 4), 1, 3
        dtypes = {"triton": torch.float32, "torch_int4": torch.float32}  # the interpreter has no bf16
        args.tokens = min(args.tokens, 8)
        e2e_dtype, e2e_backends = torch.float32, ["torch_int4"] + (["triton"] if triton_available() else [])
    else:
        device, shapes, batches, warmup, reps = torch.device("cuda"), [(4096, 4096), (4096, 14336), (14336, 4096)], (1, 16, 64), 10, 50  # fmt: skip
        dtypes = {"triton": torch.float16, "torch_int4": torch.bfloat16}  # CUDA tinygemm takes bf16 only
        e2e_dtype, e2e_backends = torch.bfloat16, (["triton"] if triton_available() else []) + ["torch_int4"]
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({platform.processor() or 'dry run'})"
    )
    notes = [] if triton_available() else ["triton not installed: Triton kernel not measured"]

    krows, erows = [], []
    kernel_section(shapes, batches, device, dtypes, warmup, reps, krows, notes)
    desc = e2e_section(args, device, e2e_dtype, e2e_backends, erows, notes)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ktab = table(
        ["K x N", "batch", "kernel", "ms", "GB/s", "speed-up vs dense same dtype", "max rel err"],
        krows, ["{}", "{}", "{}", "{:.4f}", "{:.0f}", "{:.2f}x", "{:.1e}"],
    )  # fmt: skip
    etab = table(
        ["model", "tokens/s", "peak MiB", "decoder linears MiB", "all weights MiB"],
        erows, ["{}", "{:.1f}", "{:.0f}", "{:.1f}", "{:.1f}"],
    )  # fmt: skip
    worst = max((r[6] for r in krows if not r[2].startswith("dense")), default=float("nan"))
    goals = [  # half-precision inputs and outputs against a float32 reference: ~1e-3 (fp16) to ~1e-2 (bf16)
        f"- correctness: every INT4 kernel within {MAX_REL_ERR:g} (max |y - ref| / max |ref|) of the reference "
        f"forward, worst {worst:.1e}: {'MET' if worst <= MAX_REL_ERR else 'NOT MET'}"
    ]
    b1 = {r[2]: r for r in krows if r[0] == "4096x14336" and r[1] == 1}
    for label, r in b1.items():
        if not label.startswith("dense"):
            ok = r[5] >= GOAL_SPEEDUP
            goals.append(
                f"- {label} batch-1 4096x14336: {r[5]:.2f}x vs dense (goal >= {GOAL_SPEEDUP}x): {'MET' if ok else 'NOT MET'}"
            )
    if len(erows) > 1:  # the smallest INT4 row: torch_int4 also holds tinygemm's own tiled copy
        ratio = erows[0][3] / min(r[3] for r in erows[1:])
        goals.append(
            f"- decoder linear weights {ratio:.2f}x smaller (goal >= {GOAL_MEMORY}x): {'MET' if ratio >= GOAL_MEMORY else 'NOT MET'}"
        )
        fastest = max(erows[1:], key=lambda r: r[1])
        speedup = fastest[1] / erows[0][1]
        goals.append(
            f"- decoding at batch 1, {fastest[0]}: {speedup:.2f}x the dense model's tokens/s (goal >= "
            f"{GOAL_SPEEDUP}x): {'MET' if speedup >= GOAL_SPEEDUP else 'NOT MET'}"
        )
    report = "\n".join(
        [
            f"# qviz GPU check{' (DRY RUN, CPU, tiny shapes: not a measurement)' if args.dry_run else ''}",
            "",
            f"Device: {name}  ",
            f"Date: {date}  ",
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton "
            f"{__import__('triton').__version__ if triton_available() else 'not installed'}  ",
            f"Weights: {SPEC.label}; kernels compared with QuantLinear's reference forward (float32).",
            "",
            "## Matmul y = x @ W.T (W: N x K)",
            "",
            ktab,
            "",
            f"## Decoding {args.tokens} tokens, batch 1: {desc}",
            "",
            etab,
            "",
            "## Goals",
            "",
            *goals,
            "",
            "## Notes",
            "",
            *[f"- {n}" for n in notes],
            f"- total run time {time.perf_counter() - started:.0f} s",
            "",
        ]
    )
    print(report)
    out = args.out or (None if args.dry_run else Path(__file__).with_name("GPU_RESULTS.md"))
    if out:
        Path(out).write_text(report)
        print(f"[gpu_check] wrote {out}")
    return 0 if worst <= MAX_REL_ERR else 1  # the table is written either way


if __name__ == "__main__":
    sys.exit(main())
