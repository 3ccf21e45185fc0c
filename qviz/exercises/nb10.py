"""Checks for notebooks/10_qat_and_tasks.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

import math


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def _number(answer) -> bool:
    return isinstance(answer, (int, float)) and not isinstance(answer, bool) and math.isfinite(answer)


def check_ste_gradient(answer) -> bool:
    """∂Q/∂W of fake quantization with the straight-through estimator, for W = [0.3, −1.1, 2.6] on the 3-bit
    symmetric grid with scale 0.5 (codes −4 .. 3, so the range is −2.0 .. 1.5): 1 inside the range, 0 where
    clipped: [1, 1, 0]."""
    want = [1.0, 1.0, 0.0]
    if not (isinstance(answer, (list, tuple)) and len(answer) == 3 and all(_number(a) for a in answer)):
        return _report(False, "", f"answer with a list of three numbers such as [1, 0, 1], got {answer!r}")
    got = [float(a) for a in answer]
    if got == want:
        return _report(
            True, "2.6 / 0.5 = 5.2 is past the largest code, 3: clipped, so no gradient reaches it.", ""
        )
    if got == [0.0, 0.0, 0.0]:
        return _report(
            False, "", "that is round()'s true gradient (zero almost everywhere): the STE passes it as 1"
        )
    if got == [1.0, 1.0, 1.0]:
        return _report(
            False, "", "the clamp still has its own gradient: a code clipped to the grid's end gets 0"
        )
    if got == [1.0, 0.0, 0.0]:
        return _report(False, "", "−1.1 / 0.5 = −2.2 rounds to −2, inside the codes −4 .. 3: not clipped")
    return _report(False, "", "for each weight: is W / s inside the codes −4 .. 3? inside: 1, outside: 0")


def check_flips(answer, *, n_tokens: int, top1: float) -> bool:
    """How many of `n_tokens` tokens changed their top-1 prediction, when the two models agree on a fraction
    `top1` of them: n_tokens × (1 − top1)."""
    want = round(n_tokens * (1 - top1))
    if not _number(answer):
        return _report(False, "", f"answer with a number of tokens, got {answer!r}")
    if abs(answer - want) <= 1:
        return _report(True, f"{n_tokens} × (1 − {top1:.3f}) = {want} tokens flipped.", "")
    if abs(answer - round(n_tokens * top1)) <= 1:
        return _report(
            False, "", "that counts the tokens that kept their top-1 prediction: flips are the others"
        )
    if 0 < answer < 1:
        return _report(False, "", "that is a fraction: the question asks for a number of tokens")
    return _report(False, "", "multiply the number of tokens by the fraction that disagree, 1 − top1")


def check_significant(answer, *, change: float, half: float) -> bool:
    """Is an accuracy change of `change` ± `half` (95% interval) a real change? Yes when the interval excludes 0."""
    want = abs(change) > half
    if not isinstance(answer, bool):
        return _report(False, "", f"answer True or False, got {answer!r}")
    if answer == want:
        return _report(
            True,
            f"{change:+.1%} ± {half:.1%}: the interval {'excludes' if want else 'contains'} zero, so "
            + (
                "the change is larger than the noise of this many items."
                if want
                else "these items cannot tell."
            ),
            "",
        )
    if want:
        return _report(False, "", f"{change:+.1%} ± {half:.1%} never reaches 0: this is more than noise")
    return _report(False, "", f"{change:+.1%} ± {half:.1%} reaches 0: with this many items it could be noise")
