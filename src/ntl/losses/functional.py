"""Number Token Loss as pure tensor functions.

All losses take

- ``logits``: float (B, T, V) or (N, V), any float dtype (fp32/bf16/fp16/fp64); math runs in
  float32 (float64 stays float64) and the result comes back in that compute dtype (float32
  for fp32 / bf16 / fp16 logits, as Hugging Face's loss utilities do: an fp16 model never
  overflows the loss);
- ``labels``: int64 (B, T) or (N,), aligned with the logits (no shifting inside), ids in
  ``[0, V)`` or ``ignore_index``;
- ``vocab``: a `ntl.NumberVocab` (or its `NumberTable`), with ``vocab_size == V``.

``p`` is the softmax over the number-token logits only (the paper's definition). A position
counts when its label is a number token. Reductions follow PyTorch: ``"mean"`` averages over
number-target positions (weighted by ``loss_weights``), ``"sum"`` sums, ``"none"`` returns the
per-token loss in the labels' shape (0 at non-number positions). ``num_items_in_batch`` follows
Hugging Face: the weighted sum divided by it (the count of number targets in the whole
accumulated batch, see `count_number_targets`), so gradient accumulation and multi-process
training reproduce the mean over one big batch.

Validation runs on metadata only (shapes, dtypes) except the label-range and weight-sign checks,
which read values: on CPU they raise at once; on an accelerator they are queued as an
asynchronous device assertion, so a valid call never waits on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ntl._deprecation import UNSET, renamed_keyword
from ntl.numbers import NumberTable, NumberVocab, vocab_size_hint

REDUCTIONS = ("mean", "sum", "none")
REWEIGH_MARGIN = 1.01  # ntloss: missing number mass costs slightly more than the worst number token


# ---------------------------------------------------------------------- validation
def as_table(vocab: NumberVocab | NumberTable, device: torch.device) -> NumberTable:
    """The lookup tables of ``vocab`` on ``device``."""
    if isinstance(vocab, NumberVocab):
        return vocab.table(device)
    if isinstance(vocab, NumberTable):
        return vocab if vocab.values.device == device else vocab.to(device)
    raise TypeError(f"vocab must be a NumberVocab or NumberTable, got {type(vocab).__name__}.")


def _check_values(ok: torch.Tensor, message: Callable[[], str]) -> None:
    """Raise ValueError(message()) if ``ok`` is False; asynchronous on accelerators."""
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message())
    else:
        torch._assert_async(ok, "ntl: invalid loss input (labels out of range or negative weights)")


def validate(
    logits: torch.Tensor,
    labels: torch.Tensor,
    table: NumberTable,
    *,
    ignore_index: int,
    reduction: str,
    loss_weights: torch.Tensor | None = None,
    target_probs: torch.Tensor | None = None,
    num_items_in_batch: Any = None,
) -> None:
    """Raise a clear error for any input the losses cannot handle correctly."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor, got {got}.")
    if logits.dim() not in (2, 3):
        raise ValueError(
            f"logits must have shape (B, T, V) or (N, V), got {tuple(logits.shape)} "
            f"({logits.dim()} dims)."
        )
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
    ):
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"labels must be an integer tensor of token ids, got {got}; use .long().")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits shape "
            f"{tuple(logits.shape)} without its last dim {tuple(logits.shape[:-1])}."
        )
    vocab_size = logits.shape[-1]
    if vocab_size != table.vocab_size:
        raise ValueError(vocab_size_hint(vocab_size, table.vocab_size))
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; use one of {REDUCTIONS}.")
    if num_items_in_batch is not None and reduction == "none":
        raise ValueError("num_items_in_batch divides a summed loss; it needs reduction='mean' or 'sum'.")
    if loss_weights is not None:
        if tuple(loss_weights.shape) != tuple(labels.shape):
            raise ValueError(
                f"loss_weights shape {tuple(loss_weights.shape)} must equal the labels shape "
                f"{tuple(labels.shape)}."
            )
        _check_values(
            (loss_weights >= 0).all(),
            lambda: f"loss_weights must be >= 0, got a minimum of {float(loss_weights.min())}.",
        )
    if target_probs is not None:
        k = table.number_ids.numel()
        if tuple(target_probs.shape) != (*labels.shape, k):
            raise ValueError(
                f"target_probs must have shape {(*labels.shape, k)} (a distribution over the "
                f"{k} number tokens per position), got {tuple(target_probs.shape)}."
            )
    valid = (labels == ignore_index) | ((labels >= 0) & (labels < vocab_size))

    def _bad_label() -> str:
        bad = labels[~valid]
        return (
            f"labels must be token ids in [0, {vocab_size}) or ignore_index={ignore_index}; got "
            f"{bad[:5].tolist()} ({bad.numel()} bad). Pad with ignore_index, not another value."
        )

    _check_values(valid.all(), _bad_label)


