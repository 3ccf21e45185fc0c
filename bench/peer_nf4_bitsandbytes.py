"""NF4 as bitsandbytes stores it, against qviz.microscaling.quantize_nf4, on the real weights of both offline
models: the same absmax, the same codes, the same bytes. Run with a Python that has bitsandbytes (it is not a
qviz dependency: a 125 MB wheel of CUDA kernels), e.g. the peer venv of the other peer benchmarks:

    /path/to/peer-venv/bin/python bench/peer_nf4_bitsandbytes.py     # appends to bench/RESULTS_FORMATS.md

The weights come from the converted offline models (safetensors in qviz's cache; run `qviz doctor` once), read
without transformers. Only NF4 without double quantization is compared bit for bit: with it, bitsandbytes stores
the absmaxes in 8 bits with its own dynamic map, which qviz counts (bits per weight) but does not write.
"""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from _peer import write_section  # noqa: E402

from qviz.microscaling import dequantize_nf4, pack_nf4, quantize_nf4  # noqa: E402
from qviz.models import cached_model_dir  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS_FORMATS.md")


def main():
    lines = [
        "<!-- bench/peer_nf4_bitsandbytes.py: start -->",
        "## 3. NF4 against bitsandbytes",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.platform()}; "
        f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__} (CPU)",
        "- command: `<peer venv>/bin/python bench/peer_nf4_bitsandbytes.py`; bitsandbytes: "
        "`F.quantize_4bit(W, quant_type='nf4', blocksize=64, compress_statistics=False)`",
        "",
        "| model | 2-D weights | values | absmax identical | packed bytes identical | dequantized identical |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("smollm2-135m", "gemma-3-270m"):
        folder = cached_model_dir(name)
        tensors = {}
        for f in sorted(folder.glob("*.safetensors")):
            tensors.update(load_file(f))
        weights = [
            t.float() for k, t in tensors.items() if t.dim() == 2 and t.shape[1] % 64 == 0 and "layers." in k
        ]
        n = same_absmax = same_bytes = same_values = 0
        for W in weights:
            q, state = F.quantize_4bit(W, quant_type="nf4", blocksize=64, compress_statistics=False)
            theirs = F.dequantize_4bit(q, state)
            codes, absmax = quantize_nf4(W)
            n += W.numel()
            same_absmax += torch.equal(absmax.flatten(), state.absmax.flatten())
            same_bytes += torch.equal(pack_nf4(codes), q.flatten())
            same_values += torch.equal(dequantize_nf4(codes, absmax), theirs.reshape(W.shape))
        k = len(weights)
        lines.append(
            f"| {name} | {k} | {n / 1e6:.1f}M | {same_absmax}/{k} | {same_bytes}/{k} | {same_values}/{k} |"
        )
        print(lines[-1], flush=True)
    lines.append("<!-- bench/peer_nf4_bitsandbytes.py: end -->")
    write_section(RESULTS, lines[0], lines[-1], "\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
