"""The whole-model experiments the notebooks show, each defined once: quantize a fresh copy of a model with one
method and spec (`quantize`), and measure it against its float reference on held-out text (`measure`).

Both are cached on disk (`qviz.cache`), keyed by every parameter and the qviz version, so

- a notebook re-runs in seconds, and says so (`is_cached`);
- notebook 07 packs, runs and ships exactly the GPTQ and AWQ models notebooks 05 and 06 made (the same `Run`
  gives the same file), never a re-derived copy;
- a command can warm them all before a workshop.

    run = Run("gemma-3-270m", "gptq", QuantSpec(bits=4, group_size=128))
    result = quantize(run)                  # QuantResult: the codes of every linear
    metrics = measure(run, Eval(n=2))       # {"ppl", "kl", "kl_p99", "top1", "bits_per_weight", ...}
    text = continuation(run, "The invention of the printing press", 30)   # greedy, only where it is shown

    prefetch([run, ...], Eval(n=2), prompt=...)   # start all of it in a background thread, at a notebook's top:
                                                  # the cells that show it later wait only for what is left

The reference is the float model `qviz.models.load_model` gives: for the offline models, the dequantized GGUF
release, not the original training weights.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from torch import nn
from tqdm.auto import tqdm

from . import awq, gptq, qat, rtn, tasks
from .cache import cached, cached_result, result_path
from .data import calib_windows, eval_windows
from .eval import ReferenceLogits, evaluate, generate, model_size
from .models import load_model
from .quant import QuantSpec
from .result import QuantResult

__all__ = [
    "Eval",
    "Run",
    "is_cached",
    "measure",
    "prefetch",
    "quantize",
    "quantized_model",
    "reference_metrics",
    "shipped_runs",
    "task_score",
]

METHODS = ("rtn", "gptq", "awq", "qat")


@dataclass(frozen=True)
class Run:
    """One whole-model quantization: which model, method, spec and calibration."""

    model: str = "gemma-3-270m"  # an offline name, a Hugging Face id or a local folder
    method: str = "rtn"  # "rtn", "gptq", "awq" or "qat"
    spec: QuantSpec = QuantSpec(bits=4, group_size=128)
    calib: str = "britannica"  # calibration text (`qviz.data`), from the half evaluation never reads
    n_calib: int = 16  # calibration windows ...
    calib_len: int = 512  # ... of this many tokens (BOS added)
    # the method's own options, e.g. {"act_order": False}; AWQ: AWQConfig's fields; QAT: qat.quantize_model's
    # keywords, e.g. {"steps": 100, "batch_size": 2, "lr": 1e-4}
    options: dict = field(default_factory=dict)
    n_layers: int | None = None  # quantize only the first layers (None: all)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not isinstance(self.spec, QuantSpec):
            raise ValueError(f"spec must be a qviz.quant.QuantSpec, got {type(self.spec).__name__}")

    def params(self) -> dict:
        """The cache key: every field, the calibration left out for RTN (it uses none)."""
        params = {**asdict(self), "spec": asdict(self.spec)}
        if self.method == "rtn":
            for key in ("calib", "n_calib", "calib_len"):
                params.pop(key)
        return params

    @property
    def label(self) -> str:
        """e.g. 'GPTQ INT4 sym g128'."""
        return f"{self.method.upper()} {self.spec.label}"


@dataclass(frozen=True)
class Eval:
    """Held-out evaluation: `n` windows of `seqlen` tokens of `text` (`qviz.data.eval_windows`)."""

    text: str = "britannica"
    seqlen: int = 512
    n: int = 2


def _compute(run: Run, progress: bool, on_step=None) -> QuantResult:
    model, tokenizer = load_model(run.model)  # a fresh copy: methods quantize in place
    kw = dict(n_layers=run.n_layers, progress=progress)
    if run.method == "rtn":
        return rtn.quantize_model(model, run.spec, **kw)
    windows = calib_windows(tokenizer, run.calib, seqlen=run.calib_len, n=run.n_calib)
    if run.method == "gptq":
        return gptq.quantize_model(model, run.spec, windows, **run.options, **kw)
    if run.method == "qat":
        if run.n_layers is not None:
            raise ValueError("QAT trains every layer at once: n_layers must be None")
        return qat.quantize_model(model, run.spec, windows, **run.options, progress=progress, on_step=on_step)
    return awq.quantize_model(model, run.spec, windows, awq.AWQConfig(**run.options), **kw)


def quantize(run: Run, *, progress: bool = True, refresh: bool = False, on_step=None) -> QuantResult:
    """The run's QuantResult, computed once (minutes for GPTQ, AWQ and QAT on a CPU) and then read from disk.
    on_step(step, loss): QAT's live loss, when it is computed (a stored run keeps its losses in `options`)."""
    return cached_result("run", run.params(), lambda: _compute(run, progress, on_step), refresh=refresh)