# ---------------------------------------------------------------------- shared pieces
def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """The dtype the losses compute in: float64 for float64 inputs, else float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


class _Targets:
    """Flattened per-position targets: which positions count and their values."""

    def __init__(self, labels: torch.Tensor, table: NumberTable, ignore_index: int, dtype) -> None:
        flat = labels.reshape(-1).long()
        keep = flat != ignore_index
        safe = torch.where(keep, flat, torch.zeros_like(flat))  # ignore_index never indexes
        self.ids = safe
        self.keep = keep
        self.is_number = keep & table.is_number[safe]
        self.y = torch.where(self.is_number, table.values[safe], 0.0).to(dtype)


def _number_logits(
    logits: torch.Tensor, table: NumberTable, counts: torch.Tensor, dtype, *, reweigh: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (N, K) number-token logits in the compute dtype and, with ``reweigh``, the (N,)
    log-sum-exp of each whole row (for the number mass); both 0 in rows that do not count.

    Rows that do not count (``counts`` False: ignored or non-number labels) are replaced by 0
    before any non-linear op, so a NaN / inf logit there reaches neither the loss nor the
    gradient (its gradient row is 0, not 0·NaN). With ``reweigh`` the logits are upcast once and
    both terms read that copy: their two partial gradients then add up in the compute dtype and
    are rounded to the logits' dtype once (two bf16 / fp16 partials that cancel would lose the
    result, or overflow to inf − inf).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    if not reweigh:
        z = flat.index_select(-1, table.number_ids).to(dtype)
        return torch.where(counts[:, None], z, 0.0), None
    full = torch.where(counts[:, None], flat.to(dtype), 0.0)
    return full.index_select(-1, table.number_ids), torch.logsumexp(full, dim=-1)


def _number_mass(number_logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """(N,) probability mass on the number tokens under the full softmax (two log-sum-exps, no
    probability tensor over the whole vocabulary)."""
    return torch.exp(torch.logsumexp(number_logits, dim=-1) - lse)


def _reweigh(per_token: torch.Tensor, mass: torch.Tensor, max_loss: float) -> torch.Tensor:
    """ntloss's mass reweighting: ``loss·m + 1.01·max_loss·(1 − m)``."""
    return per_token * mass + REWEIGH_MARGIN * max_loss * (1.0 - mass)


def _reduce(
    per_token: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    reduction: str,
    num_items_in_batch: Any,
) -> torch.Tensor:
    """Apply weights (0 at positions that do not count) and the reduction.

    Positions with weight 0 are dropped, not multiplied by 0: whatever their per-token value
    (NaN / inf from logits that do not count), it never reaches the result.
    """
    weighted = torch.where(weights != 0, per_token * weights, 0.0)
    if reduction == "none":
        return weighted.reshape(labels.shape)
    total = weighted.sum()
    if num_items_in_batch is not None:
        denom = torch.as_tensor(num_items_in_batch, dtype=total.dtype, device=total.device)
        return total / denom.clamp_min(torch.finfo(total.dtype).tiny)
    if reduction == "sum":
        return total
    # No number targets: 0 / tiny = exactly 0, with a gradient path and no NaN.
    return total / weights.sum().clamp_min(torch.finfo(total.dtype).tiny)


