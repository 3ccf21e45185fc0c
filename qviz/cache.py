"""Cache for results that take minutes (whole-model quantization, evaluation), so a notebook re-runs quickly.

Two kinds, both under `$QVIZ_CACHE/results/` and keyed by a hash of the parameters that produced them and the
qviz version (change any parameter and the result is recomputed; delete the folder, or pass `refresh=True`,
to recompute everything); both written atomically:

- `cached(kind, params, compute)`: a JSON-able dict (metrics, report rows), in `<kind>-<hash>.json`;
- `cached_result(kind, params, compute)`: a `qviz.result.QuantResult` (the codes of every quantized linear), in
  `<kind>-<hash>.safetensors`, so a later notebook can pack, run and ship the model an earlier one made.

Each result is computed under its own lock, so when a background thread (`qviz.runs.prefetch`) is computing it,
a notebook cell asking for the same result waits for it and reads it back instead of computing it a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from qviz import __version__
from qviz.models import cache_dir
from qviz.result import QuantResult

__all__ = ["cache_note", "cached", "cached_result", "result_path", "results_dir"]


_LOCKS: dict[Path, threading.RLock] = {}
_LOCKS_LOCK = threading.Lock()


def _lock(path: Path) -> threading.RLock:
    """The lock of one result file (made on first use)."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(path, threading.RLock())


def results_dir() -> Path:
    return cache_dir() / "results"


def result_path(kind: str, params: dict, suffix: str = ".json") -> Path:
    """Where the result of `kind` for `params` is (or will be) stored."""
    key = json.dumps({"qviz": __version__, **params}, sort_keys=True, default=str)
    return results_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}{suffix}"


def cache_note(kind: str, params: dict, cost: str) -> str:
    """The line a notebook prints before `cached(kind, params, ...)`: read from the cache (and how to recompute
    it), or computed now (`cost`, e.g. "about a minute") and then cached."""
    path = result_path(kind, params)
    if path.exists():
        return f"{kind}: read from the cache ({path}; delete that file to recompute it)"
    return f"{kind}: computed now ({cost}), then cached in {results_dir()} for the next run"


def cached(kind: str, params: dict, compute: Callable[[], dict], *, refresh: bool = False) -> dict:
    """`compute()` once for these `params`; later calls with equal params read the stored result.

    params must fully describe the computation (model, spec, text, windows, seeds): it is the cache key.
    compute() must return JSON data (dicts, lists, str, int, float, bool, None), so that a later call gets
    back exactly what the first one did. A stored file that is truncated, or holds other params, raises
    ValueError naming it (delete it, or pass refresh=True).
    """
    path = result_path(kind, params)
    with _lock(path):  # another thread computing it: wait, then read what it stored
        if path.exists() and not refresh:
            return _read(path, params)
        result = compute()
        _write(path, params, result, kind)
    return result


def _write(path: Path, params: dict, result: dict, kind: str) -> None:
    try:
        stored = json.dumps(result)  # no default=str: a tensor would come back as its str()
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"cached({kind!r}, ...): compute() must return JSON data (numbers, strings, lists, dicts): {err}; "
            "convert tensors with .item() or .tolist()"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(f'{{"params": {_key(params)}, "result": {stored}}}')
    os.replace(f.name, path)


def _key(params: dict) -> str:
    """params as JSON; values JSON lacks (a torch.dtype) enter as str(value)."""
    return json.dumps(params, sort_keys=True, default=str)


def _read(path: Path, params: dict) -> dict:
    fix = f"delete it (or the whole cache, {results_dir()}) to recompute it, or pass refresh=True"
    try:
        stored = json.loads(path.read_text())
        stored_params, result = stored["params"], stored["result"]
    except (ValueError, KeyError, TypeError) as err:  # truncated (JSONDecodeError), or not a cache entry
        raise ValueError(
            f"{path} is not a readable qviz cache entry ({type(err).__name__}: {err}); {fix}"
        ) from None
    if _key(stored_params) != _key(params):
        raise ValueError(
            f"{path} holds the result of other parameters ({stored_params}), not {params}; {fix}"
        )
    return result


def cached_result(
    kind: str, params: dict, compute: Callable[[], QuantResult], *, refresh: bool = False
) -> QuantResult:
    """Like `cached`, for a QuantResult: `compute()` once, then `QuantResult.load` of the stored file."""
    path = result_path(kind, params, ".safetensors")
    with _lock(path):
        if path.exists() and not refresh:
            return QuantResult.load(path)
        result = compute()
        result.save(path)
    return result