def is_cached(run: Run, ev: Eval | None = None) -> bool:
    """Whether `quantize(run)` (and, with `ev`, `measure(run, ev)`) will read a stored result."""
    done = result_path("run", run.params(), ".safetensors").exists()
    return done and (ev is None or result_path("measure", _measure_params(run, ev)).exists())


def cache_status(runs: list[Run], ev: Eval | None = None) -> str:
    """One line for a notebook: how many of `runs` come from the cache, how many a `prefetch` is computing, and
    how to recompute them."""
    cached_now = sum(is_cached(run, ev) for run in runs)
    pending = sum(not is_cached(run, ev) and _is_pending(run, ev) for run in runs)
    todo = len(runs) - cached_now - pending
    return (
        f"{cached_now} of {len(runs)} whole-model results are read from the cache (~/.cache/qviz/results, written by "
        f"an earlier run or by `qviz prepare`; delete that folder to recompute them)"
        + (f"; {pending} are being computed in the background (the progress bar near the top): this waits for them"
           if pending else "")
        + (f"; {todo} are computed now, with progress bars: a minute or two each" if todo else "")
        + "."
    )  # fmt: skip


_PENDING: set = set()  # result files a `prefetch` thread has still to write


def _is_pending(run: Run, ev: Eval | None) -> bool:
    paths = [result_path("run", run.params(), ".safetensors")]
    if ev is not None:
        paths.append(result_path("measure", _measure_params(run, ev)))
    return any(path in _PENDING for path in paths)


def quantized_model(run: Run, *, progress: bool = True) -> nn.Module:
    """A fresh float copy of the run's model made into the quantized model: `QuantResult.apply`."""
    model, _ = load_model(run.model)
    return quantize(run, progress=progress).apply(model)


_BUILT: dict[str, nn.Module] = {}  # the last quantized model `measure` or `continuation` built, by run


def _built_model(run: Run, progress: bool) -> nn.Module:
    """`quantized_model(run)` for measure and continuation, which only read it: the last one built is kept, so a
    run's continuation right after its measure (as `prefetch` does them) skips a model copy and the unpacking."""
    key = repr(run.params())
    model = _BUILT.get(key)
    if model is None:
        model = quantized_model(run, progress=progress)
        _BUILT.clear()
        _BUILT[key] = model
    return model


def _float_model(name: str) -> nn.Module:
    """The float model to read from: the shared instance in the main thread, a private copy in `prefetch`'s
    thread (a notebook may be hooking the shared one at that moment, and its hooks would see our passes)."""
    return load_model(name, fresh=threading.current_thread() is not threading.main_thread())[0]


def _measure_params(run: Run, ev: Eval) -> dict:
    return {"run": run.params(), "eval": asdict(ev)}


_REFERENCE: dict[
    tuple, ReferenceLogits
] = {}  # the last (model, Eval)'s reference logits: one kept, for memory
_REFERENCE_LOCK = threading.Lock()


def _reference_logits(model_name: str, ev: Eval) -> ReferenceLogits:
    """The reference's logits on `ev`'s windows, shared by every `measure` of this model and evaluation in this
    process (a notebook's table of settings runs the reference once). Only the last pair is kept."""
    key = (model_name, tuple(asdict(ev).items()))
    with _REFERENCE_LOCK:
        if key not in _REFERENCE:
            _REFERENCE.clear()
            tokenizer = load_model(model_name, fresh=False)[1]
            reference = ReferenceLogits(
                _float_model(model_name), eval_windows(tokenizer, ev.text, seqlen=ev.seqlen, n=ev.n)
            )
            for row in range(len(reference.ids)):  # all of them now, under the lock
                reference.stats(row)
            reference.model = load_model(model_name, fresh=False)[0]  # only read now: a private copy is freed
            _REFERENCE[key] = reference
        return _REFERENCE[key]


