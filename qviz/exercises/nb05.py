"""Checks for notebooks/05_gptq.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

import itertools

import torch


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def _output_error(w: torch.Tensor, q: torch.Tensor, X: torch.Tensor) -> float:
    """mean over tokens of ((w − q)·x)² for one output row w (in,) and inputs X (tokens, in)."""
    return ((X.double() @ (w.double() - q.double())) ** 2).mean().item()


def check_best_rounding(answer, w: torch.Tensor, X: torch.Tensor, scale: float = 1.0) -> bool:
    """The grid point (q₁, q₂), each weight rounded down or up, with the smallest output error on X."""
    w = w.double().flatten()
    lo = torch.floor(w / scale) * scale
    cands = [lo + scale * torch.tensor(d, dtype=torch.float64) for d in itertools.product((0, 1), repeat=2)]
    errors = {tuple(round(v, 6) for v in c.tolist()): _output_error(w, c, X) for c in cands}
    best = min(errors, key=errors.get)
    try:
        key = tuple(round(float(v), 6) for v in answer)
    except (TypeError, ValueError):
        return _report(False, "", "answer with a pair of grid values, e.g. (1.0, 0.0)")
    if len(key) != 2 or key not in errors:
        return _report(False, "", f"each weight rounds down or up: choose one of {sorted(errors)}")
    if key == best:
        rtn = tuple(round(v, 6) for v in (torch.round(w / scale) * scale).tolist())
        extra = "" if key == rtn else f", {errors[rtn] / errors[key]:.1f}× less than rounding each weight"
        return _report(True, f"{key}: output error {errors[key]:.4f}{extra}.", "")
    return _report(
        False, "", f"{key} gives output error {errors[key]:.4f}; another grid point does better. The weights "
        "act together: an error on w₁ can be cancelled by an opposite error on w₂ when x₁ ≈ x₂."
    )  # fmt: skip


def check_compensated_weight(answer: float, w: torch.Tensor, H: torch.Tensor, scale: float = 1.0) -> bool:
    """w₂ after GPTQ quantizes w₁ and updates w₂ to absorb the error: w₂ − (w₁ − q₁)·[H⁻¹]₁₂ / [H⁻¹]₁₁."""
    w, Hinv = w.double().flatten(), torch.linalg.inv(H.double())
    q1 = torch.round(w[0] / scale) * scale
    want = (w[1] - (w[0] - q1) * Hinv[0, 1] / Hinv[0, 0]).item()
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return _report(False, "", "answer with a number")
    if abs(value - want) <= 1e-3 * max(1.0, abs(want)):
        return _report(
            True, f"w₂ becomes {want:.4f}, and then rounds to {round(want / scale) * scale:g}.", ""
        )
    if abs(value - w[1].item()) < 1e-6:
        return _report(False, "", "w₂ must change: it absorbs part of w₁'s rounding error")
    return _report(
        False, "", "δw₂ = −(w₁ − q₁)·[H⁻¹]₁₂ / [H⁻¹]₁₁ with q₁ = round(w₁); use torch.linalg.inv(H)"
    )


def check_calibration_effect(results: dict, answer: str) -> bool:
    """results: {label: perplexity} with 'RTN', 'GPTQ britannica' and 'GPTQ pydoc'. answer: the label of the
    worst of the three on the evaluation prose."""
    need = {"RTN", "GPTQ britannica", "GPTQ pydoc"}
    if not need <= set(results):
        return _report(False, "", f"results must have the keys {sorted(need)}")
    worst = max(need, key=lambda k: results[k])
    if answer not in need:
        return _report(False, "", f"answer with one of {sorted(need)}")
    if answer == worst:
        return _report(True, f"{worst} has the highest perplexity here ({results[worst]:.2f}).", "")
    return _report(
        False, "", f"{answer}: {results[answer]:.2f}; one of the others is higher - read the table"
    )
