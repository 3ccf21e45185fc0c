"""How long one slider move of the quantization explorer takes to compute, on a 4096 × 4096 weight.

Goal (issue 2): under 100 ms on the 2-core CPU of the development machines. Measures `explorer_state`, the pure
computation behind every slider move (quantize, dequantize, error per row and in total, the grid), for the settings a
learner reaches with the sliders. The histogram is computed once per (granularity, row) and reused, as the explorer
does. Prints a table and, with --record, appends it to bench/RESULTS.md.

    .venv/bin/python bench/slider_update.py [--size 4096] [--repeats 7] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from qviz.widgets.quantization import explorer_state, histogram, shown_values, spec_from_controls

SETTINGS = [
    (4, "per-tensor", True, 1.0),
    (4, "per-channel", True, 1.0),
    (3, "per-channel", False, 0.8),
    (4, "group 128", True, 1.0),
    (2, "group 32", False, 0.9),
    (8, "group 64", True, 1.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()

    w = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0)) * 0.02
    lines = [
        f"### Slider update, {args.size}×{args.size} weight ({datetime.date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Command: `python bench/slider_update.py --size {args.size} "
        f"--repeats {args.repeats}`. Median and best of {args.repeats} runs after one warm-up.",
        "",
        "| setting | median ms | best ms | goal |",
        "|---|---|---|---|",
    ]
    for controls in SETTINGS:
        spec = spec_from_controls(*controls)
        hist = histogram(shown_values(w, spec, 0))
        explorer_state(w, spec, 0, hist)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            explorer_state(w, spec, 0, hist)
            times.append((time.perf_counter() - start) * 1000)
        median = statistics.median(times)
        label = f"{spec.label}, clip {spec.clip_ratio:g}"
        lines.append(
            f"| {label} | {median:.0f} | {min(times):.0f} | {'✅' if median < 100 else '❌'} < 100 |"
        )
    table = "\n".join(lines)
    print(table)
    if args.record:
        results = Path(__file__).with_name("RESULTS.md")
        with results.open("a") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
