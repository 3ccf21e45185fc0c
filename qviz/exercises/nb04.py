"""Checks for notebooks/04_round_to_nearest.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

import math


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def check_smallest_within(results: list[dict], ref_ppl: float, answer: str, tolerance: float = 0.10) -> bool:
    """The label of the smallest setting (linear_mb) whose perplexity is within `tolerance` of the reference."""
    ok = [r for r in results if r["ppl"] <= ref_ppl * (1 + tolerance)]
    if not ok:
        return _report(
            answer is None,
            "no setting stays within the tolerance: None is right.",
            "no setting qualifies: answer None",
        )
    best = min(ok, key=lambda r: r["linear_mb"])
    if answer == best["label"]:
        return _report(
            True, f"{best['label']}: {best['linear_mb']:.1f} MB at perplexity {best['ppl']:.2f}.", ""
        )
    labels = [r["label"] for r in results]
    if answer not in labels:
        return _report(False, "", f"answer with one of the labels: {labels}")
    chosen = next(r for r in results if r["label"] == answer)
    if chosen["ppl"] > ref_ppl * (1 + tolerance):
        return _report(
            False, "", f"{answer} loses {chosen['ppl'] / ref_ppl - 1:.0%}: more than {tolerance:.0%}"
        )
    return _report(False, "", f"{answer} qualifies, but a smaller setting does too: compare the MB column")


def check_ppl_factor(answer: float, delta_nll: float = 0.05) -> bool:
    """Perplexity grows by exp(ΔNLL) when the mean NLL per token grows by ΔNLL."""
    want = math.exp(delta_nll)
    exact = f"exp({delta_nll}) = {want:.4f}: perplexity grows by {want - 1:.1%}"
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        return _report(False, "", f"answer with a number such as 1.10, got {answer!r}")
    if abs(answer - want) < 5e-4:
        return _report(True, f"{exact}.", "")
    if abs(answer - (1 + delta_nll)) < 5e-4:  # the first-order answer: reasonable, and worth saying why
        return _report(True, f"1 + Δ is the first-order approximation exp(Δ) ≈ 1 + Δ; exactly, {exact}.", "")
    if abs(answer - want) < 0.01 * want:
        return _report(True, f"close enough; exactly, {exact}.", "")
    if abs(answer - delta_nll) < 5e-4:
        return _report(
            False,
            "",
            f"{answer} is the change of the NLL itself; the question asks for the factor on perplexity",
        )
    if answer < 1:
        return _report(False, "", "a higher NLL means a higher perplexity: the factor is above 1")
    return _report(False, "", "ppl = exp(mean NLL), so exp(a + Δ) = exp(a)·exp(Δ): the factor is exp(Δ)")
