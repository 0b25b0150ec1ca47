"""Fused CE + NTL: one pass over the logits, and a logits-free path from hidden states.

Two public functions, one contract::

    total, ce, ntl = cross_entropy_with_ntl(logits, labels, vocab, ntl="was", lam=0.3)
    total, ce, ntl = linear_cross_entropy_with_ntl(hidden, weight, labels, vocab, ntl="was")

Both return ``FusedOutput(total, ce, ntl)`` with ``total = ce + lam·ntl``: ``ce`` is the token
cross-entropy over the non-ignored labels, ``ntl`` the Number Token Loss over the number-target
labels, with the semantics of `ntl.losses.functional` and `ntl.losses.CrossEntropyWithNTL`
(reductions, ``num_items_in_batch`` / ``num_number_items``, ``loss_weights``, ``reweigh``,
``squash_factor``, ``huber_delta``; a batch without number targets gives an exact 0). Same
numbers, computed differently.

How (the design of Liger-Kernel's chunked losses and Apple's Cut Cross-Entropy, in plain
PyTorch): rows are processed in chunks. For each chunk one softmax kernel writes the softmax
into one preallocated buffer and one row scale turns it into *already the gradient* of the
whole loss w.r.t. the chunk's logits: ``w_ce·(softmax − onehot)`` plus, at number-target rows
only, the NTL term. CE is ``−log softmax`` at the target. The NTL needs only the K number-token
logits and the row's number-token mass (for the reweighting), so its gradient lives on the K
number columns plus a multiple of the softmax (reweigh only) that folds into the same row
scale. ``backward`` hands out that buffer scaled by the incoming gradient: no log-softmax
tensor, no dense one-hot, no second softmax; the logits gradient is produced exactly once.

The logits-free path never builds the (N, V) logits: per row chunk it computes
``z = h_c @ W.T``, turns ``z`` into its gradient in place and at once accumulates
``dL/dh_c = g @ W`` and ``dL/dW += g.T @ h_c``. Peak memory: ``dW`` (V × d, needed anyway),
``dh`` (N × d) and one (chunk, V) buffer.

Limits:

- ``ntl="number-level"`` and soft targets (``target_probs``) are not fused: those calls go
  through the plain path (`functional` + CE on materialized logits; the linear path then
  materializes the logits).
- The gradient is made during forward, so the graph can be back-propagated once (no
  ``retain_graph`` re-use, no double backward); ``cross_entropy_with_ntl(..., fused=False)``
  (``CrossEntropyWithNTL(..., fused=False)``) runs the same loss through plain autograd for
  that. Back-propagating through ``ce`` or ``ntl`` separately (not only ``total``) works: the
  materialized path rescales its stored gradient row by row and rebuilds the number columns
  from float32 values kept in forward (as precise as autograd in bf16), the linear path
  recomputes.
- Rows whose CE exceeds ~69 nats (the softmax at the target underflows) are recomputed
  exactly, one chunk of rows at a time (the linear path recomputes their logits chunk by
  chunk, which adds one projection of those rows to the forward time).
- Outputs are float32 (float64 for float64 inputs) whatever the input dtype; the logits
  gradient comes back in the logits' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from ntl.losses import functional
from ntl.numbers import NumberTable, NumberVocab

FUSED_LOSSES = ("was", "mse", "mae", "huber")
"""NTL variants with a fused implementation; others (``number-level``) use the plain path."""

# Default chunk sizes, in elements of one (rows, V) buffer, and minimum rows. Materialized
# path: few, large chunks (64 MiB in float32): each chunk costs two parallel regions (softmax,
# row scale), and on a shared CPU every parallel region can wait for a descheduled thread, so
# fewer regions are worth more than cache residency (measured: 8 vs 128 chunks at
# (4096, 32000), 0.65 s vs 2.8 s under load, equal when the machine is idle).
# Linear path: every chunk reads and writes the whole (V, d) weight gradient once, so chunks
# need enough rows (>= 256) for the matmuls to amortize that; 2**25 elements = 128 MiB.
FUSED_CHUNK_ELEMS = 1 << 24
MIN_CHUNK_ROWS = 8
LINEAR_CHUNK_ELEMS = 1 << 25
MIN_LINEAR_ROWS = 256


class FusedOutput(NamedTuple):
    """``total = ce + lam·ntl`` and its parts: 0-d tensors (the labels' shape with
    ``reduction="none"``), float32 (float64 for float64 inputs)."""

    total: torch.Tensor
    ce: torch.Tensor
    ntl: torch.Tensor


# ---------------------------------------------------------------------- per-row NTL math
@dataclass(frozen=True)
class _Spec:
    """What the per-row NTL needs: number columns, their values, the loss form."""

    kind: str
    number_ids: torch.Tensor  # int64 (K,)
    values: torch.Tensor  # (K,) compute dtype
    dist: torch.Tensor | None  # (K, K) compute dtype, WAS only
    huber_delta: float
    reweigh: bool
    reweigh_cost: float  # 1.01 · max_dist


def _make_spec(
    table: NumberTable,
    kind: str,
    *,
    squash_factor: float | None,
    huber_delta: float,
    reweigh: bool,
    dtype: torch.dtype,
) -> _Spec:
    values = table.number_values.to(dtype)
    dist = None
    if kind == "was":
        dist = functional._distance_matrix(table, squash_factor, dtype)
        max_dist = functional._max_distance(table, squash_factor)  # host scalars, no sync
    else:
        if squash_factor is not None:
            raise ValueError(f"squash_factor applies to ntl='was' only, got ntl={kind!r}.")
        span = torch.tensor([table.value_span], dtype=dtype)
        max_dist = float(functional._lp(kind, huber_delta)(span)[0])
    return _Spec(kind, table.number_ids, values, dist, float(huber_delta), bool(reweigh),
                 functional.REWEIGH_MARGIN * max_dist)


def _ntl_rows(
    z_num: torch.Tensor, mass: torch.Tensor | None, k: torch.Tensor, y: torch.Tensor,
    spec: _Spec,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-row NTL and its gradient in closed form, for M number-target rows.

    Args:
        z_num: (M, K) number-token logits, compute dtype.
        mass: (M,) probability mass on the number tokens under the full softmax
            (``exp(lse_num − lse)``); needed only with ``reweigh``.
        k: (M,) int64, the label's index among the number tokens.
        y: (M,) the label's value.

    Returns:
        ``(loss, dloss/dz_num, dloss/dlse)``: (M,), (M, K), and (M,) or None without reweigh.
        The full-row gradient is ``dz_num`` on the number columns plus ``dlse·softmax(row)``.
    """
    lse_num = torch.logsumexp(z_num, dim=-1)
    q = torch.exp(z_num - lse_num[:, None])
    if spec.kind == "was":
        d = spec.dist[k]
        loss = (q * d).sum(-1)
        grad = q * (d - loss[:, None])
    else:
        y_hat = q @ spec.values
        r = y_hat - y
        if spec.kind == "mse":
            loss, d_r = r * r, 2 * r
        elif spec.kind == "mae":
            loss, d_r = r.abs(), torch.sign(r)
        else:  # huber, as torch.nn.functional.huber_loss
            delta = spec.huber_delta
            loss = torch.where(r.abs() < delta, 0.5 * r * r, delta * (r.abs() - 0.5 * delta))
            d_r = r.clamp(-delta, delta)
        grad = d_r[:, None] * q * (spec.values - y_hat[:, None])
    if not spec.reweigh:
        return loss, grad, None
    # loss·m + C·(1 − m) with m = exp(lse_num − lse): dm/dz_num = m·q, dm/dlse = −m.
    m = mass
    cost = spec.reweigh_cost
    reweighed = loss * m + cost * (1 - m)
    grad = m[:, None] * grad + ((loss - cost) * m)[:, None] * q
    return reweighed, grad, (cost - loss) * m