def _weights(targets: _Targets, loss_weights: torch.Tensor | None, dtype) -> torch.Tensor:
    w = targets.is_number.to(dtype)
    if loss_weights is not None:
        w = w * loss_weights.reshape(-1).to(dtype)
    return w


def count_number_targets(
    labels: torch.Tensor, vocab: NumberVocab | NumberTable, ignore_index: int = -100
) -> torch.Tensor:
    """Number of positions whose label is a number token (int64, 0-d, on the labels' device).

    Sum it over the micro-batches (and processes) of one optimizer step and pass it as
    ``num_items_in_batch`` to get the mean over number tokens of the whole batch.
    """
    table = as_table(vocab, labels.device)
    flat = labels.reshape(-1).long()
    keep = (flat != ignore_index) & (flat >= 0) & (flat < table.vocab_size)
    safe = torch.where(keep, flat, torch.zeros_like(flat))
    return (keep & table.is_number[safe]).sum()


def distance_matrix(table: NumberTable, squash_factor: float | None, dtype) -> torch.Tensor:
    """(K, K) distance between number-token values; optionally squashed as in ntloss.

    With ``squash_factor`` s > 1 the distances are mapped affinely so that the closest wrong
    token costs 1 and the farthest costs s (0 stays 0); for large multi-digit vocabularies this
    keeps a 999-vs-0 mistake from dominating.
    """
    v = table.number_values.to(dtype)
    dist = (v[:, None] - v[None, :]).abs()
    if squash_factor is None:
        return dist
    if squash_factor <= 1:
        raise ValueError(f"squash_factor must be > 1 (1 recovers cross-entropy), got {squash_factor}.")
    span, gap = table.value_span, table.min_gap
    scale = (squash_factor - 1) / (span - gap) if span > gap else 0.0
    return torch.where(dist == 0, torch.zeros_like(dist), 1 + (dist - gap) * scale)


def max_distance(table: NumberTable, squash_factor: float | None) -> float:
    """The largest entry of `distance_matrix`, from host-side scalars (no device sync)."""
    span, gap = table.value_span, table.min_gap
    if squash_factor is None or span == 0:
        return span
    return squash_factor if span > gap else 1.0


def _finish(
    per_token: torch.Tensor,
    *,
    number_logits: torch.Tensor,
    lse: torch.Tensor | None,
    targets: _Targets,
    labels: torch.Tensor,
    max_loss: float,
    loss_weights: torch.Tensor | None,
    reduction: str,
    num_items_in_batch: Any,
    dtype: torch.dtype,
) -> torch.Tensor:
    if lse is not None:  # reweigh
        per_token = _reweigh(per_token, _number_mass(number_logits, lse), max_loss)
    weights = _weights(targets, loss_weights, dtype)
    return _reduce(per_token, weights, labels, reduction, num_items_in_batch)