def measure(run: Run, ev: Eval = Eval(), *, progress: bool = True) -> dict:
    """The quantized model against its reference on held-out windows, in one pass (`qviz.eval.evaluate`):
    {"ppl", "nll", "n_tokens", "kl", "kl_p99", "kl_p999", "top1", "ref_ppl", "bits_per_weight", "linear_mb",
    "label", "method", "bits"}. Cached like `quantize`."""

    def compute():
        model = _built_model(run, progress)
        reference = _reference_logits(run.model, ev)
        out = evaluate(model, reference.windows, reference, progress=progress).as_dict()
        size = model_size(model, run.spec)
        out.update(bits_per_weight=size.bits_per_weight, linear_mb=size.linear_bytes / 1e6)
        return out

    metrics = cached("measure", _measure_params(run, ev), compute)
    return {**metrics, "label": run.spec.label, "method": run.method.upper(), "bits": run.spec.bits}


def reference_metrics(model_name: str, ev: Eval = Eval(), *, progress: bool = True) -> dict:
    """The float reference alone on the same windows: {"ppl", "nll", "n_tokens", "token_nll"}. Cached."""

    def compute():
        logits = _reference_logits(model_name, ev)  # computed here, shared with every `measure` that follows
        return {k: v for k, v in logits.evaluation().as_dict().items() if v is not None}

    return cached("reference", _reference_params(model_name, ev), compute)


def _reference_params(model_name: str, ev: Eval) -> dict:
    return {"model": model_name, "eval": asdict(ev)}


def shipped_runs(model: str = "gemma-3-270m", fast: bool = False) -> dict[str, Run]:
    """The two models notebook 07 packs, runs and ships, exactly as notebooks 05 and 06 make them:

    - "gptq": GPTQ INT4 symmetric g128 with the shipped tools' defaults (act-order, static groups), calibrated
      on 16 × 256 Britannica tokens;
    - "awq": AWQ INT4 asymmetric g128 (the paper's setting), calibrated on the same 16 × 256 Britannica tokens
      as GPTQ (the channel statistics read all of them, the α and clipping searches 512: AWQConfig.search_tokens;
      with this calibration, 257 and 1,028 searched tokens give perplexities within 2%, bench/RESULTS_AWQ.md).

    One definition, so all three notebooks name the same cached result. fast: the test run's small versions
    (GPTQ on the first 2 layers; AWQ on 2 × 64 tokens with a coarser α grid).
    """
    if fast:
        return {
            "gptq": Run(model, "gptq", QuantSpec(bits=4, group_size=128), n_calib=4, calib_len=128, n_layers=2),
            "awq": Run(
                model, "awq", QuantSpec(bits=4, symmetric=False, group_size=128), n_calib=2, calib_len=64,
                options=dict(n_grid=10, search_tokens=None),
            ),
        }  # fmt: skip
    return {
        "gptq": Run(model, "gptq", QuantSpec(bits=4, group_size=128), n_calib=16, calib_len=256),
        "awq": Run(
            model, "awq", QuantSpec(bits=4, symmetric=False, group_size=128), n_calib=16, calib_len=256
        ),
    }


def continuation(run: Run | str, prompt: str, new_tokens: int = 30) -> str:
    """The greedy continuation of `prompt` by the run's quantized model, or by the float model when `run` is a
    model name. Cached; computed only for the texts a notebook shows (each costs a model load and a decode)."""

    def compute():
        name = run if isinstance(run, str) else run.model
        model = _float_model(run) if isinstance(run, str) else _built_model(run, progress=False)
        return {"text": generate(model, load_model(name, fresh=False)[1], prompt, new_tokens)}

    return cached("continuation", _continuation_params(run, prompt, new_tokens), compute)["text"]


def task_score(run: Run | str, task: str, n: int = 100, *, progress: bool = True) -> tasks.TaskScore:
    """The run's quantized model (or, for a model name, the float model) on `n` items of `tasks.make_task(task)`.
    Cached like `measure`."""

    def compute():
        tokenizer = load_model(run if isinstance(run, str) else run.model, fresh=False)[1]
        model = _float_model(run) if isinstance(run, str) else _built_model(run, progress)
        the_task = tasks.make_task(task, tokenizer, n)
        return asdict(tasks.score(model, tokenizer, the_task, progress=progress))

    stored = cached("task", _task_params(run, task, n), compute)
    return tasks.TaskScore(stored["task"], tuple(stored["correct"]), stored["chance"])


