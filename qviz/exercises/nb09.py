"""Checks for notebooks/09_formats.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

import math


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def _number(answer) -> bool:
    return isinstance(answer, (int, float)) and not isinstance(answer, bool) and math.isfinite(answer)


def check_q4_k_bits(answer: float) -> bool:
    """Bits per weight of Q4_K: a super-block of 256 weights holds 2 + 2 bytes (d, dmin), 12 bytes (8 six-bit
    scales and 8 six-bit mins) and 128 bytes of 4-bit codes: 144 × 8 / 256 = 4.5."""
    want = 144 * 8 / 256
    if not _number(answer):
        return _report(False, "", f"answer with a number of bits such as 4.2, got {answer!r}")
    if abs(answer - want) < 1e-6:
        return _report(
            True, "144 bytes × 8 / 256 weights = 4.5 bits: 4 for the code, 0.5 for what decodes it.", ""
        )
    if abs(answer - 4.0) < 1e-6:
        return _report(
            False, "", "4.0 counts the codes only: the block also stores d, dmin and the 12 scale bytes"
        )
    if abs(answer - (4 + 96 / 256)) < 1e-6:
        return _report(
            False, "", "you counted the 12 bytes of 6-bit scales and mins; add d and dmin (2 bytes each)"
        )
    if abs(answer - (4 + 32 / 256)) < 1e-6:
        return _report(False, "", "you counted d and dmin; the 8 scales and 8 mins take 12 more bytes")
    if abs(answer - (4 + (16 * 16 + 32) / 256)) < 1e-6:
        return _report(
            False,
            "",
            "that stores each sub-block's scale and min as 16-bit floats: Q4_K packs them in 6 bits each",
        )
    return _report(False, "", "add up the block's bytes (d, dmin, 12 scale bytes, 128 code bytes) × 8 / 256")


def check_mxfp4_scale(answer: float, *, amax: float = 5.0) -> bool:
    """MXFP4's block scale for a block whose largest |w| is `amax`: the power of two 2^(floor(log2 amax) − 2)."""
    want = 2.0 ** (math.floor(math.log2(amax)) - 2)
    if not _number(answer):
        return _report(False, "", f"answer with a number such as 0.5, got {answer!r}")
    if abs(answer - want) <= 1e-9 * want:
        return _report(
            True, f"floor(log2 {amax:g}) − 2 = {math.floor(math.log2(amax)) - 2}: the scale is {want:g}.", ""
        )
    if abs(answer - amax / 6) < 1e-6:
        return _report(
            False,
            "",
            f"{amax:g}/6 is NVFP4's idea (before rounding it to E4M3); MXFP4's scale must be a power of two",
        )
    if answer > 0 and abs(math.log2(answer) - round(math.log2(answer))) < 1e-9:
        return _report(
            False,
            "",
            "a power of two, but not this one: the largest E2M1 binade is [4, 8), so 2^(floor(log2 amax) − 2)",
        )
    return _report(False, "", "E8M0 stores only powers of two: take 2^(floor(log2 max|w|) − 2)")
