"""Checks for notebooks/07_int4_on_gpu.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

import math


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def _number(answer) -> float | None:
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * abs(b)


def check_int32_words(answer, out_features: int = 4096, in_features: int = 4096, bits: int = 4) -> bool:
    """How many int32 words hold the packed codes of an (out_features, in_features) weight at `bits` bits?

    Each 32-bit word holds 32 / bits codes, so the answer is out_features * in_features * bits / 32.
    """
    n = out_features * in_features
    want = n * bits // 32
    value = _number(answer)
    if value is not None and value == want:
        return _report(
            True,
            f"{want:,} words = {want * 4 / 2**20:.0f} MiB of codes ({32 // bits} codes per word), "
            f"against {n * 2 / 2**20:.0f} MiB for the same weight in FP16.",
            "",
        )
    if value is None:
        return _report(False, "", f"answer with a number of words, got {answer!r}")
    hints = {
        n: "that is one word per weight: a 32-bit word holds several codes",
        n * bits // 8: "that is the number of bytes; an int32 word is 4 bytes",
        n * bits: "that is the number of bits; a word holds 32 of them",
        n // bits: "a word holds 32 / bits codes, not bits codes",
    }
    hint = hints.get(value, f"count the codes ({n:,}) and how many fit in one 32-bit word")
    return _report(False, "", hint)


def check_tokens_per_second(answer, bytes_per_token: float, bandwidth_gbps: float) -> bool:
    """The bandwidth bound: tokens/s <= bandwidth / bytes read per token (1 GB/s = 1e9 bytes/s); 2% tolerance."""
    want = bandwidth_gbps * 1e9 / bytes_per_token
    value = _number(answer)
    if value is not None and _close(value, want, 0.02):
        return _report(
            True,
            f"{bandwidth_gbps:g} GB/s / {bytes_per_token / 1e6:.1f} MB = {want:,.1f} tokens/s at most, "
            f"i.e. at least {1e3 / want:.2f} ms per token.",
            "",
        )
    if value is None:
        return _report(False, "", f"answer with a number of tokens per second, got {answer!r}")
    if value > 0 and (_close(value, 1 / want, 0.02) or _close(value, 1e3 / want, 0.02)):
        return _report(False, "", "that is the time per token; tokens/s is its inverse")
    for factor, unit in ((1e3, "MB"), (1e-3, "MB"), (2**30 / 1e9, "GiB"), (1e9 / 2**30, "GiB")):
        if _close(value, want * factor, 0.02):
            return _report(False, "", f"check the units ({unit}?): 1 GB = 1e9 bytes, 1 MB = 1e6 bytes")
    return _report(False, "", "divide the bandwidth (in bytes/s) by the bytes read per token")


def check_whole_model_speedup(answer, bytes_per_token: dict[str, dict[str, float]]) -> bool:
    """Predicted whole-model speed-up of INT4 over FP16 = FP16 bytes per token / INT4 bytes per token."""
    fp16, int4 = (float(sum(bytes_per_token[k].values())) for k in ("FP16", "INT4"))
    want = fp16 / int4
    value = _number(answer)
    if value is not None and _close(value, want, 0.02):
        return _report(
            True,
            f"{fp16 / 1e6:.0f} MB / {int4 / 1e6:.0f} MB = {want:.2f}x: the parts that stay in 16 bits "
            "are read at full size every token.",
            "",
        )
    if value is None:
        return _report(False, "", f"answer with a ratio, e.g. 2.0, got {answer!r}")
    if _close(value, 1 / want, 0.02):
        return _report(False, "", "upside down: the speed-up is the FP16 bytes divided by the INT4 bytes")
    linears = [k for k in bytes_per_token["FP16"] if k in bytes_per_token["INT4"] and "linear" in k]
    if linears:
        only = bytes_per_token["FP16"][linears[0]] / bytes_per_token["INT4"][linears[0]]
        if _close(value, only, 0.05) or _close(value, 4.0, 0.05):
            return _report(
                False, "", f"{value:g}x holds for the decoder linears alone: add every part read per token"
            )
    return _report(False, "", "add up all the bytes read per token in each format, then divide")
