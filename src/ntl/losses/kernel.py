"""The row kernel of the fused CE + NTL paths: per-call row bookkeeping, the closed-form NTL of a
row and its gradient, and one pass over a chunk of rows that turns their softmax into the
gradient of the whole loss. How and why: docs/fused.md.

Shapes: N rows (flattened labels), V classes, K number tokens, M number-target rows, R rows in a
chunk. Math runs in the compute dtype (float32; float64 for float64 inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ntl.losses import functional
from ntl.numbers import NumberTable

# -log(p) above this (p < 1e-30) is recomputed from the logits: float32 p has lost precision.
CE_EXACT_ABOVE = 69.0


# ---------------------------------------------------------------------- per-row NTL math
@dataclass(frozen=True)
class NTLSpec:
    """What the per-row NTL needs: number columns, their values, the loss form."""

    kind: str
    number_ids: torch.Tensor  # int64 (K,)
    values: torch.Tensor  # (K,) compute dtype
    dist: torch.Tensor | None  # (K, K) compute dtype, WAS only
    huber_delta: float
    reweigh: bool
    reweigh_cost: float  # REWEIGH_MARGIN · the largest per-token loss


def make_spec(
    table: NumberTable,
    kind: str,
    *,
    squash_factor: float | None,
    huber_delta: float,
    reweigh: bool,
    dtype: torch.dtype,
) -> NTLSpec:
    """The `NTLSpec` of NTL ``kind`` (one of ``FUSED_LOSSES``) over ``table``."""
    if kind != "was" and squash_factor is not None:
        raise ValueError(f"squash_factor applies to ntl='was' only, got ntl={kind!r}.")
    dist = functional.distance_matrix(table, squash_factor, dtype) if kind == "was" else None
    max_loss = functional.max_token_loss(table, kind, squash_factor=squash_factor,
                                         huber_delta=huber_delta)
    return NTLSpec(kind, table.number_ids, table.number_values.to(dtype), dist,
                   float(huber_delta), bool(reweigh), functional.REWEIGH_MARGIN * max_loss)


def ntl_rows(
    z_num: torch.Tensor, mass: torch.Tensor | None, k: torch.Tensor, y: torch.Tensor,
    spec: NTLSpec,
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

    The gradient of an expectation ``E_q[f]`` is ``q·(f − E_q[f])``; when ``q`` sits almost
    entirely on one token, ``f − E_q[f]`` cancels. Both are therefore computed relative to the
    most likely token (``f − f_top``, exact for the token values), so the small difference is
    never the rounding residue of two large numbers.
    """
    # softmax subtracts the row's max before exp (exact for nearby logits) and normalizes;
    # exp(z − logsumexp(z)) would carry the rounding of a large logsumexp into every q.
    q = torch.softmax(z_num, dim=-1)
    top = z_num.argmax(-1, keepdim=True)  # (M, 1)
    if spec.kind == "was":
        d = spec.dist[k]
        d_top = d.gather(1, top)
        d_rel = d - d_top
        mean_rel = (q * d_rel).sum(-1)
        loss = d_top.squeeze(1) + mean_rel
        grad = q * (d_rel - mean_rel[:, None])
    else:
        v_top = spec.values[top]  # (M, 1)
        v_rel = spec.values[None, :] - v_top
        mean_rel = (q * v_rel).sum(-1)  # ŷ − v_top
        r = (v_top.squeeze(1) - y) + mean_rel  # ŷ − y
        if spec.kind == "mse":
            loss, d_r = r * r, 2 * r
        elif spec.kind == "mae":
            loss, d_r = r.abs(), torch.sign(r)
        else:  # huber, as torch.nn.functional.huber_loss
            delta = spec.huber_delta
            loss = torch.where(r.abs() < delta, 0.5 * r * r, delta * (r.abs() - 0.5 * delta))
            d_r = r.clamp(-delta, delta)
        grad = d_r[:, None] * q * (v_rel - mean_rel[:, None])
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
class Plan:
    """Row bookkeeping of one call, shared by the kernels (flat over the N rows)."""

    n_rows: int
    targets: torch.Tensor  # int64 (N,), ignore_index replaced by 0
    keep: torch.Tensor  # bool (N,), label not ignored
    ignored: torch.Tensor  # int64, ascending: rows whose label is ignored (zero gradient)
    ce_w: torch.Tensor  # (N,) weight of each row's CE in the reduced loss (0 where ignored)
    num_rows: torch.Tensor  # int64 (M,), ascending: rows whose label is a number token
    num_k: torch.Tensor  # int64 (M,), label index among the number tokens
    num_y: torch.Tensor  # (M,) label value
    ntl_w: torch.Tensor  # (M,) weight of each number row's NTL in the reduced loss
    lam: float
    reduction: str
    ce_denom: torch.Tensor | None  # divides the CE sum (mean / num_items_in_batch)
    dtype: torch.dtype  # compute dtype
    spec: NTLSpec
    shape: tuple[int, ...]  # labels' shape

    def chunk_bounds(self, starts: list[int]) -> tuple[list[int], list[int]]:
        """For chunks beginning at ``starts`` (+ the end): where each begins in ``num_rows``
        and in ``ignored`` (one device sync for both)."""
        n_num, n_ign = self.num_rows.numel(), self.ignored.numel()
        edges = torch.tensor(starts, dtype=torch.int64, device=self.num_rows.device)
        both = torch.cat([torch.searchsorted(self.num_rows, edges),
                          torch.searchsorted(self.ignored, edges)]).tolist()
        k = len(starts)
        return both[:k] + [n_num], both[k:] + [n_ign]


