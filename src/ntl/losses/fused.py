"""CE + λ·NTL on materialized logits in one fused pass (`cross_entropy_with_ntl`).

One softmax per chunk of rows becomes the gradient of the whole loss during forward (the row
kernel, `ntl.losses.kernel`); backward hands it out. The design and its limits: docs/fused.md.
The logits-free form from hidden states is `ntl.losses.linear`.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ntl._deprecation import moved_name
from ntl.losses.combined import (
    FUSED_LOSSES,
    LossOutput,
    check_call,
    fused_plan,
    is_fused,
    plain,
    plain_options,
)
from ntl.losses.kernel import (
    Plan,
    RowOutputs,
    as_rows,
    chunk_rows,
    chunks,
    finish_losses,
    fix_large_ce,
    rows_pass,
    scale_rows,
)
from ntl.numbers import NumberTable, NumberVocab

__all__ = ["FUSED_LOSSES", "LossOutput", "cross_entropy_with_ntl"]

# Default chunk size, in elements of one (rows, V) buffer, and minimum rows: few, large chunks
# (64 MiB in float32): each chunk costs two parallel regions (softmax, row scale), and on a
# shared CPU every parallel region can wait for a descheduled thread, so fewer regions are
# worth more than cache residency (measured: 8 vs 128 chunks at (4096, 32000), 0.65 s vs
# 2.8 s under load, equal when the machine is idle).
FUSED_CHUNK_ELEMS = 1 << 24
MIN_CHUNK_ROWS = 8


# ---------------------------------------------------------------------- the autograd function
def _fused_forward(
    flat: torch.Tensor, plan: Plan, rows_per_chunk: int, need_grad: bool
) -> tuple[RowOutputs, torch.Tensor | None]:
    """Run the row loop over materialized logits ``flat`` (N, V).

    Returns the per-row results and, if ``need_grad``, the gradient of the reduced
    ``total`` w.r.t. ``flat`` in ``flat``'s dtype.
    """
    n, v = flat.shape
    dev = flat.device
    m = plan.num_rows.numel()
    outs = RowOutputs(torch.empty(n, dtype=plan.dtype, device=dev),
                      torch.empty(m, dtype=plan.dtype, device=dev))
    grad = None
    if need_grad:
        grad = torch.empty_like(flat, memory_format=torch.contiguous_format)
        outs.d_num = torch.empty(m, plan.spec.number_ids.numel(), dtype=plan.dtype, device=dev)
        outs.d_lse = torch.empty(m, dtype=plan.dtype, device=dev) if plan.spec.reweigh else None
        outs.p_num = torch.empty_like(outs.d_num)  # for an exact split backward (ce / ntl)
    direct = need_grad and flat.dtype == plan.dtype  # write the gradient straight into place
    scratch = None
    if not direct:
        scratch = torch.empty(min(rows_per_chunk, n), v, dtype=plan.dtype, device=dev)
    lam_ntl_w = plan.lam * plan.ntl_w
    for c in chunks(plan, rows_per_chunk):
        buf = grad[c.start:c.stop] if direct else scratch[: c.stop - c.start]
        rows_pass(flat[c.start:c.stop], buf, plan, c, outs,
                  plan.ce_w[c.start:c.stop] if need_grad else None,
                  lam_ntl_w[c.a:c.b] if need_grad else None)
        if need_grad and not direct:
            grad[c.start:c.stop].copy_(buf)
    fix_large_ce(outs, plan, lambda idx: flat[idx], rows_per_chunk)
    return outs, grad


class _FusedCEWithNTL(torch.autograd.Function):
    """Materialized logits -> (total, ce, ntl), gradient made in forward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, plan: Plan, rows_per_chunk: int, need_grad: bool):
        flat = logits.reshape(-1, logits.shape[-1])
        outs, grad = _fused_forward(flat, plan, rows_per_chunk, need_grad)
        ctx.set_materialize_grads(False)
        ctx.plan, ctx.grad, ctx.outs, ctx.shape = plan, grad, outs, logits.shape
        return finish_losses(plan, outs.ce_tok, outs.ntl_num)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_total, g_ce, g_ntl):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "fused CE+NTL: backward ran a second time on one forward, but the fused path "
                "makes its gradient during forward and hands it out once. To back-propagate "
                "twice (retain_graph=True) or take higher-order gradients, use the autograd "
                "path: CrossEntropyWithNTL(vocab, ..., fused=False) or "
                "cross_entropy_with_ntl(..., fused=False)."
            )
        ctx.grad = None
        gt, gc, gn = as_rows(g_total), as_rows(g_ce), as_rows(g_ntl)
        if gc is None and gn is None:
            if gt is None:
                return None, None, None, None
            return scale_rows(grad, gt).reshape(ctx.shape), None, None, None
        grad = _split_backward(grad, ctx.plan, ctx.outs, gt, gc, gn)
        return grad.reshape(ctx.shape), None, None, None