# ---------------------------------------------------------------------- per-call bookkeeping
@dataclass
class _Plan:
    """Row bookkeeping shared by the kernels (flat over the N rows)."""

    n_rows: int
    targets: torch.Tensor  # int64 (N,), ignore_index replaced by 0
    keep: torch.Tensor  # bool (N,), label not ignored
    ce_w: torch.Tensor  # (N,) weight of each row's CE in the reduced loss (0 where ignored)
    num_rows: torch.Tensor  # int64 (M,), ascending: rows whose label is a number token
    num_k: torch.Tensor  # int64 (M,), label index among the number tokens
    num_y: torch.Tensor  # (M,) label value
    ntl_w: torch.Tensor  # (M,) weight of each number row's NTL in the reduced loss
    lam: float
    reduction: str
    ce_denom: torch.Tensor | None  # divides the CE sum (mean / num_items_in_batch)
    dtype: torch.dtype  # compute dtype
    spec: _Spec
    shape: tuple[int, ...]  # labels' shape

    def chunk_bounds(self, starts: list[int]) -> list[int]:
        """For chunks beginning at ``starts`` (+ the end): where each begins in ``num_rows``."""
        m = self.num_rows.numel()
        if m == 0:
            return [0] * (len(starts) + 1)
        edges = torch.tensor(starts, dtype=torch.int64, device=self.num_rows.device)
        return torch.searchsorted(self.num_rows, edges).tolist() + [m]


