"""The Pareto front against a sort-and-sweep oracle; cached points found in the cache exactly when they are whole-
model results of the asked model and evaluation; their size from `qviz.memory`; the chart readable."""

import random

import pytest
from figure_checks import assert_readable

import qviz.cache
from qviz import choose, runs
from qviz.memory import WeightFormat, plan
from qviz.quant import QuantSpec
from qviz.runs import Eval, Run
from qviz.viz.choose import pareto_figure


def _sweep(xs, ys):
    """The front by sorting: by x (then y), keep a point when its y is below every y seen before it; equal points
    are both kept (neither is strictly better)."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    keep, best = [False] * len(xs), float("inf")
    for rank, i in enumerate(order):
        tied = rank and (xs[order[rank - 1]], ys[order[rank - 1]]) == (xs[i], ys[i]) and keep[order[rank - 1]]
        if ys[i] < best or tied:
            keep[i], best = True, min(best, ys[i])
    return keep


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_equals_a_sort_and_sweep(seed):
    rng = random.Random(seed)
    n = rng.randrange(1, 30)
    xs = [rng.choice([2, 3, 3.25, 4, 4.125, 8]) for _ in range(n)]  # ties on x, as bit widths have
    ys = [rng.choice([0.1, 0.2, 0.5, 1.0, rng.random()]) for _ in range(n)]
    assert choose.pareto_front(xs, ys) == _sweep(xs, ys)


def test_pareto_front_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="one value per point"):
        choose.pareto_front([1, 2], [1])


@pytest.mark.slow
def test_cached_points_are_the_whole_model_results_of_that_model_and_evaluation(tmp_path, monkeypatch):
    monkeypatch.setattr(qviz.cache, "results_dir", lambda: tmp_path)
    ev, other_ev = Eval(seqlen=64, n=1), Eval(seqlen=32, n=1)
    int8, int4 = (
        Run("smollm2-135m", "rtn", QuantSpec(bits=b, symmetric=False, group_size=64)) for b in (8, 4)
    )
    partial = Run(
        "smollm2-135m", "rtn", QuantSpec(bits=4), n_layers=2
    )  # the test run's kind: not whole-model
    for run, e in ((int8, ev), (int4, ev), (int4, other_ev), (partial, ev)):
        runs.measure(run, e, progress=False)
    (tmp_path / "measure-0000000000000000.json").write_text("{}")  # a stray file is skipped
    points = choose.cached_points("smollm2-135m", ev)
    assert [p.run for p in points] == [int4, int8]  # by size; not the other evaluation, not the partial run
    assert choose.cached_points("gemma-3-270m", ev) == []
    p = points[0]
    assert p.kl == pytest.approx(runs.measure(int4, ev, progress=False)["kl"])
    expected = plan("smollm2-135m", WeightFormat("compressed-tensors", 4, 64, symmetric=False), context=1)
    assert (
        p.bits == pytest.approx(expected.bits_per_weight)
        and 4 + 16 / 64 < p.bits < 4 + 16 / 64 + 4 / 64 + 0.01
    )
    assert points[1].kl < p.kl  # INT8 closer to the reference
    fig = pareto_figure(points, "SmolLM2-135M: size against error")
    assert_readable(fig)
    markers = [t for t in fig.data if t.mode == "markers"]
    assert sum(len(t.x) for t in markers) == 2 * len(points)  # every point in both panels
    assert all("calibration" not in h and "asym g64" in h for t in markers for h in t.text)
    with pytest.raises(ValueError, match="no points"):
        pareto_figure([], "empty")
