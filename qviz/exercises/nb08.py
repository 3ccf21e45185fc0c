"""Checks for notebooks/08_activations.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

GIB = 2**30


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def check_kv_cache_gib(
    answer: float, *, layers: int = 32, kv_heads: int = 8, head_dim: int = 128, tokens: int = 32768
) -> bool:
    """GiB of an FP16 KV cache: 2 (K and V) × layers × kv_heads × head_dim × 2 bytes × tokens / 2^30."""
    per_token = 2 * layers * kv_heads * head_dim * 2
    want = per_token * tokens / GIB
    exact = f"2 × {layers} × {kv_heads} × {head_dim} × 2 bytes = {per_token:,} bytes per token; × {tokens:,} = {want:g} GiB"
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        return _report(False, "", f"answer with a number of GiB such as 1.5, got {answer!r}")
    if abs(answer - want) <= 0.01 * want:
        return _report(True, f"{exact}.", "")
    if abs(answer - want * GIB / 1e9) <= 0.01 * want * GIB / 1e9:
        return _report(True, f"that is GB (10^9 bytes); in GiB (2^30): {exact}.", "")
    if abs(answer - want / 2) <= 0.01 * want:
        return _report(False, "", "half the answer: a layer caches a key AND a value for every token")
    if abs(answer - want / 4) <= 0.01 * want:
        return _report(False, "", "a quarter: count both K and V, and 2 bytes per FP16 number")
    if abs(answer - want * 4) <= 0.01 * want:
        return _report(
            False, "", "4× too much: that would be 32 query heads; the cache holds only the 8 KV heads"
        )
    if abs(answer - want * 8) <= 0.01 * want:
        return _report(False, "", "8× too much: those are bits, not bytes")
    return _report(
        False, "", "multiply 2 (K, V) × layers × KV heads × head_dim × 2 bytes, then × tokens / 2^30"
    )
