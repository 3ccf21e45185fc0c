"""Checks for notebooks/11_choose_and_ship.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

import math


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def check_kv_cache_gib(answer) -> bool:
    """Llama-2-7B's FP16 KV cache for one sequence of 4,096 tokens: keys and values (2) × 32 layers × 32 KV heads ×
    128 dimensions × 2 bytes × 4,096 tokens = 2^31 bytes = 2.0 GiB (`qviz.memory.plan` gives the same)."""
    want = 2 * 32 * 32 * 128 * 2 * 4096 / 2**30
    if not isinstance(answer, (int, float)) or isinstance(answer, bool) or not math.isfinite(answer):
        return _report(False, "", f"answer with a number of GiB, got {answer!r}")
    if math.isclose(answer, want, rel_tol=0.01):
        return _report(
            True, "2 × 32 × 32 × 128 × 2 bytes × 4,096 tokens = 2.0 GiB: a third of a 6 GB GPU.", ""
        )
    if math.isclose(answer, want / 2, rel_tol=0.01):
        return _report(False, "", "that is the keys alone (or the values): the cache holds both")
    if math.isclose(answer, want * 2**30 / 1e9, rel_tol=0.01):
        return _report(False, "", "that is in GB (10^9 bytes): divide the bytes by 2^30 for GiB")
    if math.isclose(answer, want * 2, rel_tol=0.01):
        return _report(False, "", "FP16 is 2 bytes per value, not 4")
    return _report(
        False, "", "multiply 2 (keys and values) × layers × KV heads × head dimension × 2 bytes × tokens"
    )
