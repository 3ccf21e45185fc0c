"""How long a learner waits: every notebook's Run All, cold (first run on a fresh machine) and warm, as a learner
runs it (not the test run's QVIZ_FAST mode), plus `qviz prepare`; writes bench/NOTEBOOK_TIMES.md (and .json: every cell's time).

    python bench/notebook_times.py                      # fresh clone, cold then warm, every notebook
    python bench/notebook_times.py --notebooks 05 07    # some of them
    python bench/notebook_times.py --prepare            # also time `qviz prepare` (cold), then the notebooks warm
    python bench/notebook_times.py --outputs DIR        # and keep every executed notebook there, to read

"Fresh": the notebooks run from a `git clone` of this checkout (HEAD) into a temporary folder, with an empty
results cache ($QVIZ_CACHE points to a new folder). The one-time model conversion is left out of the goal (a
workshop does it ahead with `qviz doctor`/`make lab`, and the issue says so): the converted models are linked
into the new cache. Cold = that first Run All; warm = Run All again. Each cell's time is recorded, so the
report shows where a notebook's time goes. The machine's 1-minute load average is recorded before and after
each notebook: these 2-core machines are shared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_name("NOTEBOOK_TIMES.md")
GOAL_COLD_S, GOAL_WARM_S, GOAL_SEQUENCE_WARM_S, GOAL_PREPARE_S = 300, 60, 900, 1800


def run_notebook(path: Path, env: dict, keep: Path | None = None) -> dict:
    """Execute `path` with nbclient in a child process (its own kernel); return seconds and per-cell seconds.
    keep: write the executed notebook there."""
    script = r"""
import json, sys, time, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
client = NotebookClient(nb, kernel_name="python3", timeout=3600, resources={"metadata": {"path": sys.argv[2]}})
cells, errors = [], []
with client.setup_kernel():
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        start = time.perf_counter()
        client.execute_cell(cell, index)
        cells.append((index, cell.source.splitlines()[0][:70] if cell.source else "", time.perf_counter() - start))
        errors += [o.get("ename", "") for o in cell.outputs if o.output_type == "error"]
if len(sys.argv) > 3:  # --outputs: keep the executed notebook, to read what it showed
    nbformat.write(nb, sys.argv[3])
import resource  # the kernel has exited and been waited for: its peak resident memory, in KiB on Linux
peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
print(json.dumps({"cells": cells, "errors": errors, "peak_gb": peak_gb}))
"""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path), str(path.parent), *([str(keep)] if keep else [])],
        env=env, capture_output=True, text=True, timeout=7200,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{path.name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="*", help="number prefixes, e.g. 04 05 (default: all)")
    parser.add_argument(
        "--prepare", action="store_true", help="time `qviz prepare` cold before the warm runs"
    )
    parser.add_argument(
        "--no-cold", action="store_true", help="skip the cold runs (with --prepare: prepare, then warm)"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--outputs", type=Path, help="keep each executed notebook here (NN-cold.ipynb, NN-warm.ipynb)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qviz-times-"))
    clone = work / "qviz"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    head = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    cache = work / "cache"
    models = Path(os.environ.get("QVIZ_CACHE") or Path.home() / ".cache" / "qviz") / "models"
    (cache / "models").mkdir(parents=True)
    for folder in models.iterdir() if models.exists() else []:
        if (folder / "qviz.json").exists():
            (cache / "models" / folder.name).symlink_to(folder)  # converted once: not part of the goal
    env = {k: v for k, v in os.environ.items() if k != "QVIZ_FAST"}
    env.update(QVIZ_CACHE=str(cache), PYTHONPATH=str(clone))
    notebooks = sorted((clone / "notebooks").glob("*.ipynb"))
    if args.notebooks:
        notebooks = [p for p in notebooks if p.name[:2] in args.notebooks]

    rows = []
    phases = ([] if args.no_cold else ["cold"]) + ["warm"]
    prepare_seconds = None
    for phase in phases:
        if phase == "warm" and args.prepare:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "qviz.cli", "prepare"], env=env, check=True)
            prepare_seconds = time.perf_counter() - start
            print(f"qviz prepare: {prepare_seconds:.0f} s", flush=True)
        for path in notebooks:
            before = os.getloadavg()[0]
            keep = args.outputs / f"{path.name[:2]}-{phase}.ipynb" if args.outputs else None
            if keep:
                keep.parent.mkdir(parents=True, exist_ok=True)
            r = run_notebook(path, env, keep)
            after = os.getloadavg()[0]
            slow = sorted(r["cells"], key=lambda c: -c[2])[:3]
            rows.append({"notebook": path.name, "phase": phase, "seconds": r["seconds"], "load": (before, after),
                         "slowest": slow, "cells": r["cells"], "errors": r["errors"], "peak_gb": r["peak_gb"]})  # fmt: skip
            print(
                f"{phase:4s} {path.name:32s} {r['seconds']:7.1f} s  load {before:.1f} -> {after:.1f}",
                flush=True,
            )
    shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(report(rows, prepare_seconds, head, args))
    args.out.with_suffix(".json").write_text(
        json.dumps({"commit": head, "prepare_s": prepare_seconds, "rows": rows})
    )
    print(f"wrote {args.out} and {args.out.with_suffix('.json').name} (every cell's time)")


def _cpu() -> str:
    """The CPU's model name and clock (/proc/cpuinfo): two "2-core" machines can differ by 2x in these runs."""
    try:
        lines = [line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line]
        info = {key.strip(): value for key, value in lines}
        return f"{info['model name'].strip()}, {float(info['cpu MHz']):.0f} MHz"
    except (OSError, KeyError, ValueError):
        return platform.processor() or "CPU model unknown"