def _task_params(run: Run | str, task: str, n: int) -> dict:
    return {"run": run if isinstance(run, str) else run.params(), "task": task, "n": n}


def _continuation_params(run: Run | str, prompt: str, new_tokens: int) -> dict:
    return {"run": run if isinstance(run, str) else run.params(), "prompt": prompt, "new_tokens": new_tokens}


def prefetch(
    runs: Iterable[Run],
    ev: Eval | None = None,
    *,
    prompt: str | None = None,
    new_tokens: int = 30,
    texts: Iterable[Run] | None = None,
    task_names: Iterable[str] = (),
    n_items: int = 100,
    tasks_for: Iterable[Run] | None = None,
    desc: str = "whole-model results (background)",
) -> threading.Thread | None:
    """Start the whole-model work a notebook shows further down in a background thread, so that it runs while
    the learner reads the cells above it: for each run in order, `quantize`, then with `ev` `measure` (the
    reference's own perplexity first), then with `prompt` its `continuation` (and the float model's); `texts`:
    only these runs' continuations (default: every run's); `task_names`: each run's `task_score` on these tasks
    (`n_items` items each), and the float model's first; `tasks_for`: only these runs' (default: every run's).

    Nothing else changes: the cells that show the results call `measure`, `quantize` and `continuation` as
    before. A result already made is read from the cache, one being made is waited for (each result has its own
    lock, `qviz.cache`), one not reached yet is computed by the cell itself. The work is the same either way; it
    only starts earlier. One progress bar, in the cell that calls this. A step that fails in the background is
    left for the cell that needs it, which then computes it and raises the error itself.

    Returns the started thread (daemon), or None when everything is already cached.
    """
    runs = list(runs)
    texts = runs if texts is None else list(texts)
    tasks_for = runs if tasks_for is None else list(tasks_for)
    steps = []  # (label, where its result is stored, function): in the order the notebook shows them
    task_names = list(task_names)

    def add_tasks(of: Run | str, label: str) -> None:
        for task in task_names:
            path = result_path("task", _task_params(of, task, n_items))
            steps.append(
                (
                    f"{label}: {task}",
                    path,
                    lambda of=of, task=task: task_score(of, task, n_items, progress=False),
                )
            )

    for name in dict.fromkeys(run.model for run in runs):
        add_tasks(name, name)
    for run in runs:
        if ev is not None and not any(step[0] == f"{run.model} reference" for step in steps):
            path = result_path("reference", _reference_params(run.model, ev))
            label = f"{run.model} reference"
            steps.append((label, path, lambda run=run: reference_metrics(run.model, ev, progress=False)))
        if ev is not None:
            path = result_path("measure", _measure_params(run, ev))
            steps.append((run.label, path, lambda run=run: measure(run, ev, progress=False)))
        else:
            path = result_path("run", run.params(), ".safetensors")
            steps.append((run.label, path, lambda run=run: quantize(run, progress=False)))
        if run in tasks_for:
            add_tasks(run, run.label)
        if prompt is not None and run in texts:
            path = result_path("continuation", _continuation_params(run, prompt, new_tokens))
            steps.append((f"{run.label}: text", path, lambda run=run: continuation(run, prompt, new_tokens)))
    for name in dict.fromkeys(run.model for run in runs) if prompt is not None else ():
        path = result_path("continuation", _continuation_params(name, prompt, new_tokens))
        steps.append((f"{name}: text", path, lambda name=name: continuation(name, prompt, new_tokens)))
    todo = [(label, path, step) for label, path, step in steps if not path.exists()]
    if not todo:
        return None
    _PENDING.update(path for _, path, _ in todo)
    bar = tqdm(total=len(todo), desc=desc, unit="result")  # made here, so that it shows in this cell

    def work():
        failed = 0
        for label, path, step in todo:
            bar.set_postfix_str(label)
            try:
                step()
            except Exception as err:  # the cell that needs it computes it again and raises it there
                failed += 1
                bar.set_postfix_str(f"{label} failed ({type(err).__name__}); its cell will say why")
            else:
                bar.update()
            finally:
                _PENDING.discard(path)
                if label.endswith(": text"):
                    _BUILT.clear()  # the run's model has served its measure and its text: free it
        if not failed:
            bar.set_postfix_str("done")
        bar.close()

    thread = threading.Thread(target=work, name="qviz-prefetch", daemon=True)
    thread.start()
    return thread
