"""What the downloadable formats cost and how close they stay, measured on the offline models; writes
bench/RESULTS_FORMATS.md.

    python bench/formats.py

1. Bits per weight, honestly: each released GGUF file's tensors by type (their bytes × 8 / their weights, block
   scales and mins included), against the file's size on disk (which adds the header: metadata and vocabulary).
2. 4-bit formats on every decoder linear of both models (the dequantized release in float32, DESIGN.md): the
   relative weight error Σ(W − Q)² / ΣW² and the bits per weight of MXFP4 and NVFP4 (`qviz.microscaling`)
   against INT4 in groups of 32 and 16 (fp16 scales), each without and with a Hadamard rotation of the input
   dimension (`qviz.rotate.rotation`: blocks of 64 for SmolLM2's 576, 128 for Gemma's 640; W·H is orthogonal
   to W, so its error is the weight's own).
"""

from __future__ import annotations

import datetime
import platform
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing qviz

from _peer import write_section  # noqa: E402

from qviz.arch import decoder_linears  # noqa: E402
from qviz.gguf import read_gguf  # noqa: E402
from qviz.microscaling import bits_per_weight as fp4_bits  # noqa: E402
from qviz.microscaling import quantize_fp4  # noqa: E402
from qviz.models import OFFLINE_MODELS, _gguf_path, load_model  # noqa: E402
from qviz.quant import QuantSpec, bits_per_weight, fake_quantize  # noqa: E402
from qviz.rotate import rotation  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_FORMATS.md")
MODELS = ("smollm2-135m", "gemma-3-270m")


def file_bits() -> list[str]:
    lines = [
        "## 1. Bits per weight of the released files, by tensor type",
        "",
        "| model | type | tensors | weights (M) | bytes (MB) | bits per weight |",
        "|---|---|---|---|---|---|",
    ]
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            path = _gguf_path(OFFLINE_MODELS[name], Path(tmp))
            by_type = defaultdict(lambda: [0, 0, 0])
            for t in read_gguf(path).values():
                n = int(torch.tensor(t.shape).prod())
                by_type[t.type][0] += 1
                by_type[t.type][1] += n
                by_type[t.type][2] += t.data.size
            for kind, (count, n, size) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
                lines.append(
                    f"| {name} | {kind} | {count} | {n / 1e6:.2f} | {size / 1e6:.2f} | {8 * size / n:.3f} |"
                )
            n_all = sum(v[1] for v in by_type.values())
            bytes_all = sum(v[2] for v in by_type.values())
            on_disk = path.stat().st_size
            lines.append(
                f"| {name} | **all tensors** | | {n_all / 1e6:.2f} | {bytes_all / 1e6:.2f} | {8 * bytes_all / n_all:.3f} |"
            )
            totals.append(
                f"- {name}: the tensors hold {bytes_all / 1e6:.2f} MB ({8 * bytes_all / n_all:.3f} bits per weight); "
                f"the file on disk is {on_disk / 1e6:.2f} MB ({8 * on_disk / n_all:.3f} bits per weight), the "
                f"difference ({(on_disk - bytes_all) / 1e6:.2f} MB) is the header: metadata and the tokenizer's "
                f"vocabulary"
            )
    return lines + [""] + totals


def errors() -> list[str]:
    lines = [
        "## 2. 4-bit formats on the real weights (every decoder linear)",
        "",
        "| model | format | bits per weight | relative error | with Hadamard rotation | rotation's gain |",
        "|---|---|---|---|---|---|",
    ]
    formats = {
        "INT4 sym g32 (fp16 scale)": lambda W: fake_quantize(W, QuantSpec(bits=4, group_size=32)),
        "INT4 sym g16 (fp16 scale)": lambda W: fake_quantize(W, QuantSpec(bits=4, group_size=16)),
        "MXFP4 (E2M1, E8M0 scale per 32)": lambda W: quantize_fp4(W, "mxfp4").dequantize(),
        "NVFP4 (E2M1, E4M3 scale per 16, FP32 per tensor)": lambda W: quantize_fp4(W, "nvfp4").dequantize(),
    }
    bits = {
        "INT4 sym g32 (fp16 scale)": bits_per_weight(QuantSpec(bits=4, group_size=32), (1, 32)),
        "INT4 sym g16 (fp16 scale)": bits_per_weight(QuantSpec(bits=4, group_size=16), (1, 16)),
        "MXFP4 (E2M1, E8M0 scale per 32)": fp4_bits("mxfp4"),
        "NVFP4 (E2M1, E4M3 scale per 16, FP32 per tensor)": fp4_bits("nvfp4"),
    }
    for name in MODELS:
        model, _ = load_model(name)
        linears = {n: m.weight.detach().float() for n, m in decoder_linears(model).items()}
        rot = {k: rotation(k) for k in {W.shape[1] for W in linears.values()}}
        total = sum(W.pow(2).sum().item() for W in linears.values())
        for label, fq in formats.items():
            plain = sum((fq(W) - W).pow(2).sum().item() for W in linears.values()) / total
            rotated = (
                sum(
                    (fq(W @ rot[W.shape[1]]) - W @ rot[W.shape[1]]).pow(2).sum().item()
                    for W in linears.values()
                )
                / total
            )
            lines.append(
                f"| {name} | {label} | {bits[label]:.3f} | {plain:.5f} | {rotated:.5f} | {plain / rotated:.2f}x |"
            )
            print(lines[-1], flush=True)
    return lines


def main():
    head = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{platform.platform()}; torch {torch.__version__}",
        "- command: `python bench/formats.py`",
        "",
    ]
    text = "\n".join(
        [
            "<!-- bench/formats.py: start -->",
            *head,
            *file_bits(),
            "",
            *errors(),
            "<!-- bench/formats.py: end -->",
        ]
    )
    write_section(RESULTS, "<!-- bench/formats.py: start -->", "<!-- bench/formats.py: end -->", text)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
