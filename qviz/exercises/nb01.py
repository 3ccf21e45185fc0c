"""Checks for notebooks/01_numbers.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

import math

from qviz.formats import range_and_spacing, round_to

__all__ = ["check_model_gb", "check_e4m3_max", "check_bf16_of_0_1", "check_fp16_overflow"]


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def _number(answer, allow_inf: bool = False) -> float | None:
    """The answer as a float (a tensor, a number or text such as "inf"), or None."""
    try:
        value = float(answer)
    except (TypeError, ValueError, RuntimeError):
        return None
    return value if math.isfinite(value) or (allow_inf and not math.isnan(value)) else None


def check_model_gb(answer, n_params: float = 70e9, bits: int = 16) -> bool:
    """Weights only: n_params * bits / 8 bytes, in GB (10^9 bytes). Within 1%."""
    want = n_params * bits / 8 / 1e9
    got = _number(answer)
    if got is None:
        return _report(False, "", f"give a number of GB, got {answer!r}")
    close = lambda target: math.isclose(got, target, rel_tol=0.01)
    if close(want):
        return _report(
            True,
            f"{n_params / 1e9:g}B weights × {bits} bits / 8 bits per byte = {want:,.4g} GB (weights only).",
            "",
        )
    if close(want * 8):
        return _report(False, "", f"{got:,.4g} counts bits, not bytes: divide by 8 bits per byte.")
    if close(want * 1e9 / 2**30):
        return _report(
            False, "", f"{got:,.4g} is in GiB (2^30 bytes); here GB means 10^9 bytes, as on model cards."
        )
    if close(want * 1e9):
        return _report(False, "", f"{got:,.4g} is in bytes; give GB (divide by 10^9).")
    return _report(
        False, "", f"not quite: bytes = parameters × bits / 8; for {bits} bits, GB = ? (yours: {got:,.4g})"
    )


def check_e4m3_max(answer) -> bool:
    """The largest finite FP8 E4M3 ("fn", as in torch.float8_e4m3fn) value: 448."""
    got = _number(answer)
    hints = {
        480.0: "480 = 2^8 × 1.875 would be S.1111.111, which E4M3fn keeps for NaN; the mantissa tops out at 110.",
        240.0: "240 is the max if E4M3 kept the all-ones exponent for inf/NaN like IEEE; E4M3fn uses it for values.",
        57344.0: "57344 is the max of E5M2 (more exponent bits, more range); E4M3 has 4 exponent bits.",
    }
    if got == range_and_spacing("fp8_e4m3").max:
        return _report(True, "448 = 2^(15 - 7) × 1.75: exponent 1111, mantissa 110 (111 is NaN).", "")
    return _report(
        False, "", hints.get(got, f"{answer!r} is not it: exponent field 1111 means 2^(15 - bias 7).")
    )


def check_bf16_of_0_1(answer) -> bool:
    """0.1 rounded to BF16: 0.10009765625 (exactly, or to 10 significant digits)."""
    got = _number(answer)
    want = round_to(0.1, "bf16").item()
    if got is not None and math.isclose(got, want, rel_tol=1e-10):
        return _report(
            True, f"0.1 in BF16 is {want!r}: 8 significant bits keep about 2-3 decimal digits.", ""
        )
    hints = {
        0.1: "0.1 is not a sum of powers of two: BF16 can only store a nearby value. Try round_to or fields.",
        0.099609375: "0.099609375 is what truncation (dropping bits) gives; rounding to nearest goes up here.",
        round_to(0.1, "fp16").item(): "that is 0.1 in FP16 (10 mantissa bits); BF16 has only 7.",
        round_to(0.1, "fp32").item(): "that is 0.1 in FP32; BF16 keeps only 7 of FP32's 23 mantissa bits.",
    }
    return _report(
        False, "", hints.get(got, f"{answer!r} is not it: 0.1 = 2^-4 × 1.6; keep 7 mantissa bits.")
    )


def check_fp16_overflow(answer) -> bool:
    """What 70000.0 becomes in FP16: inf (FP16 max is 65504)."""
    got = _number(answer, allow_inf=True)
    if got == math.inf:
        return _report(
            True, "70000 > 65504, the FP16 maximum, so it overflows to inf (BF16 stores 70144).", ""
        )
    if got == 65504.0:
        return _report(
            False, "", "65504 is what a saturating format would give; FP16 (IEEE) overflows to inf."
        )
    return _report(False, "", f"{answer!r} is not it: compare 70000 with range_and_spacing('fp16').max.")