# ---------------------------------------------------------------------- the losses
def wasserstein(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab: NumberVocab | NumberTable,
    *,
    target_probs: torch.Tensor | None = None,
    squash_factor: float | None = None,
    reweigh: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    loss_weights: torch.Tensor | None = None,
    num_items_in_batch: Any = None,
) -> torch.Tensor:
    """NTL-WAS: Wasserstein-1 distance between the predicted number distribution and the target.

    One-hot target (default, the label token): ``sum_i p_i·|v_i − y|``, with distances
    optionally squashed (``squash_factor``). Soft target (``target_probs``, shape
    (*labels.shape, K), a distribution over ``vocab.number_ids`` per position, e.g.
    Gaussian-smoothed labels): W1 on the real line through the CDFs over the tokens sorted by
    value, ``sum_k |P(k) − Q(k)|·(v_(k+1) − v_(k))`` — valid for uneven and duplicate values and
    equal to the one-hot form on one-hot targets. Positions still count only where the label is
    a number token. Units: the token values' units (digits: 0..9).

    Shape:
        - logits: (B, T, V) or (N, V), any float dtype.
        - labels: (B, T) or (N,), aligned with the logits.
        - output: 0-d, or the labels' shape with ``reduction="none"`` (0 where the label is
          not a number token); float32 (float64 for float64 logits).
        - target_probs: (B, T, K) or (N, K), K = the number of number tokens.

    Examples::

        >>> vocab = NumberVocab.from_vocab({str(d): d for d in range(10)} | {"a": 10})
        >>> logits = torch.randn(2, 4, 11, requires_grad=True)
        >>> labels = torch.tensor([[3, 10, 7, -100], [0, 9, 10, 5]])
        >>> wasserstein(logits, labels, vocab).backward()
    """
    table = as_table(vocab, logits.device)
    validate(logits, labels, table, ignore_index=ignore_index, reduction=reduction,
             loss_weights=loss_weights, target_probs=target_probs,
             num_items_in_batch=num_items_in_batch)
    if target_probs is not None and squash_factor is not None:
        raise ValueError("squash_factor applies to one-hot targets only; drop it or target_probs.")
    dtype = compute_dtype(logits)
    targets = _Targets(labels, table, ignore_index, dtype)
    z, lse = _number_logits(logits, table, targets.is_number, dtype, reweigh=reweigh)
    p = torch.softmax(z, dim=-1)
    if target_probs is None:
        dist = distance_matrix(table, squash_factor, dtype)
        # Row of the distance matrix for each label: label id -> its index among number tokens.
        label_col = torch.searchsorted(table.number_ids, targets.ids).clamp_max(dist.shape[0] - 1)
        per_token = (p * dist[label_col]).sum(-1)
        max_loss = max_distance(table, squash_factor)
    else:
        order = torch.argsort(table.number_values, stable=True)
        v = table.number_values[order].to(dtype)
        q = target_probs.reshape(-1, z.shape[-1]).to(dtype)[:, order]
        cdf_gap = (torch.cumsum(p[:, order], -1) - torch.cumsum(q, -1))[:, :-1].abs()
        per_token = (cdf_gap * (v[1:] - v[:-1])).sum(-1)
        max_loss = table.value_span
    return _finish(per_token, number_logits=z, lse=lse, targets=targets, labels=labels,
                   max_loss=max_loss, loss_weights=loss_weights,
                   reduction=reduction, num_items_in_batch=num_items_in_batch, dtype=dtype)


def gaussian_targets(
    labels: torch.Tensor, vocab: NumberVocab | NumberTable, sigma: float, ignore_index: int = -100
) -> torch.Tensor:
    """Gaussian-smoothed targets over the number tokens: ``q_k ∝ exp(−(v_k − y)² / 2σ²)``.

    Args:
        labels: (*S) token ids; positions whose label is not a number token get all-zero rows.
        vocab: the number vocabulary (values ``v_k`` of its K number tokens).
        sigma: width in the tokens' value units (digits: 0..9); must be > 0.

    Returns:
        (*S, K) float32 distributions over ``vocab.number_ids``.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (value units, e.g. 0.5 digits), got {sigma}.")
    table = as_table(vocab, labels.device)
    y = table.values[labels.clamp(0, table.vocab_size - 1)]
    keep = (labels != ignore_index) & ~torch.isnan(y)
    logq = -((table.number_values - torch.nan_to_num(y)[..., None]) ** 2) / (2.0 * sigma**2)
    return torch.softmax(logq, dim=-1) * keep[..., None]


def soft_wasserstein(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab: NumberVocab | NumberTable,
    *,
    sigma: float = 1.0,
    ignore_index: int = -100,
    **kwargs: Any,
) -> torch.Tensor:
    """NTL-WAS against Gaussian-smoothed labels (:func:`gaussian_targets` with ``sigma``): the
    W1 distance between the predicted number distribution and a bell of width ``sigma`` around
    the label's value. Other arguments as :func:`wasserstein`."""
    table = as_table(vocab, logits.device)
    targets = gaussian_targets(labels, table, sigma, ignore_index)
    return wasserstein(logits, labels, table, target_probs=targets, ignore_index=ignore_index, **kwargs)


