"""bench/gpu_check.py is run only on a lent GPU machine, with minutes to spare: its --dry-run (tiny shapes on
the CPU, Triton under its interpreter) must keep working, and its kernels must pass its own correctness gate."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    assert "DRY RUN" in report
    correctness = [line for line in report.splitlines() if line.startswith("- correctness:")]
    assert len(correctness) == 1 and correctness[0].endswith(": MET"), correctness
    assert "torch_int4" in report  # the built-in int4 kernel was measured (Triton too where installed)