def _make_plan(
    labels: torch.Tensor,
    table: NumberTable,
    spec: _Spec,
    *,
    lam: float,
    ignore_index: int,
    reduction: str,
    loss_weights: torch.Tensor | None,
    num_items_in_batch: Any,
    num_number_items: Any,
    dtype: torch.dtype,
) -> _Plan:
    flat = labels.reshape(-1).long()
    keep = flat != ignore_index
    targets = torch.where(keep, flat, torch.zeros_like(flat))
    num_rows = torch.nonzero(keep & table.is_number[targets]).flatten()
    num_ids = targets[num_rows]
    num_k = torch.searchsorted(table.number_ids, num_ids)
    num_y = table.values[num_ids].to(dtype)
    if loss_weights is None:
        ntl_w = torch.ones(num_rows.numel(), dtype=dtype, device=flat.device)
    else:
        ntl_w = loss_weights.reshape(-1)[num_rows].to(dtype)
    ce_w = keep.to(dtype)
    ce_denom = None
    if reduction != "none":
        tiny = torch.finfo(dtype).tiny
        if num_items_in_batch is not None:  # as CrossEntropyWithNTL: sum / max(n, 1)
            ce_denom = torch.as_tensor(num_items_in_batch, dtype=dtype, device=flat.device)
            ce_denom = ce_denom.clamp_min(1)
        elif reduction == "mean":  # as F.cross_entropy: NaN when every label is ignored
            ce_denom = keep.sum().to(dtype)
        if num_number_items is not None:  # as functional: sum / max(n, tiny)
            ntl_denom = torch.as_tensor(num_number_items, dtype=dtype, device=flat.device)
            ntl_w = ntl_w / ntl_denom.clamp_min(tiny)
        elif reduction == "mean":  # no number targets: 0 / tiny = exactly 0
            ntl_w = ntl_w / ntl_w.sum().clamp_min(tiny)
        if ce_denom is not None:  # all ignored: zero gradient (as torch), not NaN
            ce_w = ce_w / ce_denom.clamp_min(tiny)
    return _Plan(
        n_rows=flat.numel(), targets=targets, keep=keep, ce_w=ce_w, num_rows=num_rows,
        num_k=num_k, num_y=num_y, ntl_w=ntl_w, lam=float(lam), reduction=reduction,
        ce_denom=ce_denom, dtype=dtype, spec=spec, shape=tuple(labels.shape),
    )


