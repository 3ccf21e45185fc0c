"""Evaluate a (quantized) causal LM against its float reference: perplexity, KL, top-1 agreement, size, text.

Every function takes token windows from `qviz.data` (text the model did not write), never the model's
own samples. Models run where their parameters are; nothing assumes a GPU.

Perplexity, token-level, with explicit context length and stride (the Hugging Face "sliding window" recipe):

    ppl = exp( Σ_t −log p(x_t | x_<t) / T )        T = number of predicted (scored) tokens

Each row of `windows` is an independent text. The model reads it in chunks of at most `seqlen` tokens that
start every `stride` tokens; a chunk scores only the tokens that no earlier chunk scored, so no token is
ever counted twice and only its context length depends on the stride:

    stride == seqlen   non-overlapping chunks (the GPTQ paper's protocol): token t sees t mod seqlen tokens
    stride <  seqlen   overlapping chunks: every scored token after the first chunk sees ≥ seqlen − stride
                       tokens of context, so perplexity drops slightly, at seqlen/stride times the compute

Without BOS, a token with no context cannot be scored: the first token of a row, and with stride == seqlen
the first token of every chunk (as in the GPTQ protocol). With `bos_token_id`, every chunk is prefixed with
BOS (context only, never a target) and every token of the row is scored. The default, "auto", takes the
model's `config.bos_token_id` when it has one: Gemma expects BOS (Gemma-3-270M on 1024 Britannica tokens:
ppl 18.9 with BOS, 34.5 without); pass None to score raw windows.

`evaluate` is the one pass the notebooks and benchmarks use to compare a quantized model with its reference:
each window read once by each model gives perplexity, the KL divergence per token (its mean and its tail,
p99 and p99.9) and top-1 agreement together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .arch import decoder_layers, family_of, linear_layers
from .data import check_positions, check_token_ids, with_bos

__all__ = [
    "Evaluation",
    "ReferenceLogits",
    "SizeReport",
    "TokenView",
    "evaluate",
    "flips",
    "generate",
    "kl_tail",
    "model_size",
    "nll",
    "paired_difference",
    "perplexity",
    "token_view",
]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _scorable_ids(model: nn.Module, windows, bos_token_id, whole: bool = True) -> tuple[torch.Tensor, int]:
    """`qviz.data.with_bos`'s (ids, n_bos), refusing rows that leave nothing to score."""
    ids, n_bos = with_bos(model, windows, bos_token_id, whole=whole)
    if ids.shape[1] < 2:
        raise ValueError(
            "windows of one token and no BOS leave nothing to score (a token needs one before it): pass longer "
            "windows or a bos_token_id"
        )
    return ids, n_bos


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(1, L) token ids -> (L, vocab) float32 logits, on the model's device."""
    return model(input_ids=ids.to(_device(model)), use_cache=False).logits[0].float()


