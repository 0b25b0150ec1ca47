"""Logits-free CE + λ·NTL: the loss of ``logits = hidden @ weight.T (+ bias)`` without ever
building the (N, V) logits (`linear_cross_entropy_with_ntl`).

Per row chunk it computes ``z = h_c @ W.T``, turns ``z`` into its gradient in place with the
row kernel (`ntl.losses.kernel`) and at once accumulates ``dL/dh_c = g @ W`` and
``dL/dW += g.T @ h_c``. Peak memory: ``dW`` (V × d, needed anyway), ``dh`` (N × d) and one
(chunk, V) buffer. The design and its limits: docs/fused.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ntl.losses.combined import (
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

__all__ = ["linear_cross_entropy_with_ntl"]

# Every chunk reads and writes the whole (V, d) weight gradient once, so chunks need enough rows
# (>= 256) for the matmuls to amortize that; 2**25 elements = 128 MiB in float32.
LINEAR_CHUNK_ELEMS = 1 << 25
MIN_LINEAR_ROWS = 256


def _linear_loop(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    plan: Plan,
    rows_per_chunk: int,
    ce_w: torch.Tensor | None,
    ntl_w: torch.Tensor | None,
    grad_hidden: bool,
    grad_weight: bool,
    need_loss: bool = True,
) -> tuple[RowOutputs, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Row loop over ``z = hidden @ weight.T (+ bias)`` without materializing z.

    With ``ce_w`` (N,) and ``ntl_w`` (M,) (None: loss only) it also returns the gradients of
    ``sum(ce_w·ce) + sum(ntl_w·ntl)`` w.r.t. hidden (N, d), weight (V, d), bias (V,).
    ``need_loss=False`` (a backward recomputation) skips the exact fix-up of large CE values.
    """
    n, _ = hidden.shape
    vocab = weight.shape[0]
    dev, dtype = hidden.device, plan.dtype
    outs = RowOutputs(torch.empty(n, dtype=dtype, device=dev),
                      torch.empty(plan.num_rows.numel(), dtype=dtype, device=dev))
    want = ce_w is not None
    g_h = torch.empty_like(hidden) if want and grad_hidden else None
    g_w = torch.zeros(weight.shape, dtype=dtype, device=dev) if want and grad_weight else None
    g_b = (torch.zeros(vocab, dtype=dtype, device=dev)
           if want and bias is not None and bias.requires_grad else None)
    same = hidden.dtype == dtype and weight.dtype == dtype
    buf_all = torch.empty(min(rows_per_chunk, n), vocab, dtype=dtype, device=dev)
    w_t = weight.t()
    for c in chunks(plan, rows_per_chunk):
        h_c = hidden[c.start:c.stop]
        buf = buf_all[: c.stop - c.start]
        if same:
            z = torch.mm(h_c, w_t, out=buf)
            if bias is not None:
                z.add_(bias.to(dtype))
        else:  # the model's dtype, as materialized logits would be
            z = h_c @ w_t if bias is None else torch.addmm(bias, h_c, w_t)
        rows_pass(z, buf, plan, c, outs,
                  ce_w[c.start:c.stop] if want else None, ntl_w[c.a:c.b] if want else None)
        del z
        if not want:
            continue
        if g_h is not None:
            g = buf if same else buf.to(weight.dtype)
            torch.mm(g, weight, out=g_h[c.start:c.stop])
        if g_w is not None:
            h_w = h_c if same else h_c.to(dtype)
            if c.ib > c.ia:  # an ignored row's hidden state (NaN there too) must not reach dW
                h_w = h_w.index_fill(0, plan.ignored[c.ia:c.ib] - c.start, 0.0)
            g_w.addmm_(buf.t(), h_w)
        if g_b is not None:
            g_b.add_(buf.sum(0))
    del buf, buf_all

    def logits_of_rows(idx: torch.Tensor) -> torch.Tensor:
        h = hidden[idx]
        return h @ w_t if bias is None else torch.addmm(bias, h, w_t)

    if need_loss:
        fix_large_ce(outs, plan, logits_of_rows, rows_per_chunk)
    if g_w is not None and g_w.dtype != weight.dtype:
        g_w = g_w.to(weight.dtype)
    if g_b is not None and g_b.dtype != bias.dtype:
        g_b = g_b.to(bias.dtype)
    return outs, g_h, g_w, g_b


