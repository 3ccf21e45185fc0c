"""Checks for notebooks/03_real_weights.ipynb. Each prints what is right or off and returns True/False."""

from __future__ import annotations

from qviz.stats import outlier_ratio


def _report(ok: bool, good: str, bad: str) -> bool:
    print(("✅ " + good) if ok else ("❌ " + bad))
    return ok


def check_worst_layer(stats: dict, linear: str, answer: int) -> bool:
    """The decoder layer whose `linear` (e.g. 'mlp.down_proj') has the largest activation outlier ratio."""
    ratios = {int(k.split(".")[1]): outlier_ratio(s.mean_abs) for k, s in stats.items() if k.endswith(linear)}
    if not ratios:
        return _report(False, "", f"no linear named {linear!r}; names look like 'mlp.down_proj'")
    worst = max(ratios, key=ratios.get)
    if answer == worst:
        return _report(
            True, f"layer {worst}: its largest input channel is {ratios[worst]:.0f}× the median.", ""
        )
    if answer not in ratios:
        return _report(False, "", f"layers run from 0 to {max(ratios)}")
    return _report(
        False,
        "",
        f"layer {answer} has a ratio of {ratios[answer]:.0f}; one layer has more: look at the heatmap row",
    )


def check_linear_bytes(n_weights: int, bits: int, answer_mb: float, group_size: int = 64) -> bool:
    """Megabytes (10**6 bytes) of `n_weights` at `bits` bits, asymmetric groups: fp16 scale + `bits`-bit zero point."""
    want = n_weights * (bits + (16 + bits) / group_size) / 8 / 1e6
    if abs(answer_mb - want) <= 0.005 * want:
        return _report(
            True, f"{want:.1f} MB: codes {n_weights * bits / 8e6:.1f} MB plus scales and zero points.", ""
        )
    return _report(
        False,
        "",
        f"bits per weight = {bits} + (16 + {bits}) / {group_size}; multiply by the number of weights and divide "
        "by 8 for bytes, then by 10**6 for MB",
    )
