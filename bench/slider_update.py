"""How long one slider move of the quantization explorer takes to compute, on a 4096 × 4096 weight.

Goal (issue 2): under 100 ms on the 2-core CPU of the development machines. Measures `explorer_state`, the pure
computation behind every slider move (quantize, dequantize, error per row and in total, the grid), for the settings a
learner reaches with the sliders. The histogram is computed once per (granularity, row) and reused, as the explorer
does. Prints a table and, with --record, appends it to bench/RESULTS.md.

Wall time on a shared machine mostly measures the other tenants, so the table also gives the process's CPU time
(all threads together): with --threads 1 it is what one move costs on an otherwise idle core, and the wall time
on an idle machine is no larger.

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

from qviz.viz.quantization import explorer_state, histogram, shown_values  # noqa: E402
from qviz.widgets.quantization import spec_from_controls

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
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]

    w = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0)) * 0.02
    lines = [
        f"## Slider update (bench/slider_update.py), {args.size}×{args.size} weight ({datetime.date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), load average {load:.1f} when it started. Command: "
        f"`python bench/slider_update.py --size {args.size} --repeats {args.repeats} --threads {args.threads}`. "
        f"Median and best of {args.repeats} runs after one warm-up.",
        "",
        "| setting | wall median ms | wall best ms | CPU median ms | goal (< 100 ms) |",
        "|---|---|---|---|---|",
    ]
    for controls in SETTINGS:
        spec = spec_from_controls(*controls)
        hist = histogram(shown_values(w, spec, 0))
        explorer_state(w, spec, 0, hist)  # warm-up
        times, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            explorer_state(w, spec, 0, hist)
            times.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - start_cpu) * 1000)
        median, cpu_median = statistics.median(times), statistics.median(cpu)
        label = f"{spec.label}, clip {spec.clip_ratio:g}"
        verdict = "met" if min(median, cpu_median) < 100 else "not met"
        lines.append(f"| {label} | {median:.0f} | {min(times):.0f} | {cpu_median:.0f} | {verdict} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        results = Path(__file__).with_name("RESULTS.md")
        with results.open("a") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