def _finish_losses(
    plan: _Plan, ce_tok: torch.Tensor, ntl_num: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduce per-row CE (N,) and per-number-row NTL (M,) to ``(total, ce, ntl)``."""
    ce_tok = torch.where(plan.keep, ce_tok, 0.0)
    if plan.reduction == "none":
        ntl = torch.zeros_like(ce_tok).index_copy_(0, plan.num_rows, ntl_num * plan.ntl_w)
        ce, ntl = ce_tok.reshape(plan.shape), ntl.reshape(plan.shape)
    else:
        ce = ce_tok.sum()
        if plan.ce_denom is not None:
            ce = ce / plan.ce_denom
        ntl = (ntl_num * plan.ntl_w).sum()
    return ce + plan.lam * ntl, ce, ntl


# ---------------------------------------------------------------------- the row kernel
@dataclass
class _Outs:
    """Per-row results the row loop fills in."""

    ce_tok: torch.Tensor  # (N,)
    ntl_num: torch.Tensor  # (M,)
    d_num: torch.Tensor | None = None  # (M, K) NTL gradient on the number columns
    d_lse: torch.Tensor | None = None  # (M,) NTL gradient w.r.t. the row's lse (reweigh)
    p_num: torch.Tensor | None = None  # (M, K) full softmax on the number columns


def _softmax_into(z: torch.Tensor, buf: torch.Tensor) -> None:
    """``buf = softmax(z, dim=1)`` in one kernel; ``z`` may be ``buf`` (in place)."""
    if z.dtype != buf.dtype:
        buf.copy_(z)
        z = buf
    torch.ops.aten._softmax.out(z, 1, False, out=buf)


def _rows_pass(
    z: torch.Tensor,
    buf: torch.Tensor,
    plan: _Plan,
    start: int,
    a: int,
    b: int,
    outs: _Outs,
    ce_w: torch.Tensor | None,
    ntl_w: torch.Tensor | None,
) -> None:
    """Loss (and, with weights, gradient) of the rows ``start .. start + R`` in one pass.

    One softmax kernel and one row scale touch the (R, V) chunk; everything else reads or
    writes R or R×K entries. CE comes from the softmax at the target, ``−log p_y``; rows where
    ``p_y`` underflows (CE > ~69) are marked for an exact recomputation after the loop
    (`_fix_large_ce`). The number-token mass for reweigh is ``sum p_K``.

    Args:
        z: (R, V) logits of the chunk, any float dtype; may be ``buf`` itself.
        buf: (R, V) compute-dtype buffer. With ``ce_w`` it receives the gradient
            ``ce_w·(softmax − onehot) + ntl_w·dNTL``; otherwise it is scratch.
        a, b: the chunk's slice of ``plan.num_rows``.
        ce_w: (R,) CE gradient weights, or None for the loss only.
        ntl_w: (b − a,) NTL gradient weights (λ included).
    """
    rows = z.shape[0]
    tgt = plan.targets[start:start + rows]
    # Read what is needed from z before buf (which may alias z) is overwritten.
    has_num = b > a
    if has_num:
        loc = plan.num_rows[a:b] - start
        z_num = z[loc[:, None], plan.spec.number_ids[None, :]].to(plan.dtype)
    _softmax_into(z, buf)
    p_tgt = buf.gather(1, tgt[:, None]).squeeze(1)
    outs.ce_tok[start:start + rows] = -torch.log(p_tgt)
    if has_num:
        mass = None
        if plan.spec.reweigh or outs.p_num is not None:
            p_num = buf[loc[:, None], plan.spec.number_ids[None, :]].to(plan.dtype)
            mass = p_num.sum(1)
            if outs.p_num is not None:
                outs.p_num[a:b] = p_num
        loss, d_num, d_lse = _ntl_rows(z_num, mass, plan.num_k[a:b], plan.num_y[a:b],
                                       plan.spec)
        outs.ntl_num[a:b] = loss
        if outs.d_num is not None:
            outs.d_num[a:b] = d_num
            if d_lse is not None:
                outs.d_lse[a:b] = d_lse
    if ce_w is None:
        return
    # Row scale of the softmax: the CE weight, plus the reweigh term's multiple of it.
    scale = ce_w
    if has_num and d_lse is not None:
        scale = scale.index_add(0, loc, ntl_w * d_lse)
    buf.mul_(scale[:, None])
    buf.scatter_add_(1, tgt[:, None], -ce_w[:, None])
    if has_num:
        flat_idx = (loc[:, None] * buf.shape[1] + plan.spec.number_ids[None, :]).reshape(-1)
        buf.view(-1).index_add_(0, flat_idx, (ntl_w[:, None] * d_num).reshape(-1))


# -log(p) above this (p < 1e-30) is recomputed from the logits: float32 p has lost precision.
_CE_EXACT_ABOVE = 69.0


def _fix_large_ce(outs: _Outs, plan: _Plan, logits_of_rows, rows_per_chunk: int) -> None:
    """Recompute CE = logsumexp(z) − z_y exactly where the softmax at the target underflowed.

    ``logits_of_rows(idx)`` returns the (len(idx), V) logits of rows ``idx``; it is called on at
    most ``rows_per_chunk`` rows at a time, so the fix-up never needs more than one chunk of
    logits (with large logits most rows can need it).
    """
    bad = torch.nonzero(~(outs.ce_tok <= _CE_EXACT_ABOVE) & plan.keep).flatten()
    for start in range(0, bad.numel(), rows_per_chunk):
        idx = bad[start:start + rows_per_chunk]
        z = logits_of_rows(idx)
        z = z.to(plan.dtype) if z.dtype != plan.dtype else z
        z_tgt = z.gather(1, plan.targets[idx][:, None]).squeeze(1)
        outs.ce_tok[idx] = _logsumexp_(z) - z_tgt
        del z


def _logsumexp_(z: torch.Tensor) -> torch.Tensor:
    """Row-wise logsumexp of a (R, V) tensor computed in place (``z`` is destroyed): no
    temporary of z's size, unlike ``torch.logsumexp``."""
    top = z.amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    return z.sub_(top).exp_().sum(1).log_() + top.squeeze(1)


def _chunk_rows(n_rows: int, vocab_size: int, chunk_size: int | None, budget: int,
                min_rows: int) -> int:
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}.")
        return min(int(chunk_size), max(n_rows, 1))
    return max(1, min(n_rows, max(min_rows, budget // max(vocab_size, 1))))


def _as_rows(g: torch.Tensor | None) -> torch.Tensor | None:
    """An incoming gradient as a 0-d scalar or a flat per-row (N,) vector."""
    if g is None:
        return None
    return g.reshape(-1) if g.dim() > 0 else g


def _scale_rows(grad: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``grad *= g`` in place, ``g`` 0-d or per-row (N,); a CPU scalar 1 is skipped."""
    if g.dim() == 0:
        if g.device.type == "cpu" and float(g) == 1.0:
            return grad
        return grad.mul_(g.to(grad.dtype))
    return grad.mul_(g.to(grad.dtype)[:, None])


# ---------------------------------------------------------------------- materialized logits
def _fused_forward(
    flat: torch.Tensor, plan: _Plan, rows_per_chunk: int, need_grad: bool
) -> tuple[_Outs, torch.Tensor | None]:
    """Run the row loop over materialized logits ``flat`` (N, V).

    Returns the per-row results and, if ``need_grad``, the gradient of the reduced
    ``total`` w.r.t. ``flat`` in ``flat``'s dtype.
    """
    n, v = flat.shape
    dev = flat.device
    m = plan.num_rows.numel()
    outs = _Outs(torch.empty(n, dtype=plan.dtype, device=dev),
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
    starts = list(range(0, n, rows_per_chunk))
    bounds = plan.chunk_bounds(starts)
    lam_ntl_w = plan.lam * plan.ntl_w
    for i, start in enumerate(starts):
        stop = min(start + rows_per_chunk, n)
        buf = grad[start:stop] if direct else scratch[: stop - start]
        a, b = bounds[i], bounds[i + 1]
        _rows_pass(flat[start:stop], buf, plan, start, a, b, outs,
                   plan.ce_w[start:stop] if need_grad else None,
                   lam_ntl_w[a:b] if need_grad else None)
        if need_grad and not direct:
            grad[start:stop].copy_(buf)
    _fix_large_ce(outs, plan, lambda idx: flat[idx], rows_per_chunk)
    return outs, grad


class _FusedCEWithNTL(torch.autograd.Function):
    """Materialized logits -> (total, ce, ntl), gradient made in forward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, plan: _Plan, rows_per_chunk: int, need_grad: bool):
        flat = logits.reshape(-1, logits.shape[-1])
        outs, grad = _fused_forward(flat, plan, rows_per_chunk, need_grad)
        ctx.set_materialize_grads(False)
        ctx.plan, ctx.grad, ctx.outs, ctx.shape = plan, grad, outs, logits.shape
        return _finish_losses(plan, outs.ce_tok, outs.ntl_num)

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
        gt, gc, gn = _as_rows(g_total), _as_rows(g_ce), _as_rows(g_ntl)
        if gc is None and gn is None:
            if gt is None:
                return None, None, None, None
            return _scale_rows(grad, gt).reshape(ctx.shape), None, None, None
        grad = _split_backward(grad, ctx.plan, ctx.outs, gt, gc, gn)
        return grad.reshape(ctx.shape), None, None, None


def _split_backward(
    grad: torch.Tensor,
    plan: _Plan,
    outs: _Outs,
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


# ---------------------------------------------------------------------- logits-free path
def _linear_loop(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    plan: _Plan,
    rows_per_chunk: int,
    ce_w: torch.Tensor | None,
    ntl_w: torch.Tensor | None,
    grad_hidden: bool,
    grad_weight: bool,
    need_loss: bool = True,
) -> tuple[_Outs, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Row loop over ``z = hidden @ weight.T (+ bias)`` without materializing z.

    With ``ce_w`` (N,) and ``ntl_w`` (M,) (None: loss only) it also returns the gradients of
    ``sum(ce_w·ce) + sum(ntl_w·ntl)`` w.r.t. hidden (N, d), weight (V, d), bias (V,).
    ``need_loss=False`` (a backward recomputation) skips the exact fix-up of large CE values.
    """
    n, _ = hidden.shape
    vocab = weight.shape[0]
    dev, dtype = hidden.device, plan.dtype
    outs = _Outs(torch.empty(n, dtype=dtype, device=dev),
                 torch.empty(plan.num_rows.numel(), dtype=dtype, device=dev))
    want = ce_w is not None
    g_h = torch.empty_like(hidden) if want and grad_hidden else None
    g_w = torch.zeros(weight.shape, dtype=dtype, device=dev) if want and grad_weight else None
    g_b = (torch.zeros(vocab, dtype=dtype, device=dev)
           if want and bias is not None and bias.requires_grad else None)
    same = hidden.dtype == dtype and weight.dtype == dtype
    buf_all = torch.empty(min(rows_per_chunk, n), vocab, dtype=dtype, device=dev)
    w_t = weight.t()
    starts = list(range(0, n, rows_per_chunk))
    bounds = plan.chunk_bounds(starts)
    for i, start in enumerate(starts):
        stop = min(start + rows_per_chunk, n)
        h_c = hidden[start:stop]
        buf = buf_all[: stop - start]
        if same:
            z = torch.mm(h_c, w_t, out=buf)
            if bias is not None:
                z.add_(bias.to(dtype))
        else:  # the model's dtype, as materialized logits would be
            z = h_c @ w_t if bias is None else torch.addmm(bias, h_c, w_t)
        a, b = bounds[i], bounds[i + 1]
        _rows_pass(z, buf, plan, start, a, b, outs,
                   ce_w[start:stop] if want else None, ntl_w[a:b] if want else None)
        del z
        if not want:
            continue
        if g_h is not None:
            g = buf if same else buf.to(weight.dtype)
            torch.mm(g, weight, out=g_h[start:stop])
        if g_w is not None:
            g_w.addmm_(buf.t(), h_c if same else h_c.to(dtype))
        if g_b is not None:
            g_b.add_(buf.sum(0))
    del buf, buf_all

    def logits_of_rows(idx: torch.Tensor) -> torch.Tensor:
        h = hidden[idx]
        return h @ w_t if bias is None else torch.addmm(bias, h, w_t)

    if need_loss:
        _fix_large_ce(outs, plan, logits_of_rows, rows_per_chunk)
    if g_w is not None and g_w.dtype != weight.dtype:
        g_w = g_w.to(weight.dtype)
    if g_b is not None and g_b.dtype != bias.dtype:
        g_b = g_b.to(bias.dtype)
    return outs, g_h, g_w, g_b


class _LinearCEWithNTL(torch.autograd.Function):
    """(hidden, weight, bias) -> (total, ce, ntl) without logits; gradients made in forward
    (recomputed in backward when the incoming gradients are not a plain ``total`` scalar)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, plan: _Plan, rows_per_chunk: int, grads: tuple):
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
        return _finish_losses(plan, outs.ce_tok, outs.ntl_num)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_total, g_ce, g_ntl):
        plan: _Plan = ctx.plan
        gt, gc, gn = _as_rows(g_total), _as_rows(g_ce), _as_rows(g_ntl)
        if gt is None and gc is None and gn is None:
            return (None,) * 6
        stored, ctx.stored = ctx.stored, None
        if stored is not None and gc is None and gn is None and gt.dim() == 0:
            return (*(None if g is None else _scale_rows(g, gt) for g in stored), None, None,
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


# ---------------------------------------------------------------------- public API
def _validate_common(ntl: str, lam: float, reduction: str, num_items_in_batch: Any,
                     num_number_items: Any) -> None:
    if ntl not in functional.LOSSES:
        raise ValueError(f"Unknown number token loss {ntl!r}; choose one of "
                         f"{sorted(functional.LOSSES)}.")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}.")
    if reduction not in functional.REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; use one of "
                         f"{functional.REDUCTIONS}.")
    if reduction == "none" and (num_items_in_batch is not None or num_number_items is not None):
        raise ValueError("num_items_in_batch / num_number_items divide a summed loss; they need "
                         "reduction='mean' or 'sum'.")


def _plain(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab: NumberVocab | NumberTable,
    *,
    ntl: str,
    lam: float,
    ignore_index: int,
    reduction: str,
    num_items_in_batch: Any,
    num_number_items: Any,
    ntl_options: dict[str, Any],
) -> FusedOutput:
    """CE + λ·NTL through `functional` (the unfused reference, plain autograd)."""
    dtype = functional._compute_dtype(logits)
    ntl_value = functional.get_loss(ntl)(
        logits, labels, vocab, ignore_index=ignore_index, reduction=reduction,
        num_items_in_batch=num_number_items, **ntl_options)
    flat = logits.reshape(-1, logits.shape[-1]).to(dtype)
    target = labels.reshape(-1).long()
    if reduction == "none":
        ce = torch.nn.functional.cross_entropy(
            flat, target, ignore_index=ignore_index, reduction="none").reshape(labels.shape)
    elif reduction == "sum" and num_items_in_batch is None:
        ce = torch.nn.functional.cross_entropy(flat, target, ignore_index=ignore_index,
                                               reduction="sum")
    else:
        ce = functional.cross_entropy(logits, labels, ignore_index=ignore_index,
                                      num_items_in_batch=num_items_in_batch)
    return FusedOutput(ce + lam * ntl_value, ce, ntl_value)


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
) -> FusedOutput:
    """CE + λ·NTL on materialized logits in one fused pass, with a hand-written backward.

    Args:
        logits: (B, T, V) or (N, V), float32 / bfloat16 / float16 / float64.
        labels: int (B, T) or (N,), aligned with the logits (no shifting inside); ids in
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

    Returns:
        ``FusedOutput(total, ce, ntl)``; float32 (float64 for float64 logits).

    Memory: one gradient buffer of the logits' shape and dtype (made in forward and handed to
    autograd in backward) plus one (chunk, V) float32 scratch for non-float32 logits.
    """
    _validate_common(ntl, lam, reduction, num_items_in_batch, num_number_items)
    if ntl not in FUSED_LOSSES or ntl_options or not fused:
        if ntl in FUSED_LOSSES and set(ntl_options) - {"target_probs"}:
            raise TypeError(f"unexpected options {sorted(ntl_options)} for ntl={ntl!r}.")
        options = dict(ntl_options, reweigh=reweigh, loss_weights=loss_weights)
        if ntl == "was":
            options["squash_factor"] = squash_factor
        elif squash_factor is not None:
            raise ValueError(f"squash_factor applies to ntl='was' only, got ntl={ntl!r}.")
        if ntl in ("mse", "mae", "huber"):
            options["huber_delta"] = huber_delta
        return _plain(logits, labels, vocab, ntl=ntl, lam=lam, ignore_index=ignore_index,
                      reduction=reduction, num_items_in_batch=num_items_in_batch,
                      num_number_items=num_number_items, ntl_options=options)
    table = functional.as_table(vocab, logits.device)
    functional.validate(logits, labels, table, ignore_index=ignore_index, reduction=reduction,
                        loss_weights=loss_weights, num_items_in_batch=num_items_in_batch)
    dtype = functional._compute_dtype(logits)
    spec = _make_spec(table, ntl, squash_factor=squash_factor, huber_delta=huber_delta,
                      reweigh=reweigh, dtype=dtype)
    plan = _make_plan(labels, table, spec, lam=lam, ignore_index=ignore_index,
                      reduction=reduction, loss_weights=loss_weights,
                      num_items_in_batch=num_items_in_batch,
                      num_number_items=num_number_items, dtype=dtype)
    vocab_size = logits.shape[-1]
    rows = _chunk_rows(plan.n_rows, vocab_size, chunk_size, FUSED_CHUNK_ELEMS, MIN_CHUNK_ROWS)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    if plan.n_rows == 0:
        raise ValueError(f"logits {tuple(logits.shape)} hold no rows to compute a loss over.")
    return FusedOutput(*_FusedCEWithNTL.apply(logits, plan, rows, need_grad))


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
) -> FusedOutput:
    """CE + λ·NTL of ``logits = hidden @ weight.T (+ bias)`` without materializing the logits.

    Args:
        hidden: (B, T, d) or (N, d) final hidden states (float32 / bfloat16 / float16 /
            float64).
        weight: (V, d) output embedding (``lm_head.weight``), same dtype as ``hidden``.
        labels: int (B, T) or (N,), aligned with ``hidden`` (no shifting inside).
        bias: optional (V,) output bias.
        chunk_size: rows per chunk (default: 2**25 logits per chunk, at least 256 rows).
        Other arguments: as `cross_entropy_with_ntl`.

    Returns:
        ``FusedOutput(total, ce, ntl)``, equal to ``cross_entropy_with_ntl(hidden @ weight.T,
        ...)`` (float32 math; the logits of a chunk are rounded to the inputs' dtype first,
        as materialized logits would be).

    Memory: never (N, V); one (chunk, V) buffer, the gradients of hidden and weight (float32
    accumulator for non-float32 weights) are made during forward.
    """
    _validate_common(ntl, lam, reduction, num_items_in_batch, num_number_items)
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
    if ntl not in FUSED_LOSSES or ntl_options:
        logits = hidden @ weight.t() if bias is None else torch.addmm(
            bias, hidden.reshape(-1, hidden.shape[-1]), weight.t()).reshape(
            *hidden.shape[:-1], -1)
        return cross_entropy_with_ntl(
            logits, labels, vocab, ntl=ntl, lam=lam, ignore_index=ignore_index,
            num_items_in_batch=num_items_in_batch, num_number_items=num_number_items,
            reweigh=reweigh, squash_factor=squash_factor, huber_delta=huber_delta,
            loss_weights=loss_weights, reduction=reduction, **ntl_options)
    table = functional.as_table(vocab, hidden.device)
    # validate() reads only the logits' shape and dtype: give it a zero-stride stand-in.
    stand_in = hidden.new_empty(()).expand(*labels.shape, weight.shape[0])
    functional.validate(stand_in, labels, table, ignore_index=ignore_index, reduction=reduction,
                        loss_weights=loss_weights, num_items_in_batch=num_items_in_batch)
    dtype = functional._compute_dtype(hidden)
    spec = _make_spec(table, ntl, squash_factor=squash_factor, huber_delta=huber_delta,
                      reweigh=reweigh, dtype=dtype)
    plan = _make_plan(labels, table, spec, lam=lam, ignore_index=ignore_index,
                      reduction=reduction, loss_weights=loss_weights,
                      num_items_in_batch=num_items_in_batch,
                      num_number_items=num_number_items, dtype=dtype)
    if plan.n_rows == 0:
        raise ValueError(f"hidden {tuple(hidden.shape)} holds no rows to compute a loss over.")
    rows = _chunk_rows(plan.n_rows, weight.shape[0], chunk_size, LINEAR_CHUNK_ELEMS,
                       MIN_LINEAR_ROWS)
    enabled = torch.is_grad_enabled()
    grads = (enabled and hidden.requires_grad, enabled and weight.requires_grad)
    flat = hidden.reshape(-1, hidden.shape[-1])
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return FusedOutput(*_LinearCEWithNTL.apply(flat, weight, bias, plan, rows, grads))