class _LinearCEWithNTL(torch.autograd.Function):
    """(hidden, weight, bias) -> (total, ce, ntl) without logits; gradients made in forward
    (recomputed in backward when the incoming gradients are not a plain ``total`` scalar)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, plan: Plan, rows_per_chunk: int, grads: tuple):
        grad_h, grad_w = grads
        in_forward = (grad_h or grad_w or (bias is not None and bias.requires_grad)) \
            and plan.reduction != "none"
        outs, g_h, g_w, g_b = _linear_loop(
            hidden, weight, bias, plan, rows_per_chunk,
            plan.ce_w if in_forward else None, plan.lam * plan.ntl_w if in_forward else None,
            grad_h, grad_w)
        ctx.set_materialize_grads(False)
        ctx.plan, ctx.rows_per_chunk, ctx.grads = plan, rows_per_chunk, grads
        ctx.stored = (g_h, g_w, g_b) if in_forward else None
        ctx.save_for_backward(hidden, weight, bias)
        return finish_losses(plan, outs.ce_tok, outs.ntl_num)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_total, g_ce, g_ntl):
        plan: Plan = ctx.plan
        gt, gc, gn = as_rows(g_total), as_rows(g_ce), as_rows(g_ntl)
        if gt is None and gc is None and gn is None:
            return (None,) * 6
        stored, ctx.stored = ctx.stored, None
        if stored is not None and gc is None and gn is None and gt.dim() == 0:
            return (*(None if g is None else scale_rows(g, gt) for g in stored), None, None,
                    None)
        # General case: recompute with per-row weights (gt + gc)·ce_w and (λ·gt + gn)·ntl_w.
        hidden, weight, bias = ctx.saved_tensors
        zero = torch.zeros((), dtype=plan.dtype, device=hidden.device)
        gt, gc, gn = (zero if g is None else g.to(plan.dtype) for g in (gt, gc, gn))
        ce_w = (gt + gc) * plan.ce_w
        ntl_coef = plan.lam * gt + gn
        ntl_w = (ntl_coef if ntl_coef.dim() == 0 else ntl_coef[plan.num_rows]) * plan.ntl_w
        ce_w = ce_w.expand(plan.n_rows) if ce_w.dim() == 0 else ce_w
        _, g_h, g_w, g_b = _linear_loop(hidden, weight, bias, plan, ctx.rows_per_chunk,
                                        ce_w, ntl_w, *ctx.grads, need_loss=False)
        return g_h, g_w, g_b, None, None, None


def _check_shapes(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  labels: torch.Tensor) -> None:
    if hidden.dim() not in (2, 3) or weight.dim() != 2:
        raise ValueError(f"hidden must be (B, T, d) or (N, d) and weight (V, d); got hidden "
                         f"{tuple(hidden.shape)}, weight {tuple(weight.shape)}.")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden's last dim {hidden.shape[-1]} != weight's dim 1 "
                         f"{weight.shape[1]} (weight must be (V, d), as nn.Linear.weight).")
    if hidden.dtype != weight.dtype or not hidden.is_floating_point():
        raise TypeError(f"hidden and weight must share a float dtype, got {hidden.dtype} and "
                        f"{weight.dtype}.")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal hidden's shape without "
                         f"its last dim {tuple(hidden.shape[:-1])}.")


def linear_cross_entropy_with_ntl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    vocab: NumberVocab | NumberTable,
    *,
    bias: torch.Tensor | None = None,
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
    **ntl_options: Any,
) -> LossOutput:
    """CE + λ·NTL of ``logits = hidden @ weight.T (+ bias)`` without materializing the logits.

    Equal to ``cross_entropy_with_ntl(hidden @ weight.T, labels, vocab, ...)`` (float32 math;
    the logits of a chunk are rounded to the inputs' dtype first, as materialized logits would
    be). ``ntl="number-level"`` and soft targets have no logits-free form: those calls
    materialize the logits and run the plain path.

    Args:
        hidden: final hidden states, float32 / bfloat16 / float16 / float64.
        weight: output embedding (``lm_head.weight``), same dtype as ``hidden``.
        labels: integer labels aligned with ``hidden`` (no shifting inside).
        vocab: `NumberVocab` (or its `NumberTable`) with ``vocab_size == V``.
        bias: optional output bias.
        chunk_size: rows per chunk (default: 2**25 logits per chunk, at least 256 rows).
        Other arguments: as `ntl.losses.fused.cross_entropy_with_ntl`.

    Shape:
        - hidden: (B, T, d) or (N, d).
        - weight: (V, d); bias: (V,).
        - labels: (B, T) or (N,).
        - output: ``LossOutput(total, ce, ntl)``, each 0-d, or the labels' shape with
          ``reduction="none"``; float32 (float64 for float64 inputs).

    Examples::

        >>> vocab = NumberVocab.from_vocab({str(d): d for d in range(10)} | {"a": 10, "b": 11})
        >>> hidden = torch.randn(2, 5, 16, requires_grad=True)
        >>> weight = torch.randn(12, 16, requires_grad=True)
        >>> labels = torch.tensor([[3, 7, 10, -100, 1], [11, 0, 9, 9, -100]])
        >>> out = linear_cross_entropy_with_ntl(hidden, weight, labels, vocab, ntl="was")
        >>> out.total.backward()

    Memory: never (N, V); one (chunk, V) buffer, the gradients of hidden and weight (float32
    accumulator for non-float32 weights) are made during forward.
    """
    lam = check_call(ntl, lam, reduction, num_items_in_batch, num_number_items)
    _check_shapes(hidden, weight, bias, labels)
    if not is_fused(ntl, ntl_options):
        logits = hidden @ weight.t() if bias is None else torch.addmm(
            bias, hidden.reshape(-1, hidden.shape[-1]), weight.t()).reshape(
            *hidden.shape[:-1], -1)
        options = plain_options(ntl, ntl_options, reweigh=reweigh, squash_factor=squash_factor,
                                huber_delta=huber_delta, loss_weights=loss_weights)
        return plain(logits, labels, vocab, ntl=ntl, lam=lam, ignore_index=ignore_index,
                     reduction=reduction, num_items_in_batch=num_items_in_batch,
                     num_number_items=num_number_items, ntl_options=options)
    # The set-up reads only the logits' shape and dtype: give it a zero-stride stand-in.
    stand_in = hidden.new_empty(()).expand(*labels.shape, weight.shape[0])
    _, plan = fused_plan(stand_in, labels, vocab, ntl=ntl, lam=lam, ignore_index=ignore_index,
                         reduction=reduction, loss_weights=loss_weights,
                         num_items_in_batch=num_items_in_batch,
                         num_number_items=num_number_items, reweigh=reweigh,
                         squash_factor=squash_factor, huber_delta=huber_delta)
    rows = chunk_rows(plan.n_rows, weight.shape[0], chunk_size, LINEAR_CHUNK_ELEMS,
                      MIN_LINEAR_ROWS)
    enabled = torch.is_grad_enabled()
    grads = (enabled and hidden.requires_grad, enabled and weight.requires_grad)
    flat = hidden.reshape(-1, hidden.shape[-1])
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return LossOutput(*_LinearCEWithNTL.apply(flat, weight, bias, plan, rows, grads))
