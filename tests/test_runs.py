"""qviz.runs: a whole-model run is computed once, read back exactly, and measured against its reference."""

import math

import pytest
import torch

import qviz.cache
from qviz import runs
from qviz.quant import QuantSpec
from qviz.runs import Eval, Run


def test_runs_are_validated_and_keyed_by_what_they_use():
    with pytest.raises(ValueError, match="method must be one of"):
        Run(method="hqq")
    with pytest.raises(ValueError, match="QuantSpec"):
        Run(spec={"bits": 4})
    rtn = Run(method="rtn", n_calib=99).params()
    assert "n_calib" not in rtn and rtn["spec"]["bits"] == 4  # RTN reads no calibration text
    assert Run(method="gptq", n_calib=8).params() != Run(method="gptq", n_calib=16).params()
    shipped = runs.shipped_runs("gemma-3-270m")
    assert shipped["gptq"].spec == QuantSpec(bits=4, group_size=128) and shipped["gptq"].options == {}
    assert shipped["awq"].spec == QuantSpec(bits=4, symmetric=False, group_size=128)
    assert runs.shipped_runs("gemma-3-270m", fast=True)["gptq"].n_layers == 2


@pytest.mark.slow
def test_quantize_is_cached_and_measure_is_one_pass(smollm2, tmp_path, monkeypatch):
    monkeypatch.setattr(qviz.cache, "results_dir", lambda: tmp_path)
    calls = []
    compute = runs._compute
    monkeypatch.setattr(
        runs, "_compute", lambda run, progress, on_step=None: calls.append(run) or compute(run, progress)
    )
    run = Run("smollm2-135m", "gptq", QuantSpec(bits=4, group_size=64), n_calib=2, calib_len=32, n_layers=1)
    ev = Eval(seqlen=64, n=2)
    assert not runs.is_cached(run)
    first = runs.quantize(run, progress=False)
    again = runs.quantize(run, progress=False)
    assert len(calls) == 1 and runs.is_cached(run) and not runs.is_cached(run, ev)
    assert len(first.linears) == 7 and all(
        torch.equal(again.linears[n].codes, q.codes) for n, q in first.linears.items()
    )

    metrics = runs.measure(run, ev, progress=False)
    assert runs.is_cached(run, ev) and len(calls) == 1  # measured on the stored result
    assert metrics["n_tokens"] == 128 and metrics["kl"] > 0 and 0 < metrics["top1"] <= 1
    assert (
        metrics["label"] == "INT4 sym g64" and metrics["method"] == "GPTQ" and len(metrics["token_kl"]) == 128
    )
    assert 4 < metrics["bits_per_weight"] < 4.5  # codes + a 16-bit scale per 64 weights
    ref = runs.reference_metrics("smollm2-135m", ev, progress=False)
    assert ref["ppl"] == pytest.approx(metrics["ref_ppl"]) and ref["ppl"] != metrics["ppl"]
    # one quantized layer moves perplexity a little, either way on 128 tokens (lower with 1 thread, by 0.8%)
    assert abs(math.log(metrics["ppl"] / ref["ppl"])) < 0.1

    text = runs.continuation(run, "The capital of France is", 4)
    assert text and text == runs.continuation(run, "The capital of France is", 4)  # greedy, and cached

    model = runs.quantized_model(run, progress=False)  # a fresh copy + the result: the quantized model
    name = "model.layers.0.mlp.down_proj"
    assert torch.equal(model.get_submodule(name).weight, runs.quantize(run).dequantized(name))
    assert torch.equal(
        model.model.layers[1].mlp.down_proj.weight, smollm2[0].model.layers[1].mlp.down_proj.weight
    )


