"""H = 2XXᵀ/n: the Hessian of a linear's squared output error ‖WX − QX‖² with respect to one row of W.

X (in_features, tokens) holds the inputs a linear receives on calibration text. GPTQ needs H itself; the
reports and AWQ's clipping search use it to measure output errors without keeping X (`qviz.calib.report`).
It is accumulated batch by batch as a running average, in float32 (the reference code's choice).
"""

from __future__ import annotations

import torch

__all__ = ["Hessian", "HessianSet"]


class Hessian:
    """Running average H = 2/n · Σ x xᵀ over calibration tokens, in float32 (or float64 if asked).

    >>> h = Hessian(2)
    >>> h.add_batch(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))  # 2 tokens: H = 2/2 · (x1x1ᵀ + x2x2ᵀ)
    >>> h.H.tolist()
    [[2.0, 2.0], [2.0, 4.0]]
    """

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float32):
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = in_features
        self.dtype = dtype
        self.n_tokens = 0
        self._H: torch.Tensor | None = None

    def add_batch(self, X: torch.Tensor) -> None:
        """X: (tokens, in_features) or (..., in_features), e.g. a linear's input (batch, seq, in_features)."""
        if X.shape[-1] != self.in_features:
            raise ValueError(f"X has {X.shape[-1]} features, this Hessian expects {self.in_features}")
        X = X.reshape(-1, self.in_features).to(self.dtype)
        n = X.shape[0]
        if n == 0:
            raise ValueError("add_batch got no tokens")
        XtX = _gram(X)
        # A NaN or Inf in X reaches diag(XᵀX) = Σ x², so checking its n diagonal entries checks every value of
        # X (far cheaper than a pass over X; an |x| > 1e19, whose square overflows, is refused too).
        if not torch.isfinite(torch.diagonal(XtX)).all():
            raise ValueError("X has NaN or Inf values: calibration inputs must be finite")
        if self._H is None:
            self._H = torch.zeros_like(XtX)
        old = self.n_tokens
        self.n_tokens += n
        self._H.mul_(old / self.n_tokens).add_(XtX, alpha=2 / self.n_tokens)  # running average of 2xxᵀ

    @property
    def H(self) -> torch.Tensor:
        if self._H is None:
            raise ValueError("no calibration tokens were added: call add_batch(X) first")
        return self._H


def _gram(X: torch.Tensor, blocks: int = 3) -> torch.Tensor:
    """XᵀX for X (tokens, n). It is symmetric, so for n >= 512 only the blocks on and above the diagonal are
    multiplied (6 of 9) and the others are their transposes: a third less work than one product."""
    n = X.shape[1]
    if n < 512:
        return X.T @ X
    G = torch.empty(n, n, dtype=X.dtype, device=X.device)
    edges = [n * i // blocks for i in range(blocks + 1)]
    for i in range(blocks):
        a = slice(edges[i], edges[i + 1])
        for j in range(i, blocks):
            b = slice(edges[j], edges[j + 1])
            G[a, b] = X[:, a].T @ X[:, b]
            if j != i:
                G[b, a] = G[a, b].T
    return G


class HessianSet:
    """One `Hessian` per linear, filled from the linears' inputs during forward calls of their layer.

    Linears that read the very same tensor in a call (q/k/v after the input norm, gate/up) share ONE Hessian
    object, accumulated once: `hessians["self_attn.q_proj"] is hessians["self_attn.k_proj"]`. Call
    `new_call()` before each forward call and `add(name, X)` from each linear's pre-hook, with X the tensor
    the linear received (the same object for linears that read the same tensor).
    """

    def __init__(self):
        self.hessians: dict[str, Hessian] = {}
        self._seen: list[
            tuple[torch.Tensor, Hessian]
        ] = []  # this call's inputs so far, each with its Hessian

    def new_call(self) -> None:
        self._seen = []

    def add(self, name: str, X: torch.Tensor) -> None:
        shared = next((h for seen, h in self._seen if seen is X), None)
        if shared is None:  # the first linear reading this tensor in this call accumulates it
            shared = self.hessians.setdefault(name, Hessian(X.shape[-1]))
            shared.add_batch(X)
            self._seen.append((X, shared))
        self.hessians.setdefault(name, shared)
