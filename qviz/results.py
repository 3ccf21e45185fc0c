"""Cache for results that take minutes (whole-model quantization + evaluation), so a notebook re-runs quickly.

A result is a JSON-able dict stored under `$QVIZ_CACHE/results/<kind>-<hash>.json`, where the hash covers the
parameters that produced it and the qviz version. Change any parameter and the result is recomputed; delete the
folder (or pass `refresh=True`) to recompute everything. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from qviz import __version__
from qviz.models import cache_dir

__all__ = ["cached", "results_dir"]


def results_dir() -> Path:
    return cache_dir() / "results"


def _path(kind: str, params: dict) -> Path:
    key = json.dumps({"qviz": __version__, **params}, sort_keys=True, default=str)
    return results_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cached(kind: str, params: dict, compute: Callable[[], dict], *, refresh: bool = False) -> dict:
    """`compute()` once for these `params`; later calls with equal params read the stored result.

    params must fully describe the computation (model, spec, text, windows, seeds): it is the cache key.
    """
    path = _path(kind, params)
    if path.exists() and not refresh:
        return json.loads(path.read_text())["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump({"params": params, "result": result}, f, default=str)
    os.replace(f.name, path)
    return result