def lp_distance(ntl: str, huber_delta: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise distance of a residual ``r = ŷ − y`` for the expectation loss ``ntl``:
    ``"mse"`` (``r²``), ``"mae"`` (``|r|``) or ``"huber"`` (as ``F.huber_loss`` with
    ``huber_delta``)."""
    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "mse": lambda r: r * r,
        "mae": lambda r: r.abs(),
        "huber": lambda r: F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=huber_delta),
    }
    if ntl not in table:
        raise ValueError(f"ntl={ntl!r} is not an expectation loss; use one of {tuple(table)}.")
    return table[ntl]


def max_token_loss(
    table: NumberTable, ntl: str, *, squash_factor: float | None = None, huber_delta: float = 1.0
) -> float:
    """The largest per-token loss of ``ntl`` (``"was"`` or an expectation loss) against a one-hot
    target: what `reweigh` charges, times `REWEIGH_MARGIN`, for probability mass off the number
    tokens. Host-side scalars only (no device sync)."""
    if ntl == "was":
        return max_distance(table, squash_factor)
    span = torch.tensor([table.value_span], dtype=torch.float64)
    return float(lp_distance(ntl, huber_delta)(span)[0])


def expectation(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab: NumberVocab | NumberTable,
    *,
    ntl: str = "mse",
    huber_delta: float = 1.0,
    reweigh: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    loss_weights: torch.Tensor | None = None,
    num_items_in_batch: Any = None,
    loss: Any = UNSET,
) -> torch.Tensor:
    """NTL-Lp: an Lp loss between ``y`` and the expected value ``ŷ = sum_i p_i·v_i``.

    ``ntl``: ``"mse"`` (``(ŷ − y)²``, the paper's NTL-MSE), ``"mae"`` or ``"huber"``
    (with ``huber_delta``). Units: squared (mse) or plain (mae) token-value units.
    ``loss=`` is the deprecated name of ``ntl=``.

    Shape:
        - logits: (B, T, V) or (N, V), any float dtype.
        - labels: (B, T) or (N,), aligned with the logits.
        - output: 0-d, or the labels' shape with ``reduction="none"`` (0 where the label is
          not a number token); float32 (float64 for float64 logits).

    Examples::

        >>> vocab = NumberVocab.from_vocab({str(d): d for d in range(10)} | {"a": 10})
        >>> logits = torch.randn(2, 4, 11, requires_grad=True)
        >>> labels = torch.tensor([[3, 10, 7, -100], [0, 9, 10, 5]])
        >>> expectation(logits, labels, vocab, ntl="mse").backward()
    """
    ntl = renamed_keyword("expectation", "loss", "ntl", loss, ntl, "mse")
    distance = lp_distance(ntl, huber_delta)
    table = as_table(vocab, logits.device)
    validate(logits, labels, table, ignore_index=ignore_index, reduction=reduction,
             loss_weights=loss_weights, num_items_in_batch=num_items_in_batch)
    dtype = compute_dtype(logits)
    targets = _Targets(labels, table, ignore_index, dtype)
    z, lse = _number_logits(logits, table, targets.is_number, dtype, reweigh=reweigh)
    y_hat = torch.softmax(z, dim=-1) @ table.number_values.to(dtype)
    per_token = distance(y_hat - targets.y)
    max_loss = max_token_loss(table, ntl, huber_delta=huber_delta)
    return _finish(per_token, number_logits=z, lse=lse, targets=targets, labels=labels,
                   max_loss=max_loss, loss_weights=loss_weights,
                   reduction=reduction, num_items_in_batch=num_items_in_batch, dtype=dtype)


def _shift_right(x: torch.Tensor, fill) -> torch.Tensor:
    """x[:, t-1] at position t (``fill`` at t = 0) for (B, T) tensors."""
    return torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], dim=1)


def _shift_left(x: torch.Tensor, fill) -> torch.Tensor:
    return torch.cat([x[:, 1:], torch.full_like(x[:, :1], fill)], dim=1)


def _since_span_start(cum: torch.Tensor, start: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Inclusive running sum of ``step`` since the start of the current span, for (B, T) tensors.

    ``cum`` is the inclusive cumsum of ``step`` along T; because it never decreases, the
    value just before the latest span start is a running maximum.
    """
    before_start = torch.where(start, cum - step, torch.zeros_like(cum))
    return cum - torch.cummax(before_start, dim=1).values


def _number_places(labels: torch.Tensor, table: NumberTable, ignore_index: int = -100):
    """The numbers in each label row and the decimal exponent of every number token.

    Returns ``(start, span_id, exponent, sign, is_num)``, all (B, T): ``start`` (bool) marks
    the first token of each number, ``span_id`` (int64) is a row-unique id in ``[0, T]`` (0 =
    not in a number), ``exponent`` (int64) the power of ten a token's value is multiplied by (0
    outside numbers), ``sign`` (float32) −1 where a ``-`` token directly precedes the number,
    ``is_num`` (bool) the number tokens. Exponents are integers, so nothing overflows however
    long the digit run is.
    """
    rows = labels.reshape(-1, labels.shape[-1]).long()
    keep = rows != ignore_index
    safe = torch.where(keep, rows, torch.zeros_like(rows))
    is_num = keep & table.is_number[safe]
    is_dot = keep & table.is_dot[safe]
    is_minus = keep & table.is_minus[safe]
    zero = torch.zeros_like(safe)
    digits = torch.where(is_num, table.digit_counts[safe], zero)
    frac = torch.where(is_num, table.frac_digits[safe], zero)
    has_point = frac > 0  # a decimal token such as ``3.5``

    cand_dot = is_dot & _shift_right(is_num, False) & _shift_left(is_num, False)
    in_span = is_num | cand_dot
    start = in_span & ~_shift_right(in_span, False)
    # Points of a span: ``.`` tokens and decimal tokens. A second point ends the number: a
    # second ``.`` is dropped from the span, a second decimal token starts a new number.
    point = (cand_dot | has_point).long()
    points_so_far = _since_span_start(torch.cumsum(point, 1), start, point)
    in_span = is_num | (cand_dot & (points_so_far == 1))
    start = (in_span & ~_shift_right(in_span, False)) | (has_point & (points_so_far > 1))
    start_num = start & is_num  # a span never starts with its point

    span_id = torch.cumsum(start.long(), 1) * in_span.long()
    point = ((cand_dot & in_span) | has_point).long()
    points_before = _since_span_start(torch.cumsum(point, 1), start, point) - point
    is_int = is_num & (points_before == 0)  # integer part (a decimal token ends it)
    is_frac = is_num & (points_before > 0)

    # Integer part: exponent = integer digits of the later integer-part tokens of the number.
    b, t = rows.shape
    flat_id = (torch.arange(b, device=rows.device)[:, None] * (t + 1) + span_id).reshape(-1)
    int_digits = torch.where(is_int, digits - frac, zero)
    total_int = torch.zeros(b * (t + 1), dtype=digits.dtype, device=rows.device)
    total_int.index_add_(0, flat_id, int_digits.reshape(-1))
    int_so_far = _since_span_start(torch.cumsum(int_digits, 1), start, int_digits)
    exp_int = total_int[flat_id].reshape(b, t) - int_so_far
    # Fraction: exponent = −(fraction digits up to and including this token; a decimal token
    # in the integer part contributes the digits after its point).
    frac_digits = torch.where(is_frac, digits, torch.where(is_int, frac, zero))
    frac_so_far = _since_span_start(torch.cumsum(frac_digits, 1), start, frac_digits)
    exponent = torch.where(is_frac, -frac_so_far, torch.where(is_num, exp_int, zero))
    sign = torch.where(_shift_right(is_minus, False) & start, -1.0, 1.0)
    return start_num, span_id, exponent, sign, is_num


def number_spans(labels: torch.Tensor, table: NumberTable, ignore_index: int = -100):
    """Group the number tokens of each label row into numbers and give each its place value.

    Returns ``(start, span_id, scale, sign)``, all (B, T): ``start`` marks the first token of
    each number, ``span_id`` is a row-unique id in ``[0, T]`` (0 = not in a number), ``scale``
    is the place value of each number token (``10**e``, float64, 0 elsewhere), ``sign`` is −1
    where a ``-`` token directly precedes the number.

    Rules: consecutive number tokens form one number (1-3-digit chunks too: ``12`` ``345``
    -> 12345, place values from each token's digit count). A ``.`` token between number tokens
    is the decimal point (first one only: in ``1.2.3`` the second ``.`` ends the number). A
    decimal token (``3.5``, ``numbers`` mode) carries its own point: ``1`` ``3.5`` -> 13.5, and
    a decimal token after a point starts a new number. Any other token — ``,``, ``_``, a space
    piece like ``▁`` — ends the number, so ``1,000`` is two numbers (1 and 0).
    """
    start, span_id, exponent, sign, is_num = _number_places(labels, table, ignore_index)
    scale = torch.where(is_num, torch.pow(10.0, exponent.double()), 0.0)
    return start, span_id, scale, sign


def number_level(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab: NumberVocab | NumberTable,
    *,
    offset: float = 1.0,
    reweigh: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    loss_weights: torch.Tensor | None = None,
    num_items_in_batch: Any = None,
) -> torch.Tensor:
    """Number-level NTL: compare whole numbers, not single tokens.

    The number tokens of each number in the labels (see `number_spans` for how ``.``, ``-`` and
    separators are treated) are composed by place value into the target ``Y = sum y_t·10^e_t``
    and the prediction ``Ŷ = sum ŷ_t·10^e_t`` (``ŷ_t`` the expected token value). Both take the
    sign of a preceding ``-`` token. With ``d = |Ŷ − Y|`` the loss per number is the bounded
    relative distance ``d / (d + |Y| + offset)`` in [0, 1): strictly increasing in ``d``,
    about the relative error ``d/|Y|`` for large numbers, and, thanks to ``offset``, with a
    useful gradient at ``Y = 0`` (sMAPE ``d / (|Ŷ| + |Y|)`` is flat there). With
    ``reduction="none"`` the loss sits at the first token of each number; ``loss_weights`` are
    read there too; ``mean`` averages over numbers and ``num_items_in_batch`` should count
    numbers (the first tokens, `count_numbers`).

    Shape:
        - logits: (B, T, V) or (N, V), any float dtype.
        - labels: (B, T) or (N,), aligned with the logits; numbers are read along the last dim.
        - output: 0-d, or the labels' shape with ``reduction="none"``; float32 (float64 for
          float64 logits).

    Examples::

        >>> vocab = NumberVocab.from_vocab({str(d): d for d in range(10)} | {"a": 10, ".": 11})
        >>> logits = torch.randn(1, 5, 12, requires_grad=True)
        >>> labels = torch.tensor([[1, 2, 11, 5, 10]])  # 12.5, then a word
        >>> number_level(logits, labels, vocab).backward()
    """
    table = as_table(vocab, logits.device)
    validate(logits, labels, table, ignore_index=ignore_index, reduction=reduction,
             loss_weights=loss_weights, num_items_in_batch=num_items_in_batch)
    if offset <= 0:
        raise ValueError(f"offset must be > 0 to keep a gradient at y = 0, got {offset}.")
    dtype = compute_dtype(logits)
    rows = labels.reshape(-1, labels.shape[-1])
    start, span_id, exponent, sign, is_num = _number_places(rows, table, ignore_index)
    targets = _Targets(rows, table, ignore_index, dtype)
    # Rows outside numbers never count: their logits (NaN / inf allowed) must not leak in.
    z, lse = _number_logits(logits, table, is_num.reshape(-1), dtype, reweigh=reweigh)
    y_hat = torch.softmax(z, dim=-1) @ table.number_values.to(dtype)

    # Each number is computed relative to its leading place, 10**top: every place value is
    # 10**(e − top) <= 1, so digit runs of any length stay finite (the loss is scale-free, only
    # the offset is scaled along).
    b, t = rows.shape
    n_spans = b * (t + 1)
    flat_id = (torch.arange(b, device=rows.device)[:, None] * (t + 1) + span_id).reshape(-1)
    first = start.reshape(-1)
    top = torch.zeros(n_spans, dtype=exponent.dtype, device=rows.device)
    top[flat_id[first]] = exponent.reshape(-1)[first]
    rel = (exponent.reshape(-1) - top[flat_id]).double()
    scale = torch.where(is_num.reshape(-1), torch.pow(10.0, rel), 0.0).to(dtype)
    big_y = torch.zeros(n_spans, dtype=dtype, device=rows.device).index_add(
        0, flat_id, targets.y * scale)
    big_y_hat = torch.zeros(n_spans, dtype=dtype, device=rows.device).index_add(
        0, flat_id, y_hat * scale)
    sign = sign.reshape(-1).to(dtype)
    y_num = big_y[flat_id] * sign
    y_hat_num = big_y_hat[flat_id] * sign
    offset_rel = (offset * torch.pow(10.0, -top[flat_id].double())).to(dtype)
    distance = (y_hat_num - y_num).abs()
    denom = (distance + y_num.abs() + offset_rel).clamp_min(torch.finfo(dtype).tiny)
    per_number = distance / denom
    if lse is not None:  # reweigh
        per_number = _reweigh(per_number, _number_mass(z, lse), 1.0)
    weights = start.reshape(-1).to(dtype)
    if loss_weights is not None:
        weights = weights * loss_weights.reshape(-1).to(dtype)
    return _reduce(per_number, weights, labels, reduction, num_items_in_batch)


def count_numbers(
    labels: torch.Tensor, vocab: NumberVocab | NumberTable, ignore_index: int = -100
) -> torch.Tensor:
    """Number of whole numbers in the labels (the ``num_items_in_batch`` of `number_level`)."""
    table = as_table(vocab, labels.device)
    rows = labels.reshape(-1, labels.shape[-1])
    return number_spans(rows, table, ignore_index)[0].sum()


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    num_items_in_batch: Any = None,
) -> torch.Tensor:
    """Token-level CE in float32 (float64 for float64 logits), mean over non-ignored tokens or
    sum / ``num_items_in_batch``."""
    flat = logits.reshape(-1, logits.shape[-1]).to(compute_dtype(logits))
    target = labels.reshape(-1).long()
    if num_items_in_batch is None:
        return F.cross_entropy(flat, target, ignore_index=ignore_index)
    total = F.cross_entropy(flat, target, ignore_index=ignore_index, reduction="sum")
    denom = torch.as_tensor(num_items_in_batch, dtype=total.dtype, device=total.device)
    return total / denom.clamp_min(1)


def _expectation_with(kind: str) -> Callable[..., torch.Tensor]:
    def loss_fn(logits, labels, vocab, **kwargs):
        return expectation(logits, labels, vocab, ntl=kind, **kwargs)

    loss_fn.__name__ = f"expectation_{kind}"
    loss_fn.__wrapped__ = expectation  # inspect.signature shows expectation's options
    loss_fn.__doc__ = f"`expectation` with ntl={kind!r}."
    return loss_fn


# Name -> loss function; the names used by the trainer's arms (``ce+ntl-<name>``).
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "was": wasserstein,
    "was-soft": soft_wasserstein,
    "mse": _expectation_with("mse"),
    "mae": _expectation_with("mae"),
    "huber": _expectation_with("huber"),
    "number-level": number_level,
}

# How to count the items each loss averages over (for num_items_in_batch).
ITEM_COUNTERS: dict[str, Callable[..., torch.Tensor]] = {
    name: (count_numbers if name == "number-level" else count_number_targets) for name in LOSSES
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """The loss function called ``name`` (see `LOSSES`)."""
    if name not in LOSSES:
        raise ValueError(f"Unknown number token loss {name!r}; choose one of {sorted(LOSSES)}.")
    return LOSSES[name]
