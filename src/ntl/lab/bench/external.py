"""Other libraries' cross-entropy kernels, timed beside ours on the same tensors (CE only: they
have no number loss): Liger-Kernel's cross-entropy on logits (``liger-ce``) and fused linear
cross-entropy from hidden states (``liger-flce``), and Apple's Cut Cross-Entropy (``cce``).

Both are optional and never dependencies of ntl: a case whose package is not installed, or that
needs CUDA on a CPU run, is left out with the reason. Their call signatures, as of liger-kernel
0.8 and cut-cross-entropy 25.1 (both also older releases):
``LigerCrossEntropyLoss()(logits (N, V), target (N,))``,
``LigerFusedLinearCrossEntropyLoss()(weight (V, d), hidden (N, d), target (N,))``,
``cut_cross_entropy.linear_cross_entropy(hidden (N, d), weight (V, d), target (N,))``; each
returns the mean CE over targets other than -100.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

PACKAGES = {"liger-ce": ("liger_kernel", "liger-kernel"),
            "liger-flce": ("liger_kernel", "liger-kernel"),
            "cce": ("cut_cross_entropy", "cut-cross-entropy")}
"""case -> (import name, distribution name)."""
LOGITS_CASES = ("liger-ce",)
"""Cases on logits (B, T, V)."""
LINEAR_CASES = ("liger-flce", "cce")
"""Cases from hidden states (N, d) and the output weight (V, d)."""

Case = tuple[Callable[[], Any], tuple[Any, ...]]
"""A loss function (no arguments, returns the scalar loss) and the leaves whose ``.grad`` it
fills."""


def unavailable(case: str, device: str) -> str | None:
    """Why ``case`` cannot run here (``"not installed"``, ``"needs CUDA"``), or None."""
    module, dist = PACKAGES[case]
    if importlib.util.find_spec(module) is None:
        return f"not installed (pip install {dist})"
    if device != "cuda":
        return "needs CUDA (Triton kernels)"
    return None


def _load(module: str, attr: str) -> Any:
    return getattr(importlib.import_module(module), attr)


def _build(builders: dict[str, Callable[[], Case]], device: str
           ) -> tuple[dict[str, Case], dict[str, str]]:
    """Build each available case; ``{case: reason}`` for the others (missing, needs CUDA, or
    an import that fails)."""
    cases: dict[str, Case] = {}
    skipped: dict[str, str] = {}
    for name, build in builders.items():
        reason = unavailable(name, device)
        if reason is None:
            try:
                cases[name] = build()
                continue
            except Exception as err:  # noqa: BLE001 - a broken optional install is a skip reason
                reason = f"import failed: {type(err).__name__}: {err}"
        skipped[name] = reason
    return cases, skipped


def logits_cases(logits: Any, labels: Any, device: str) -> tuple[dict[str, Case], dict[str, str]]:
    """The external CE cases on ``logits`` (B, T, V) and ``labels`` (B, T), and
    ``{case: reason}`` for those that cannot run.

    Liger's cross-entropy writes the gradient into its input during the forward, so it gets its
    own copy of the logits: after the first call that copy holds gradient values, which changes
    neither the kernel's time nor its memory, only its loss value (read from the first call).
    """

    def liger_ce() -> Case:
        loss_fn = _load("liger_kernel.transformers.cross_entropy", "LigerCrossEntropyLoss")()
        own = logits.detach().reshape(-1, logits.shape[-1]).clone().requires_grad_(True)
        flat = labels.reshape(-1)
        return (lambda: loss_fn(own, flat), (own,))

    return _build({"liger-ce": liger_ce}, device)


def linear_cases(hidden: Any, weight: Any, labels: Any, device: str
                 ) -> tuple[dict[str, Case], dict[str, str]]:
    """The external CE cases from ``hidden`` (N, d) and the output ``weight`` (V, d) with
    ``labels`` (N,), and ``{case: reason}`` for those that cannot run."""

    def liger_flce() -> Case:
        loss_fn = _load("liger_kernel.transformers.fused_linear_cross_entropy",
                        "LigerFusedLinearCrossEntropyLoss")()
        return (lambda: loss_fn(weight, hidden, labels), (hidden, weight))

    def cce() -> Case:
        loss_fn = _load("cut_cross_entropy", "linear_cross_entropy")
        return (lambda: loss_fn(hidden, weight, labels), (hidden, weight))

    return _build({"liger-flce": liger_flce, "cce": cce}, device)
