"""Choose: every whole-model result the notebooks have made, as points of size against error, and the Pareto
front among them.

A point is one cached `qviz.runs.measure` result (RTN, GPTQ, AWQ or QAT at some spec, on one model and one
evaluation set): its error (KL to the float reference, perplexity, top-1 agreement) against its true size, the
bits per decoder-linear weight with scales and zero points, as `qviz.memory` counts them for a compressed-tensors
checkpoint. The float reference is the dequantized GGUF release in float32 (`qviz.models`), so "KL 0" means "the
same as the release", not "the same as the original training weights".

A point is on the **Pareto front** when no other point is at least as small and at least as good, and strictly
better in one of the two: the only points worth choosing. Results are read from the cache, never computed here:
`cached_points` finds what the notebooks (or `qviz prepare`) have stored, so the chart grows as they run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from . import cache
from .memory import WeightFormat, plan
from .quant import QuantSpec
from .runs import Eval, Run

__all__ = ["Point", "cached_points", "pareto_front", "point"]


@dataclass(frozen=True)
class Point:
    """One whole-model result: what it is, what it costs, how far it is from the float reference."""

    run: Run
    bits: float  # per decoder-linear weight: codes + scales + zero points (qviz.memory, compressed-tensors)
    weights_gb: float  # the checkpoint's weights: quantized linears + the float rest in bf16 (10^9 bytes)
    kl: float  # mean KL(reference ‖ model), nats per token
    kl_p99: float
    ppl: float
    ref_ppl: float  # the reference's perplexity on the same tokens
    top1: float  # agreement with the reference's top-1 token
    n_tokens: int

    @property
    def label(self) -> str:
        return self.run.label

    @property
    def settings(self) -> str:
        """The run's settings in one line: what a hover shows and what `qviz quantize` would need."""
        calib = (
            ""
            if self.run.method == "rtn"
            else f"; calibration {self.run.n_calib} × {self.run.calib_len} tokens"
        )
        options = f"; options {self.run.options}" if self.run.options else ""
        return f"{self.run.model}, {self.run.spec.label}{calib}{options}"


def _bits(run: Run) -> tuple[float, float]:
    """(bits per quantized weight, weight GB) of `run`'s model stored as compressed-tensors in bf16."""
    spec = run.spec
    group = spec.group_size if spec.granularity == "group" else None  # per-tensor: counted as per-row scales
    p = plan(run.model, WeightFormat("compressed-tensors", spec.bits, group, spec.symmetric), context=1)
    return p.bits_per_weight, p.weights / 1e9


def point(run: Run, metrics: dict) -> Point:
    """The Point of `run` with `metrics` (a `qviz.runs.measure` result)."""
    bits, gb = _bits(run)
    return Point(
        run, bits, gb, metrics["kl"], metrics["kl_p99"], metrics["ppl"], metrics["ref_ppl"], metrics["top1"],
        metrics["n_tokens"],
    )  # fmt: skip


def cached_points(model: str, ev: Eval) -> list[Point]:
    """Every whole-model `measure` result of `model` on `ev` in the cache (this qviz version; runs of only the
    first layers, as the test run makes, left out), sorted by size."""
    points = []
    for path in sorted(cache.results_dir().glob("measure-*.json")):
        try:
            stored = json.loads(path.read_text())
            params = stored["params"]
            if params["eval"] != asdict(ev) or params["run"]["model"] != model or params["run"]["n_layers"]:
                continue
            run = Run(**{**params["run"], "spec": QuantSpec(**params["run"]["spec"])})
        except (OSError, ValueError, KeyError, TypeError):  # a file of another version or kind: not ours
            continue
        if cache.result_path("measure", {"run": run.params(), "eval": asdict(ev)}) == path:
            points.append(point(run, stored["result"]))
    return sorted(points, key=lambda p: (p.bits, p.kl))


def pareto_front(xs: list[float], ys: list[float]) -> list[bool]:
    """For points (x, y), smaller better on both: True where no other point has x' <= x and y' <= y with one of
    them strictly smaller.

    >>> pareto_front([4, 4, 3, 8], [0.5, 0.2, 0.9, 0.1])
    [False, True, True, True]
    """
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys must have one value per point, got {len(xs)} and {len(ys)}")
    return [
        not any(x2 <= x and y2 <= y and (x2 < x or y2 < y) for x2, y2 in zip(xs, ys, strict=True))
        for x, y in zip(xs, ys, strict=True)
    ]