def _split_backward(
    grad: torch.Tensor,
    plan: Plan,
    outs: RowOutputs,
    gt: torch.Tensor | None,
    gc: torch.Tensor | None,
    gn: torch.Tensor | None,
) -> torch.Tensor:
    """The logits gradient when ``ce`` or ``ntl`` (not only ``total``) get a gradient.

    ``grad`` holds ``G = ce_w·E + λ·ntl_w·D`` per row, E = softmax − onehot (CE), D = the NTL
    row gradient: ``d_num`` on the K number columns plus ``d_lse·softmax`` (reweigh only). We
    need ``c_ce·ce_w·E + c_ntl·ntl_w·D`` with ``c_ce = gt + gc``, ``c_ntl = λ·gt + gn``.
    Off the number columns every row of G is a multiple of the softmax, so a per-row ratio
    rescales it exactly (no subtraction: low-precision G loses nothing more than its own
    rounding). On the number columns of number rows the result is rebuilt in the compute dtype
    from what forward kept: the softmax there (``p_num``), ``d_num`` and ``d_lse``.
    """
    dtype, dev = plan.dtype, grad.device
    zero = torch.zeros((), dtype=dtype, device=dev)
    gt = zero if gt is None else gt.to(dtype)
    gc = zero if gc is None else gc.to(dtype)
    gn = zero if gn is None else gn.to(dtype)
    c_ce = gt + gc
    c_ntl = plan.lam * gt + gn
    rows, ids = plan.num_rows, plan.spec.number_ids
    ratio = c_ce.expand(plan.n_rows).clone()  # (N,)
    exact = None
    if rows.numel():
        c_ce_m = c_ce if c_ce.dim() == 0 else c_ce[rows]
        c_ntl_m = (c_ntl if c_ntl.dim() == 0 else c_ntl[rows]) * plan.ntl_w  # (M,)
        ce_w = plan.ce_w[rows]
        onehot = torch.zeros_like(outs.p_num).scatter_(1, plan.num_k[:, None], 1.0)
        exact = (c_ce_m * ce_w)[:, None] * (outs.p_num - onehot) + c_ntl_m[:, None] * outs.d_num
        if outs.d_lse is not None:  # the softmax part of D: d_lse·softmax
            exact += (c_ntl_m * outs.d_lse)[:, None] * outs.p_num
            stored = ce_w + plan.lam * plan.ntl_w * outs.d_lse  # > 0: ce_w > 0, d_lse >= 0
            ratio[rows] = (c_ce_m * ce_w + c_ntl_m * outs.d_lse) / stored
    grad.mul_(ratio.to(grad.dtype)[:, None])
    if exact is not None:
        grad[rows[:, None], ids[None, :]] = exact.to(grad.dtype)
    return grad