def report(rows: list[dict], prepare_seconds: float | None, head: str, args) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# How long a learner waits: Run All of every notebook (bench/notebook_times.py)",
        "",
        f"- date: {date}; commit {head}; machine: {platform.machine()}, {os.cpu_count()} CPUs ({_cpu()}) shared with "
        f"other jobs; {platform.platform()}",
        f"- command: `python bench/notebook_times.py {' '.join(sys.argv[1:])}`",
        "- a fresh clone, the notebooks as a learner runs them (not QVIZ_FAST), an empty results cache; the "
        "converted models were already there (the one-time conversion, about 2 minutes, is outside the goals)",
        f"- goals: each notebook cold <= {GOAL_COLD_S // 60} min, warm <= {GOAL_WARM_S // 60} min; the sequence "
        f"warm <= {GOAL_SEQUENCE_WARM_S // 60} min; `qviz prepare` cold <= {GOAL_PREPARE_S // 60} min",
        "",
        "| notebook | cold (s) | warm (s) | load avg (cold run) | peak memory, cold (GB) | slowest cells, cold (s) |",
        "|---|---|---|---|---|---|",
    ]
    by = {}
    for r in rows:
        by.setdefault(r["notebook"], {})[r["phase"]] = r
    for name, phases in by.items():
        cold, warm = phases.get("cold"), phases.get("warm")
        slow = "; ".join(f"[{i}] `{src}` {s:.0f}" for i, src, s in (cold or warm)["slowest"])
        lines.append(f"| {name} | {cold['seconds']:.0f} | " if cold else f"| {name} | - | ")
        lines[-1] += (
            (f"{warm['seconds']:.0f} | " if warm else "- | ")
            + (f"{cold['load'][0]:.1f} -> {cold['load'][1]:.1f} | " if cold else "- | ")
            + (f"{cold['peak_gb']:.1f} | " if cold else "- | ")
            + slow
            + " |"
        )
    warm_total = sum(r["seconds"] for r in rows if r["phase"] == "warm")
    cold_max = max((r["seconds"] for r in rows if r["phase"] == "cold"), default=None)
    warm_max = max((r["seconds"] for r in rows if r["phase"] == "warm"), default=None)
    lines += ["", "Goals:"]
    if cold_max is not None:
        lines.append(
            f"- slowest cold notebook {cold_max:.0f} s (goal <= {GOAL_COLD_S}): **{'met' if cold_max <= GOAL_COLD_S else 'NOT met'}**"
        )
    if warm_max is not None:
        lines.append(
            f"- slowest warm notebook {warm_max:.0f} s (goal <= {GOAL_WARM_S}): **{'met' if warm_max <= GOAL_WARM_S else 'NOT met'}**"
        )
        lines.append(
            f"- the whole sequence warm {warm_total:.0f} s (goal <= {GOAL_SEQUENCE_WARM_S}): **{'met' if warm_total <= GOAL_SEQUENCE_WARM_S else 'NOT met'}**"
        )
    if prepare_seconds is not None:
        lines.append(
            f"- `qviz prepare` cold {prepare_seconds:.0f} s (goal <= {GOAL_PREPARE_S}): **{'met' if prepare_seconds <= GOAL_PREPARE_S else 'NOT met'}**"
        )
    errors = [f"{r['notebook']} ({r['phase']}): {r['errors']}" for r in rows if r["errors"]]
    lines += ["", *(f"- ERRORS: {e}" for e in errors)] if errors else []
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