def causal_lm_loss(
    model: Any,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    vocab: NumberVocab | NumberTable,
    *,
    attention_mask: torch.Tensor | None = None,
    ntl: str = "was",
    lam: float = 0.3,
    ignore_index: int = -100,
    num_items_in_batch: Any = None,
    num_number_items: Any = None,
    chunk_size: int | None = None,
    **kwargs: Any,
) -> FusedOutput:
    """CE + λ·NTL of a Hugging Face decoder-only LM without materializing its logits.

    Call it on the model itself, not on the module inside a ``DistributedDataParallel``
    wrapper: that would run the body behind DDP's back. For training (DDP included) use
    `ntl.integrations.logits_free.apply_logits_free`, which computes this loss inside the
    model's own forward.

    Runs the model body (``model.get_decoder()`` / ``model.model``) for the last hidden
    states, shifts the labels as HF's ``ForCausalLMLoss`` does (position t predicts label
    t + 1; the last position is ignored) and calls `linear_cross_entropy_with_ntl` with the
    output embedding ``model.get_output_embeddings()`` (``lm_head``).

    Args:
        model: a ``*ForCausalLM`` (Llama, Qwen2, Mistral, GPT-2-style ``transformer`` body...).
        input_ids: int64 (B, T).
        labels: int64 (B, T), unshifted (``labels = input_ids`` with prompt / padding set to
            ``ignore_index``), as passed to the HF model.
        attention_mask: optional (B, T).
        num_items_in_batch: count of non-ignored *shifted* labels of the accumulated batch
            (`count_causal_items`), as HF Trainer passes it.
        num_number_items: count of number targets among the shifted labels.
        **kwargs: passed to `linear_cross_entropy_with_ntl` (``reweigh``, ...).
    """
    head = model.get_output_embeddings()
    config = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_softcapping"):
        if getattr(config, attr, None):
            raise NotImplementedError(f"{type(model).__name__} caps its logits ({attr}); the "
                                      "logits-free path computes plain hidden @ W.T.")
    for attr in ("logits_scaling", "logit_scale"):
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            raise NotImplementedError(f"{type(model).__name__} scales its logits ({attr}="
                                      f"{value}); the logits-free path computes hidden @ W.T.")
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None:
        body = getattr(model, "model", None) or getattr(model, "transformer", None)
    if body is None or head is None:
        raise TypeError(f"{type(model).__name__} has no decoder body / output embedding; "
                        "causal_lm_loss needs a *ForCausalLM model.")
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    shifted = shift_labels(labels, ignore_index)
    return linear_cross_entropy_with_ntl(
        hidden, head.weight, shifted, vocab, bias=getattr(head, "bias", None), ntl=ntl, lam=lam,
        ignore_index=ignore_index, num_items_in_batch=num_items_in_batch,
        num_number_items=num_number_items, chunk_size=chunk_size, **kwargs)


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """(B, T) labels -> the label each position predicts: ``labels[:, t + 1]``, and
    ``ignore_index`` at the last position (as HF's ``ForCausalLMLoss``)."""
    pad = torch.full_like(labels[:, :1], ignore_index)
    return torch.cat([labels[:, 1:], pad], dim=1)


def count_causal_items(
    labels: torch.Tensor, vocab: NumberVocab | NumberTable, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE items, NTL items) of unshifted causal-LM ``labels``: the non-ignored and the
    number-token targets after `shift_labels`. Sum them over micro-batches (and processes)."""
    shifted = shift_labels(labels, ignore_index)
    return (shifted != ignore_index).sum(), functional.count_number_targets(
        shifted, vocab, ignore_index)