@torch.no_grad()
def nll(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    seqlen: int | None = None,
    stride: int | None = None,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
) -> tuple[float, int]:
    """(total negative log-likelihood in nats, number of scored tokens); see the module docstring."""
    ids, n_bos = _scorable_ids(model, windows, bos_token_id, whole=False)  # chunks are checked below
    bos, rows = ids[0, :n_bos], ids[:, n_bos:]
    length = rows.shape[1]
    for name, value in (("seqlen", seqlen), ("stride", stride)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer or None, got {value!r}")
    seqlen = length + n_bos if seqlen is None else seqlen
    ctx = seqlen - n_bos  # text tokens per chunk
    stride = ctx if stride is None else stride
    if ctx < 1 or not 1 <= stride <= ctx:
        raise ValueError(
            f"need 1 <= stride <= seqlen{' - 1 (BOS)' if n_bos else ''}; got seqlen={seqlen}, stride={stride}"
        )
    check_positions(model, min(seqlen, length + n_bos), lambda limit: f"pass seqlen={limit} or less")
    starts = range(0, max(length - ctx, 0) + stride, stride)  # the last chunk reaches the end of the row
    total, count = 0.0, 0
    bar = tqdm(total=len(rows) * len(starts), desc="perplexity", unit="chunk", disable=not progress)
    for row in rows:
        scored_to = 1 - n_bos  # row positions < scored_to are already scored (or unscorable)
        for begin in starts:
            end = min(begin + ctx, length)
            logits = _logits(model, torch.cat([bos, row[begin:end]])[None])
            # logits[j] predicts chunk token j + 1; row position p is chunk token p - begin + n_bos
            first = max(scored_to, begin + 1 - n_bos)
            pos = torch.arange(first, end)
            pred = logits[pos - begin + n_bos - 1]
            total += F.cross_entropy(pred, row[pos].to(pred.device), reduction="sum").item()
            count += len(pos)
            scored_to = end
            bar.update()
    bar.close()
    return total, count


def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    seqlen: int | None = None,
    stride: int | None = None,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
) -> float:
    """Token-level perplexity exp(total NLL / scored tokens) of `windows` (n, L) or (L,).

    seqlen: most tokens the model reads at once, BOS included (default: the row length, plus BOS).
    stride: step between chunk starts, 1 <= stride <= seqlen (default: non-overlapping chunks).

    >>> # perplexity(model, eval_windows(tok, "britannica", seqlen=512, n=2))  -> e.g. 24.3 for SmolLM2
    """
    total, count = nll(
        model, windows, seqlen=seqlen, stride=stride, bos_token_id=bos_token_id, progress=progress
    )
    return math.exp(total / count)


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` measures, per scored token (nats). Without a reference, the KL fields are None."""

    ppl: float  # exp(nll): the model's perplexity on the windows
    nll: float  # mean −log p(x_t | x_<t) over the scored tokens
    n_tokens: int  # scored tokens: every token of every window (with BOS, which is context, never a target)
    kl: float | None = None  # mean over tokens of KL(p_ref ‖ p_model): 0 when the models agree exactly
    kl_p99: float | None = None  # the 99th percentile of the per-token KL: the tail a mean hides
    kl_p999: float | None = None  # the 99.9th percentile
    top1: float | None = None  # fraction of tokens where both models' most likely next token is the same
    ref_ppl: float | None = None  # the reference's perplexity on the same tokens
    token_nll: list[float] | None = None  # −log p of every scored token, in order (for paired comparisons)
    token_kl: list[float] | None = None  # KL at every scored token, in order

    def as_dict(self) -> dict:
        return asdict(self)


class ReferenceLogits:
    """A reference model's logits on a fixed set of windows, computed on first use and kept, so comparing several
    models with one reference (a notebook's table of settings) runs the reference once, not once per model.
    Pass it to `evaluate` in place of the reference model. Memory: scored tokens × vocabulary × 4 bytes (Gemma's
    262,144-token vocabulary, 1,024 tokens: 1.1 GB).
    """

    def __init__(
        self, reference: nn.Module, windows: torch.Tensor, *, bos_token_id: int | str | None = "auto"
    ):
        self.model = reference
        self.ids, n_bos = _scorable_ids(reference, windows, bos_token_id)  # (n, n_bos + L): BOS and windows
        self.windows = self.ids[:, n_bos:]  # (n, L): as given, to evaluate(model, logits.windows, logits)
        self._logits: dict[int, torch.Tensor] = {}  # row -> (scored tokens, vocab) float32, on the CPU
        self._stats: dict[int, dict] = {}  # row -> `_reference_stats` of its logits

    def logits(self, row: int) -> torch.Tensor:
        if row not in self._logits:
            self._logits[row] = _logits(self.model, self.ids[row : row + 1])[:-1].cpu()
        return self._logits[row]

    def stats(self, row: int) -> dict:
        """`_reference_stats` of the row's logits, computed once."""
        if row not in self._stats:
            self._stats[row] = _reference_stats(self.logits(row), self.ids[row, 1:])
        return self._stats[row]

    def evaluation(self) -> Evaluation:
        """The reference's own perplexity on these windows, from the stored logits (no second pass)."""
        nll = torch.cat([self.stats(i)["ref_nll"].double() for i in range(len(self.ids))])
        return Evaluation(
            ppl=math.exp(nll.mean().item()), nll=nll.mean().item(), n_tokens=len(nll), token_nll=nll.tolist()
        )


def _token_nll(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−log softmax(z)[target] per position: z (positions, vocab) logits, targets (positions,). float64, CPU."""
    z = z.float()
    return (torch.logsumexp(z, -1) - z.gather(-1, targets[:, None].to(z.device))[:, 0]).double().cpu()


def _reference_stats(z_ref: torch.Tensor, targets: torch.Tensor, chunk: int = 8) -> dict:
    """What `_token_stats` needs of the reference alone, per scored token: log Σ_v e^{z_v} ("lse"), the likeliest
    token ("top") and −log p of the target ("ref_nll"). `ReferenceLogits` computes them once for many models."""
    out = {"lse": [], "top": [], "ref_nll": []}
    for a in range(0, len(z_ref), chunk):
        zr, t = z_ref[a : a + chunk].float(), targets[a : a + chunk, None]
        lse = torch.logsumexp(zr, -1)
        out["lse"].append(lse)
        out["top"].append(zr.argmax(-1))
        out["ref_nll"].append(lse - zr.gather(-1, t)[:, 0])
    return {k: torch.cat(v) for k, v in out.items()}


def _token_stats(
    z_ref: torch.Tensor, z: torch.Tensor, targets: torch.Tensor, ref: dict | None = None, chunk: int = 8
) -> dict:
    """Per scored token, from the two models' logits (tokens, vocab): the model's and the reference's −log p of the
    target, KL(p_ref ‖ p_model), and whether their most likely tokens agree. Positions are taken `chunk` at a time,
    so that every temporary stays in the CPU's cache (8 MB for 8 positions of a 262k-word vocabulary; 64 positions
    ran 2.4x slower), instead of several GB of log-probabilities.
    ref: `_reference_stats(z_ref, targets)` when already known (computed here otherwise: the same numbers).

    KL is computed from the logit difference d = z_ref − z, so it keeps its digits where it is small. With
    p = softmax(z_ref), KL = Σ_v p_v d_v + log Σ_v p_v e^{−d_v}; with m = Σ_v p_v d_v that is

        KL = log(1 + Σ_v p_v (e^{m − d_v} − 1))          (log1p and expm1: no cancellation near 0)

    KL does not change when d shifts by a constant, so d is first centred on its value at the reference's likeliest
    token: a logit offset common to the whole vocabulary then never meets float32 rounding in m. Its test compares
    it with the textbook Σ p (log p − log q) in float64; for small KL the float32 textbook form is ~20x less accurate.
    """
    ref = _reference_stats(z_ref, targets, chunk) if ref is None else ref
    out = {"nll": [], "kl": [], "agree": []}
    for a in range(0, len(z), chunk):
        zr, zm, t = z_ref[a : a + chunk].float(), z[a : a + chunk].float(), targets[a : a + chunk, None]
        lse, top = ref["lse"][a : a + chunk, None], ref["top"][a : a + chunk, None]
        out["nll"].append(torch.logsumexp(zm, -1) - zm.gather(-1, t)[:, 0])
        p = torch.exp(zr - lse)  # softmax(z_ref), its normaliser known
        d = zr - zm
        d -= d.gather(
            -1, top
        )  # centred on the likeliest token's difference: a shift common to all cancels first
        m = (p * d).sum(-1, keepdim=True)
        out["kl"].append(torch.log1p((p * torch.expm1(m - d)).sum(-1)))
        out["agree"].append(top[:, 0] == zm.argmax(-1))
    return {**{k: torch.cat(v).cpu() for k, v in out.items()}, "ref_nll": ref["ref_nll"].cpu()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: torch.Tensor,
    reference: nn.Module | ReferenceLogits | None = None,
    *,
    bos_token_id: int | str | None = "auto",
    progress: bool = True,
) -> Evaluation:
    """Perplexity, and with a `reference` the KL divergence (mean and tail) and top-1 agreement, in ONE pass:
    each window (a row of `windows` (n, L)) is read once by each model, whole, prefixed with BOS ("auto":
    the model's config.bos_token_id), and every one of its L tokens is scored from the logits of that pass
    (L − 1 without BOS). Perplexity is `perplexity`'s with its defaults; KL and top-1 are on the same tokens.

    KL(p‖q) = Σ_v p(v) (log p(v) − log q(v)) per token, p from the reference, q from the model under test.
    reference: the float model, or its `ReferenceLogits` on these windows (computed once for many models).
    """
    ids, _ = _scorable_ids(model, windows, bos_token_id)  # (n, n_bos + L)
    ref_model = reference.model if isinstance(reference, ReferenceLogits) else reference
    if isinstance(reference, ReferenceLogits):
        if not torch.equal(reference.ids, ids):
            raise ValueError("these ReferenceLogits were computed on other windows (or another BOS)")
    elif reference is not None:  # the reference reads the same ids: its vocabulary and positions checked too
        if not torch.equal(with_bos(reference, windows, bos_token_id)[0], ids):
            raise ValueError("the two models have different BOS tokens: pass bos_token_id explicitly")
    if ref_model is not None:
        sizes = [getattr(m.get_output_embeddings(), "out_features", None) for m in (model, ref_model)]
        if sizes[0] != sizes[1]:
            raise ValueError(
                f"the model predicts {sizes[0]} tokens, the reference {sizes[1]}: KL and top-1 compare two "
                "models of one vocabulary (a quantized model and its float original)"
            )
    nlls, stats = [], []
    for index in tqdm(range(len(ids)), desc="evaluate", unit="window", disable=not progress):
        row = ids[index : index + 1]  # (1, n_bos + L)
        # logits[t] predicts row[t + 1]: the targets are the window (without BOS: from its second token)
        targets = row[0, 1:].to(_device(model))
        z = _logits(model, row)[
            :-1
        ]  # (scored tokens, vocab); always run: `model` may be the reference, changed
        if reference is None:
            nlls.append(_token_nll(z, targets))
            continue
        if isinstance(reference, ReferenceLogits):
            z_ref = reference.logits(index).to(z.device)
            ref = {k: v.to(z.device) for k, v in reference.stats(index).items()}
            stats.append(_token_stats(z_ref, z, targets, ref))
        else:
            stats.append(_token_stats(_logits(reference, row)[:-1].to(z.device), z, targets))
    if reference is None:
        nll = torch.cat(nlls)
        return Evaluation(
            ppl=math.exp(nll.mean().item()), nll=nll.mean().item(), n_tokens=len(nll), token_nll=nll.tolist()
        )
    nll, ref_nll, kl = (torch.cat([s[k] for s in stats]).double() for k in ("nll", "ref_nll", "kl"))
    agree = torch.cat([s["agree"] for s in stats])
    return Evaluation(
        ppl=math.exp(nll.mean().item()),
        nll=nll.mean().item(),
        n_tokens=len(nll),
        kl=kl.mean().item(),
        kl_p99=torch.quantile(kl, 0.99).item(),
        kl_p999=torch.quantile(kl, 0.999).item(),
        top1=agree.double().mean().item(),
        ref_ppl=math.exp(ref_nll.mean().item()),
        token_nll=nll.tolist(),
        token_kl=kl.tolist(),
    )


def paired_difference(a: list[float], b: list[float], block: int = 64) -> tuple[float, float]:
    """Mean of a − b over the same tokens (e.g. the per-token KL of two models, `Evaluation.token_kl`) and its
    standard error: the noise of the comparison itself, from this text.

    Neighbouring tokens are correlated, so the plain per-token standard error would be too small; this uses
    "batch means": the differences averaged over consecutive blocks of `block` tokens, whose spread gives the
    error of their mean. A verdict "a is lower than b" needs the difference to exceed about 2 standard errors.

    >>> paired_difference([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0], block=2)
    (1.0, 0.0)
    """
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if a.dim() != 1 or a.shape != b.shape or len(a) < 2 * block:  # unequal lengths would broadcast
        raise ValueError(
            f"need two equal-length lists of at least {2 * block} tokens (block={block}), got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    d = a - b
    means = d[: len(d) // block * block].reshape(-1, block).mean(1)
    return d.mean().item(), (means.std() / math.sqrt(len(means))).item()


def kl_tail(token_kl: list[float], quantiles=(0.5, 0.9, 0.99, 0.999)) -> dict[str, float]:
    """Quantiles of the per-token KL (`Evaluation.token_kl`, or a `measure` result's "token_kl"), e.g.
    {"p50": ..., "p90": ..., "p99": ..., "p99.9": ...}: linear interpolation between order statistics, as
    numpy.quantile's default. Two models with one mean KL can differ here: a few tokens badly wrong (a long
    tail) or all tokens a little wrong."""
    kl = torch.as_tensor(token_kl, dtype=torch.float64)
    if kl.dim() != 1 or len(kl) == 0 or not all(0 < q < 1 for q in quantiles):
        raise ValueError(f"need a non-empty list of per-token KL and quantiles in (0, 1), got {quantiles}")
    return {f"p{100 * q:g}": torch.quantile(kl, q).item() for q in quantiles}


def flips(evaluation: Evaluation | dict) -> int:
    """How many scored tokens changed their top-1 prediction ("flips"): n_tokens × (1 − top1)."""
    get = evaluation.get if isinstance(evaluation, dict) else lambda k: getattr(evaluation, k)
    if get("top1") is None:
        raise ValueError("flips needs an evaluation against a reference (top1 is None)")
    return round(get("n_tokens") * (1 - get("top1")))


@dataclass(frozen=True)
class TokenView:
    """One passage token by token, as two models read it (`token_view`): what a mean hides."""

    tokens: list[str]  # each scored token's text
    logp_ref: list[float]  # log p_ref(token | the tokens before it), nats
    logp: list[float]  # log p_model(token | the tokens before it)
    kl: list[float]  # KL(p_ref ‖ p_model) of the prediction of this token
    top_ref: list[str]  # the reference's likeliest token at this place
    top: list[str]  # the model's

    @property
    def delta(self) -> list[float]:
        """log p_model − log p_ref per token: negative where quantization made the true text less likely."""
        return [a - b for a, b in zip(self.logp, self.logp_ref, strict=True)]

    @property
    def flipped(self) -> list[bool]:
        """Where the two models' likeliest next tokens differ."""
        return [a != b for a, b in zip(self.top, self.top_ref, strict=True)]


@torch.no_grad()
def token_view(
    model: nn.Module, reference: nn.Module, tokenizer, text: str, *, bos_token_id: int | str | None = "auto"
) -> TokenView:
    """Every token of `text` scored by `model` and by `reference` in one pass each (BOS first, as `evaluate`):
    log-probabilities, per-token KL and each model's top-1 prediction. For a learner's own text."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string: paste a passage or a prompt")
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    ids, n_bos = _scorable_ids(model, ids, bos_token_id)
    if ids.shape[1] > 4096:
        raise ValueError(f"the text is {ids.shape[1]} tokens; paste at most 4,096")
    z, z_ref = _logits(model, ids)[:-1], _logits(reference, ids)[:-1].to(_device(model))
    targets = ids[0, 1:].to(z.device)
    stats = _token_stats(z_ref, z, targets)
    names = lambda t: [tokenizer.decode([int(i)]) for i in t]
    return TokenView(
        tokens=names(targets),
        logp_ref=(-stats["ref_nll"]).tolist(),
        logp=(-stats["nll"]).tolist(),
        kl=stats["kl"].tolist(),
        top_ref=names(z_ref.argmax(-1)),
        top=names(z.argmax(-1)),
    )


@dataclass(frozen=True)
class SizeReport:
    linear_params: int  # weights of the decoder layers' linears: what the quantizers replace
    linear_bytes: float  # their storage: dtype size, or codes + scales + zero points under a QuantSpec
    other_params: int  # everything else (embeddings, norms, biases, an untied lm_head), kept in float
    other_bytes: float

    @property
    def bits_per_weight(self) -> float:
        """Average bits per linear weight, scales and zero points included."""
        return 8 * self.linear_bytes / self.linear_params

    @property
    def total_bytes(self) -> float:
        return self.linear_bytes + self.other_bytes


def model_size(model: nn.Module, spec=None) -> SizeReport:
    """Storage of a model: decoder linears (float from their dtype, or quantized with `spec`) + the rest.

    spec: a qviz.quant.QuantSpec applied to every decoder linear, or None for the float weights as they are.
    Parameters shared between modules (tied embeddings) are counted once.
    """
    family = family_of(model)
    linear_weights = {
        id(lin.weight): lin.weight
        for layer in decoder_layers(model)
        for lin in linear_layers(layer, family).values()
    }
    if spec is None:
        linear_bytes = sum(w.numel() * w.element_size() for w in linear_weights.values())
    else:
        from .quant import bits_per_weight

        linear_bytes = sum(
            bits_per_weight(spec, tuple(w.shape)) * w.numel() / 8 for w in linear_weights.values()
        )
    others = [p for p in model.parameters() if id(p) not in linear_weights]  # parameters() skips tied copies
    return SizeReport(
        linear_params=sum(w.numel() for w in linear_weights.values()),
        linear_bytes=float(linear_bytes),
        other_params=sum(p.numel() for p in others),
        other_bytes=float(sum(p.numel() * p.element_size() for p in others)),
    )


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of `prompt` (deterministic, so two models can be compared side by side).

    Returns only the new text, without the prompt.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    enc = tokenizer(prompt, return_tensors="pt").to(_device(model))
    check_token_ids(model, enc["input_ids"], "the prompt's tokens")
    n = enc["input_ids"].shape[1]
    fix = lambda limit: f"ask for at most {limit - n} new tokens, or shorten the prompt"
    check_positions(
        model, n + max_new_tokens, fix, f"the prompt's {n} tokens + max_new_tokens={max_new_tokens}"
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, top_p=None, top_k=None
    )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
