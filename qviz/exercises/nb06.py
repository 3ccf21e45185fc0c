"""Checks for notebooks/06_awq.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

import torch


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def check_salient_channels(X: torch.Tensor, W: torch.Tensor, answer, fraction: float = 0.01) -> bool:
    """The `fraction` of input channels AWQ keeps: largest mean |X| over tokens (X: (tokens, in)), as indices."""
    k = max(1, round(fraction * X.shape[-1]))
    want = set(X.reshape(-1, X.shape[-1]).abs().float().mean(0).topk(k).indices.tolist())
    try:
        got = {int(i) for i in torch.as_tensor(answer).flatten().tolist()}
    except (TypeError, ValueError, RuntimeError):
        return _report(False, "", f"answer with {k} channel indices, e.g. a tensor or a list of ints")
    if got == want:
        return _report(True, f"these {k} channels carry the largest activations: {sorted(want)}.", "")
    if len(got) != k:
        return _report(
            False, "", f"{fraction:.0%} of {X.shape[-1]} channels is {k} indices; you gave {len(got)}"
        )
    by_weight = set(W.abs().float().mean(0).topk(k).indices.tolist())
    if got == by_weight:
        return _report(
            False, "", "these are the largest *weights*; AWQ ranks channels by activation magnitude"
        )
    return _report(
        False, "", f"{len(got & want)} of {k} right: rank channels by X.abs().mean over tokens, topk"
    )


def check_gemma_fold(weight: torch.Tensor, s: torch.Tensor, answer) -> bool:
    """Gemma's RMSNorm outputs x̂·(1 + weight); the new weight that divides the output by s is (1 + weight)/s − 1."""
    want = (1 + weight.float()) / s.float() - 1
    if not isinstance(answer, torch.Tensor) or answer.shape != weight.shape:
        return _report(False, "", f"answer with a tensor of shape {tuple(weight.shape)}")
    if torch.allclose(answer.float(), want, rtol=1e-5, atol=1e-6):
        return _report(True, "(1 + w)/s − 1: the norm's output x̂·(1 + w') is now x̂·(1 + w)/s.", "")
    if torch.allclose(answer.float(), weight.float() / s.float(), rtol=1e-5, atol=1e-6):
        return _report(
            False, "", "w/s is Llama's fold; Gemma multiplies by (1 + w), so (1 + w') must be (1 + w)/s"
        )
    return _report(False, "", "the output must become x̂·(1 + w)/s: solve 1 + w' = (1 + w)/s for w'")


def check_best_alpha(alphas: list[float], losses: list[float], answer) -> bool:
    """α* = the grid point with the smallest loss."""
    best = min(range(len(losses)), key=losses.__getitem__)
    if not isinstance(answer, (int, float)):
        return _report(False, "", "answer with a number from the α grid, e.g. 0.35")
    if abs(answer - alphas[best]) < 1e-9:
        gain = losses[best] / losses[0]
        return _report(
            True, f"α* = {alphas[best]:.2f}: its loss is {gain:.2f}× plain rounding's (α = 0).", ""
        )
    if answer == 0:
        return _report(False, "", "α = 0 is plain rounding; look for the lowest point of the curve")
    return _report(
        False, "", "α* is the α with the smallest loss: min(range(len(losses)), key=losses.__getitem__)"
    )
