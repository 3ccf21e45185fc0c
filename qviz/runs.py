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

The reference is the float model `qviz.models.load_model` gives: for the offline models, the dequantized GGUF
release, not the original training weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from . import awq, gptq, rtn
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
    "quantize",
    "quantized_model",
    "reference_metrics",
    "shipped_runs",
]

METHODS = ("rtn", "gptq", "awq")


@dataclass(frozen=True)
class Run:
    """One whole-model quantization: which model, method, spec and calibration."""

    model: str = "gemma-3-270m"  # an offline name, a Hugging Face id or a local folder
    method: str = "rtn"  # "rtn", "gptq" or "awq"
    spec: QuantSpec = QuantSpec(bits=4, group_size=128)
    calib: str = "britannica"  # calibration text (`qviz.data`), from the half evaluation never reads
    n_calib: int = 16  # calibration windows ...
    calib_len: int = 512  # ... of this many tokens (BOS added)
    options: dict = field(default_factory=dict)  # the method's own, e.g. {"act_order": False}; AWQ: AWQConfig
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


def _compute(run: Run, progress: bool) -> QuantResult:
    model, tokenizer = load_model(run.model)  # a fresh copy: methods quantize in place
    kw = dict(n_layers=run.n_layers, progress=progress)
    if run.method == "rtn":
        return rtn.quantize_model(model, run.spec, **kw)
    windows = calib_windows(tokenizer, run.calib, seqlen=run.calib_len, n=run.n_calib)
    if run.method == "gptq":
        return gptq.quantize_model(model, run.spec, windows, **run.options, **kw)
    return awq.quantize_model(model, run.spec, windows, awq.AWQConfig(**run.options), **kw)


def quantize(run: Run, *, progress: bool = True, refresh: bool = False) -> QuantResult:
    """The run's QuantResult, computed once (minutes for GPTQ and AWQ on a CPU) and then read from disk."""
    return cached_result("run", run.params(), lambda: _compute(run, progress), refresh=refresh)


def is_cached(run: Run, ev: Eval | None = None) -> bool:
    """Whether `quantize(run)` (and, with `ev`, `measure(run, ev)`) will read a stored result."""
    done = result_path("run", run.params(), ".safetensors").exists()
    return done and (ev is None or result_path("measure", _measure_params(run, ev)).exists())


def cache_status(runs: list[Run], ev: Eval | None = None) -> str:
    """One line for a notebook: how many of `runs` come from the cache, and how to recompute them."""
    cached_now = sum(is_cached(run, ev) for run in runs)
    todo = len(runs) - cached_now
    return (
        f"{cached_now} of {len(runs)} whole-model results are read from the cache (~/.cache/qviz/results, written by "
        f"an earlier run or by `qviz prepare`; delete that folder to recompute them)"
        + (f"; the other {todo} are computed now, with progress bars: a minute or two each" if todo else ".")
    )


def quantized_model(run: Run, *, progress: bool = True) -> nn.Module:
    """A fresh float copy of the run's model made into the quantized model: `QuantResult.apply`."""
    model, _ = load_model(run.model)
    return quantize(run, progress=progress).apply(model)


def _measure_params(run: Run, ev: Eval) -> dict:
    return {"run": run.params(), "eval": asdict(ev)}


_REFERENCE: dict[
    tuple, ReferenceLogits
] = {}  # the last (model, Eval)'s reference logits: one kept, for memory


def _reference_logits(model_name: str, ev: Eval) -> ReferenceLogits:
    """The reference's logits on `ev`'s windows, shared by every `measure` of this model and evaluation in this
    process (a notebook's table of settings runs the reference once). Only the last pair is kept."""
    key = (model_name, tuple(asdict(ev).items()))
    if key not in _REFERENCE:
        _REFERENCE.clear()
        reference, tokenizer = load_model(model_name, fresh=False)
        _REFERENCE[key] = ReferenceLogits(
            reference, eval_windows(tokenizer, ev.text, seqlen=ev.seqlen, n=ev.n)
        )
    return _REFERENCE[key]


def measure(run: Run, ev: Eval = Eval(), *, progress: bool = True) -> dict:
    """The quantized model against its reference on held-out windows, in one pass (`qviz.eval.evaluate`):
    {"ppl", "nll", "n_tokens", "kl", "kl_p99", "kl_p999", "top1", "ref_ppl", "bits_per_weight", "linear_mb",
    "label", "method", "bits"}. Cached like `quantize`."""

    def compute():
        _, tokenizer = load_model(run.model, fresh=False)
        model = quantized_model(run, progress=progress)
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

    return cached("reference", {"model": model_name, "eval": asdict(ev)}, compute)


def shipped_runs(model: str = "gemma-3-270m", fast: bool = False) -> dict[str, Run]:
    """The two models notebook 07 packs, runs and ships, exactly as notebooks 05 and 06 make them:

    - "gptq": GPTQ INT4 symmetric g128 with the shipped tools' defaults (act-order, static groups), calibrated
      on 16 × 256 Britannica tokens;
    - "awq": AWQ INT4 asymmetric g128 (the paper's setting), calibrated on 16 × 512 Britannica tokens (its
      α and clipping searches read 512 of them: AWQConfig.search_tokens).

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
            model, "awq", QuantSpec(bits=4, symmetric=False, group_size=128), n_calib=16, calib_len=512
        ),
    }


def continuation(run: Run | str, prompt: str, new_tokens: int = 30) -> str:
    """The greedy continuation of `prompt` by the run's quantized model, or by the float model when `run` is a
    model name. Cached; computed only for the texts a notebook shows (each costs a model load and a decode)."""

    def compute():
        if isinstance(run, str):
            model, tokenizer = load_model(run, fresh=False)
        else:
            model, tokenizer = quantized_model(run, progress=False), load_model(run.model, fresh=False)[1]
        return {"text": generate(model, tokenizer, prompt, new_tokens)}

    key = {"run": run if isinstance(run, str) else run.params(), "prompt": prompt, "new_tokens": new_tokens}
    return cached("continuation", key, compute)["text"]