# ---------------------------------------------------------------------- public API
def cross_entropy_with_ntl(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab: NumberVocab | NumberTable,
    *,
    ntl: str = "was",
    lam: float = 0.3,
    ignore_index: int = -100,
    num_items_in_batch: Any = None,
    num_number_items: Any = None,
    reweigh: bool = False,
    squash_factor: float | None = None,
    huber_delta: float = 1.0,
    loss_weights: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    fused: bool = True,
    **ntl_options: Any,
) -> LossOutput:
    """CE + λ·NTL on materialized logits in one fused pass, with a hand-written backward.

    ``total = ce + lam·ntl``: ``ce`` is the token cross-entropy over the non-ignored labels,
    ``ntl`` the Number Token Loss over the number-target labels (`ntl.losses.functional`).
    Same numbers as the plain autograd form (``fused=False``), about the cost of CE alone.

    Args:
        logits: float32 / bfloat16 / float16 / float64 logits.
        labels: integer labels aligned with the logits (no shifting inside); ids in
            ``[0, V)`` or ``ignore_index``.
        vocab: `NumberVocab` (or its `NumberTable`) with ``vocab_size == V``.
        ntl: ``"was"`` | ``"mse"`` | ``"mae"`` | ``"huber"`` (fused); ``"number-level"`` and
            ``target_probs=...`` run the plain path.
        lam: λ ≥ 0, the NTL weight.
        num_items_in_batch: CE denominator (non-ignored labels of the accumulated batch).
        num_number_items: NTL denominator (number targets of the accumulated batch).
        reweigh, squash_factor, huber_delta, loss_weights: as in `ntl.losses.functional`
            (``loss_weights`` (labels' shape, ≥ 0) weight the NTL only).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (applies to both terms).
        chunk_size: rows per chunk (default: about 16M logits per chunk, at least 8 rows).
        fused: ``False`` runs the same loss through plain autograd (`ntl.losses.functional`
            + ``F.cross_entropy``): more memory and time, but the graph supports
            ``retain_graph=True`` and higher-order gradients.

    Shape:
        - logits: (B, T, V) or (N, V).
        - labels: (B, T) or (N,).
        - output: ``LossOutput(total, ce, ntl)``, each 0-d, or the labels' shape with
          ``reduction="none"``; float32 (float64 for float64 logits). The logits' gradient
          comes back in the logits' dtype.

    Examples::

        >>> vocab = NumberVocab.from_vocab({str(d): d for d in range(10)} | {"a": 10, "b": 11})
        >>> logits = torch.randn(2, 5, 12, requires_grad=True)
        >>> labels = torch.tensor([[3, 7, 10, -100, 1], [11, 0, 9, 9, -100]])
        >>> out = cross_entropy_with_ntl(logits, labels, vocab, ntl="was", lam=0.3)
        >>> out.total.backward()

    Memory: one gradient buffer of the logits' shape and dtype (made in forward and handed to
    autograd in backward) plus one (chunk, V) float32 scratch for non-float32 logits. Rows whose
    label is ignored get a zero gradient, whatever their logits (NaN / inf included).
    """
    lam = check_call(ntl, lam, reduction, num_items_in_batch, num_number_items)
    if not fused or not is_fused(ntl, ntl_options):
        options = plain_options(ntl, ntl_options, reweigh=reweigh, squash_factor=squash_factor,
                                huber_delta=huber_delta, loss_weights=loss_weights)
        return plain(logits, labels, vocab, ntl=ntl, lam=lam, ignore_index=ignore_index,
                     reduction=reduction, num_items_in_batch=num_items_in_batch,
                     num_number_items=num_number_items, ntl_options=options)
    _, plan = fused_plan(logits, labels, vocab, ntl=ntl, lam=lam, ignore_index=ignore_index,
                         reduction=reduction, loss_weights=loss_weights,
                         num_items_in_batch=num_items_in_batch,
                         num_number_items=num_number_items, reweigh=reweigh,
                         squash_factor=squash_factor, huber_delta=huber_delta)
    rows = chunk_rows(plan.n_rows, logits.shape[-1], chunk_size, FUSED_CHUNK_ELEMS, MIN_CHUNK_ROWS)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    return LossOutput(*_FusedCEWithNTL.apply(logits, plan, rows, need_grad))


# ---------------------------------------------------------------------- moved names
# Old homes of names that moved in this release; each access warns (FutureWarning).
_MOVED = {
    "FusedOutput": ("ntl.losses.combined", "LossOutput"),
    "linear_cross_entropy_with_ntl": ("ntl.losses.linear", "linear_cross_entropy_with_ntl"),
    "LINEAR_CHUNK_ELEMS": ("ntl.losses.linear", "LINEAR_CHUNK_ELEMS"),
    "MIN_LINEAR_ROWS": ("ntl.losses.linear", "MIN_LINEAR_ROWS"),
    "causal_lm_loss": ("ntl.integrations.causal_lm", "causal_lm_loss"),
    "shift_labels": ("ntl.integrations.causal_lm", "shift_labels"),
    "count_causal_items": ("ntl.integrations.causal_lm", "count_causal_items"),
}


def __getattr__(name: str) -> Any:
    """Deprecated aliases (one release): the moved names, imported from their new homes on
    first use only, so this module itself depends on nothing above it."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home, new = _MOVED[name]
    moved_name(f"{__name__}.{name}", f"{home}.{new}")
    return getattr(importlib.import_module(home), new)