@pytest.mark.slow
def test_prefetch_computes_each_result_once_and_the_cell_waits_for_it(smollm2, tmp_path, monkeypatch):
    """A prefetch started "at the top of a notebook": the foreground asks for the same results while the
    background is still computing them, waits, and reads back exactly what a plain run gives (computed once)."""
    monkeypatch.setattr(qviz.cache, "results_dir", lambda: tmp_path)
    calls = []
    compute = runs._compute
    monkeypatch.setattr(
        runs, "_compute", lambda run, progress, on_step=None: calls.append(run) or compute(run, progress)
    )
    rtn = Run("smollm2-135m", "rtn", QuantSpec(bits=4, group_size=64))
    gptq = Run("smollm2-135m", "gptq", QuantSpec(bits=4, group_size=64), n_calib=2, calib_len=32, n_layers=1)
    ev, prompt = Eval(seqlen=32, n=2), "The capital of France is"

    thread = runs.prefetch([rtn, gptq], ev, prompt=prompt, new_tokens=3)
    assert thread is not None and thread.is_alive()
    assert "being computed in the background" in runs.cache_status([rtn, gptq], ev)
    seen = {label: runs.measure(run, ev, progress=False) for label, run in (("rtn", rtn), ("gptq", gptq))}
    texts = [runs.continuation(run, prompt, 3) for run in (rtn, gptq, "smollm2-135m")]
    thread.join(timeout=600)
    assert not thread.is_alive() and len(calls) == 2  # each quantized once, by whichever thread came first
    assert runs._PENDING == set() and runs.prefetch([rtn, gptq], ev, prompt=prompt, new_tokens=3) is None
    assert "0 are" not in runs.cache_status([rtn, gptq], ev)

    # the same numbers and texts as a plain, single-threaded run in an empty cache
    monkeypatch.setattr(qviz.cache, "results_dir", lambda: tmp_path / "plain")
    runs._REFERENCE.clear()
    for label, run in (("rtn", rtn), ("gptq", gptq)):
        plain = runs.measure(run, ev, progress=False)
        assert plain["kl"] == pytest.approx(seen[label]["kl"], rel=1e-5) and plain["kl"] > 0
        assert plain["token_nll"] == pytest.approx(seen[label]["token_nll"], rel=1e-5)
    assert [runs.continuation(run, prompt, 3) for run in (rtn, gptq, "smollm2-135m")] == texts


def test_prefetch_of_a_failing_run_leaves_the_error_to_the_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(qviz.cache, "results_dir", lambda: tmp_path)

    def broken(run, progress, on_step=None):
        raise ValueError("calibration text is empty")

    monkeypatch.setattr(runs, "_compute", broken)
    run = Run("smollm2-135m", "gptq", n_calib=2, calib_len=32)
    thread = runs.prefetch([run])
    thread.join(timeout=60)
    assert runs._PENDING == set() and not runs.is_cached(run)
    with pytest.raises(ValueError, match="calibration text is empty"):  # the cell computes it and says why
        runs.quantize(run, progress=False)


@pytest.mark.slow
def test_a_qat_run_and_task_scores_are_cached_results_like_the_others(smollm2, tmp_path, monkeypatch):
    """QAT goes through the same Run as the post-training methods; task scores are cached and prefetched; a
    prefetch with tasks computes each once, the float model's first."""
    monkeypatch.setattr(qviz.cache, "results_dir", lambda: tmp_path)
    run = Run(
        "smollm2-135m", "qat", QuantSpec(bits=3, symmetric=False, group_size=64), n_calib=2, calib_len=32,
        options={"steps": 2, "batch_size": 1},
    )  # fmt: skip
    with pytest.raises(ValueError, match="every layer at once"):
        runs.quantize(Run("smollm2-135m", "qat", n_layers=1), progress=False)
    result = runs.quantize(run, progress=False)
    assert result.method == "qat" and len(result.options["losses"]) == 2
    assert runs.quantize(run, progress=False).options == result.options  # read back from the file
    rtn = Run("smollm2-135m", "rtn", QuantSpec(bits=8))
    runs.prefetch([rtn, run], task_names=["recall"], n_items=4, tasks_for=[run]).join()
    stored = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert stored == ["run", "run", "task", "task"]  # both runs, and two task scores (float, QAT): not RTN's
    calls = []
    monkeypatch.setattr(runs.tasks, "score", lambda *a, **k: calls.append(a))
    float_score, qat_score = runs.task_score("smollm2-135m", "recall", 4), runs.task_score(run, "recall", 4)
    assert calls == [] and float_score.n == qat_score.n == 4 and float_score.chance == 0