def make_plan(
    labels: torch.Tensor,
    table: NumberTable,
    spec: NTLSpec,
    *,
    lam: float,
    ignore_index: int,
    reduction: str,
    loss_weights: torch.Tensor | None,
    num_items_in_batch: Any,
    num_number_items: Any,
    dtype: torch.dtype,
) -> Plan:
    """The `Plan` of a call: which rows count for CE and NTL, their weights in the reduction."""
    flat = labels.reshape(-1).long()
    keep = flat != ignore_index
    targets = torch.where(keep, flat, torch.zeros_like(flat))
    num_rows = torch.nonzero(keep & table.is_number[targets]).flatten()
    ignored = torch.nonzero(~keep).flatten()
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
    return Plan(
        n_rows=flat.numel(), targets=targets, keep=keep, ignored=ignored, ce_w=ce_w,
        num_rows=num_rows, num_k=num_k, num_y=num_y, ntl_w=ntl_w, lam=float(lam),
        reduction=reduction, ce_denom=ce_denom, dtype=dtype, spec=spec, shape=tuple(labels.shape),
    )


def finish_losses(
    plan: Plan, ce_tok: torch.Tensor, ntl_num: torch.Tensor
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


# ---------------------------------------------------------------------- the row pass
@dataclass
class RowOutputs:
    """Per-row results the row loop fills in."""

    ce_tok: torch.Tensor  # (N,)
    ntl_num: torch.Tensor  # (M,)
    d_num: torch.Tensor | None = None  # (M, K) NTL gradient on the number columns
    d_lse: torch.Tensor | None = None  # (M,) NTL gradient w.r.t. the row's lse (reweigh)
    p_num: torch.Tensor | None = None  # (M, K) full softmax on the number columns


@dataclass(frozen=True)
class Chunk:
    """Rows ``start .. stop`` and their slices of ``Plan.num_rows`` (``a:b``) and
    ``Plan.ignored`` (``ia:ib``)."""

    start: int
    stop: int
    a: int
    b: int
    ia: int
    ib: int


def chunks(plan: Plan, rows_per_chunk: int) -> list[Chunk]:
    """The row chunks of ``plan`` with ``rows_per_chunk`` rows each (the last may be shorter)."""
    starts = list(range(0, plan.n_rows, rows_per_chunk))
    num, ign = plan.chunk_bounds(starts)
    return [Chunk(s, min(s + rows_per_chunk, plan.n_rows), num[i], num[i + 1], ign[i], ign[i + 1])
            for i, s in enumerate(starts)]


def _softmax_into(z: torch.Tensor, buf: torch.Tensor) -> None:
    """``buf = softmax(z, dim=1)`` in one kernel; ``z`` may be ``buf`` (in place)."""
    if z.dtype != buf.dtype:
        buf.copy_(z)
        z = buf
    torch.ops.aten._softmax.out(z, 1, False, out=buf)


def rows_pass(
    z: torch.Tensor,
    buf: torch.Tensor,
    plan: Plan,
    chunk: Chunk,
    outs: RowOutputs,
    ce_w: torch.Tensor | None,
    ntl_w: torch.Tensor | None,
) -> None:
    """Loss (and, with weights, gradient) of the rows of ``chunk`` in one pass.

    One softmax kernel and one row scale touch the (R, V) chunk; everything else reads or
    writes R or R×K entries. CE comes from the softmax at the target, ``−log p_y``; rows where
    ``p_y`` underflows (CE > ~69) are marked for an exact recomputation after the loop
    (`fix_large_ce`). The number-token mass for reweigh is ``sum p_K``. Rows whose label is
    ignored get an exact zero gradient, whatever their logits (NaN / inf included).

    Args:
        z: (R, V) logits of the chunk, any float dtype; may be ``buf`` itself.
        buf: (R, V) compute-dtype buffer. With ``ce_w`` it receives the gradient
            ``ce_w·(softmax − onehot) + ntl_w·dNTL``; otherwise it is scratch.
        ce_w: (R,) CE gradient weights, or None for the loss only.
        ntl_w: (b − a,) NTL gradient weights (λ included).
    """
    start, a, b = chunk.start, chunk.a, chunk.b
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
        loss, d_num, d_lse = ntl_rows(z_num, mass, plan.num_k[a:b], plan.num_y[a:b], plan.spec)
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
    if chunk.ib > chunk.ia:  # 0·NaN is NaN: rows that do not count are set, not scaled, to 0
        buf.index_fill_(0, plan.ignored[chunk.ia:chunk.ib] - start, 0.0)


def fix_large_ce(outs: RowOutputs, plan: Plan, logits_of_rows, rows_per_chunk: int) -> None:
    """Recompute CE = logsumexp(z) − z_y exactly where the softmax at the target underflowed.

    ``logits_of_rows(idx)`` returns the (len(idx), V) logits of rows ``idx``; it is called on at
    most ``rows_per_chunk`` rows at a time, so the fix-up never needs more than one chunk of
    logits (with large logits most rows can need it).
    """
    bad = torch.nonzero(~(outs.ce_tok <= CE_EXACT_ABOVE) & plan.keep).flatten()
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


def chunk_rows(n_rows: int, vocab_size: int, chunk_size: int | None, budget: int,
               min_rows: int) -> int:
    """Rows per chunk: ``chunk_size`` if given, else ``budget`` elements of (rows, V), at least
    ``min_rows``."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}.")
        return min(int(chunk_size), max(n_rows, 1))
    return max(1, min(n_rows, max(min_rows, budget // max(vocab_size, 1))))


def as_rows(g: torch.Tensor | None) -> torch.Tensor | None:
    """An incoming gradient as a 0-d scalar or a flat per-row (N,) vector."""
    if g is None:
        return None
    return g.reshape(-1) if g.dim() > 0 else g


def scale_rows(grad: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``grad *= g`` in place, ``g`` 0-d or per-row (N,); a CPU scalar 1 is skipped."""
    if g.dim() == 0:
        if g.device.type == "cpu" and float(g) == 1.0:
            return grad
        return grad.mul_(g.to(grad.dtype))
    return grad.mul_(g.to(grad.dtype)[:, None])
