"""Checks for notebooks/02_linear_quantization.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

import torch

from qviz.quant import QuantSpec, bits_per_weight, fake_quantize, quantize, sqnr_db

_TRIALS = [
    torch.tensor([-1.4, 0.0, 0.7, 0.3, -0.05]),
    torch.linspace(-3, 5, 17),
    torch.randn(64, generator=torch.Generator().manual_seed(0)) * 0.02,
    torch.tensor([0.5, 1.0, 2.5, 0.8]),  # all positive: the asymmetric range must be widened to include 0
]


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def check_absmax(absmax_quantize) -> bool:
    """`absmax_quantize(w, bits) -> (codes, scale)`: symmetric, one scale for the whole tensor."""
    for bits in (8, 4):
        for w in _TRIALS:
            try:
                codes, scale = absmax_quantize(w.clone(), bits)
            except Exception as exc:  # the learner's code: report, don't raise
                return _report(False, "", f"your function raised {type(exc).__name__}: {exc}")
            want = quantize(w, QuantSpec(bits=bits, granularity="tensor", restricted_range=True))
            if not torch.is_tensor(scale):
                scale = torch.tensor(float(scale))
            if not torch.allclose(scale.float().reshape(()), want.scale.reshape(()), rtol=1e-5):
                return _report(
                    False,
                    "",
                    f"for bits={bits} the scale should be max|w| / (2**(bits-1) - 1) = "
                    f"{want.scale.item():.6g}, yours is {scale.float().reshape(-1)[0].item():.6g}",
                )
            codes = torch.as_tensor(codes)
            if not torch.equal(codes.to(torch.int32).reshape(w.shape), want.codes):
                hint = "use torch.round (round half to even), not floor or int()"
                return _report(False, "", f"codes differ for bits={bits}: {codes.tolist()[:6]}… — {hint}")
    return _report(True, "absmax quantization matches qviz for 8 and 4 bits.", "")


def check_zero_point(zero_point_quantize) -> bool:
    """`zero_point_quantize(w, bits) -> (codes, scale, zero_point)`: asymmetric, one scale for the whole tensor."""
    for bits in (8, 4):
        for w in _TRIALS:
            try:
                codes, scale, zero_point = zero_point_quantize(w.clone(), bits)
            except Exception as exc:
                return _report(False, "", f"your function raised {type(exc).__name__}: {exc}")
            want = quantize(w, QuantSpec(bits=bits, symmetric=False, granularity="tensor"))
            if abs(float(scale) - want.scale.item()) > 1e-5 * want.scale.item():
                return _report(
                    False,
                    "",
                    f"for bits={bits} the scale should be (max - min) / (2**bits - 1) = {want.scale.item():.6g} "
                    f"(with the range widened to include 0), yours is {float(scale):.6g}",
                )
            if int(zero_point) != want.zero_point.item():
                return _report(
                    False,
                    "",
                    f"zero_point should be round(-min / scale) = {want.zero_point.item()}, yours is {int(zero_point)}",
                )
            if not torch.equal(torch.as_tensor(codes).to(torch.int32).reshape(w.shape), want.codes):
                return _report(
                    False,
                    "",
                    f"codes differ for bits={bits}: clamp round(w/scale) + zero_point to [0, 2**bits - 1]",
                )
    return _report(True, "zero-point quantization matches qviz for 8 and 4 bits.", "")


def check_bits_for_sqnr(w: torch.Tensor, answer: int, target_db: float = 30.0) -> bool:
    """The fewest bits for which per-channel symmetric quantization of `w` reaches `target_db` SQNR."""
    needed = next(b for b in range(2, 17) if sqnr_db(w, fake_quantize(w, QuantSpec(bits=b))) >= target_db)
    if answer == needed:
        return _report(True, f"{needed} bits is the fewest that reach {target_db:g} dB on this weight.", "")
    direction = "more" if answer < needed else "fewer"
    return _report(False, "", f"not quite: try {direction} bits (each bit adds about 6 dB)")


def check_group_storage(answer: float, bits: int = 4, group_size: int = 64, shape=(1024, 640)) -> bool:
    """Bits per weight of asymmetric `bits` quantization with `group_size` groups, fp16 scales, `bits`-bit zeros."""
    want = bits_per_weight(QuantSpec(bits=bits, symmetric=False, group_size=group_size), shape)
    if abs(answer - want) < 1e-6:
        return _report(
            True, f"{want:.4f} bits per weight: the codes plus (16 + {bits}) / {group_size} of overhead.", ""
        )
    return _report(
        False,
        "",
        f"each group of {group_size} weights stores {group_size}×{bits} code bits, one 16-bit scale and one "
        f"{bits}-bit zero point: divide the total by {group_size}",
    )
