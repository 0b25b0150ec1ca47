"""``CE + λ·NTL`` as one call: its output type, its argument checks, the set-up the fused and
logits-free paths share, and the plain autograd form they fall back to.

Every path returns a `LossOutput` with the same semantics: ``total = ce + lam·ntl``, ``ce`` the
token cross-entropy over the non-ignored labels, ``ntl`` the Number Token Loss over the
number-target labels (`ntl.losses.functional`), both reduced the same way.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ntl.losses import functional
from ntl.losses.kernel import Plan, make_plan, make_spec
from ntl.numbers import NumberTable, NumberVocab

FUSED_LOSSES = ("was", "mse", "mae", "huber")
"""NTL variants with a fused implementation; others (``number-level``) use the plain path."""


class LossOutput(NamedTuple):
    """``total = ce + lam·ntl`` and its parts: 0-d tensors (the labels' shape with
    ``reduction="none"``), float32 (float64 for float64 inputs)."""

    total: torch.Tensor
    ce: torch.Tensor
    ntl: torch.Tensor


def check_lam(lam: Any) -> float:
    """``lam`` as a float, or a TypeError / ValueError naming the bad value."""
    if isinstance(lam, torch.Tensor) and lam.numel() == 1 and not lam.requires_grad:
        lam = lam.item()
    if isinstance(lam, bool) or not isinstance(lam, Real):
        raise TypeError(f"lam must be a number (the NTL weight, e.g. lam=0.3), got {lam!r} "
                        f"({type(lam).__name__}).")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}.")
    return float(lam)


def check_call(ntl: str, lam: Any, reduction: str, num_items_in_batch: Any,
               num_number_items: Any) -> float:
    """Check the arguments every CE + NTL call shares; returns ``lam`` as a float."""
    if ntl not in functional.LOSSES:
        raise ValueError(f"Unknown number token loss ntl={ntl!r}; choose one of "
                         f"{sorted(functional.LOSSES)}.")
    lam = check_lam(lam)
    if reduction not in functional.REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; use one of "
                         f"{functional.REDUCTIONS}.")
    if reduction == "none" and (num_items_in_batch is not None or num_number_items is not None):
        raise ValueError("num_items_in_batch / num_number_items divide a summed loss; they need "
                         "reduction='mean' or 'sum'.")
    return lam


def is_fused(ntl: str, ntl_options: dict[str, Any]) -> bool:
    """Whether ``ntl`` with these extra options has a fused form (else: the plain path)."""
    return ntl in FUSED_LOSSES and not ntl_options


def plain_options(ntl: str, ntl_options: dict[str, Any], *, reweigh: bool,
                  squash_factor: float | None, huber_delta: float,
                  loss_weights: torch.Tensor | None) -> dict[str, Any]:
    """The keyword options of the functional NTL ``ntl`` for a plain-path call."""
    if ntl in FUSED_LOSSES and set(ntl_options) - {"target_probs"}:
        raise TypeError(f"unexpected options {sorted(ntl_options)} for ntl={ntl!r}.")
    options = dict(ntl_options, reweigh=reweigh, loss_weights=loss_weights)
    if ntl == "was":
        options["squash_factor"] = squash_factor
    elif squash_factor is not None:
        raise ValueError(f"squash_factor applies to ntl='was' only, got ntl={ntl!r}.")
    if ntl in ("mse", "mae", "huber"):
        options["huber_delta"] = huber_delta
    return options


def plain(
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
) -> LossOutput:
    """CE + λ·NTL through `functional` and ``F.cross_entropy`` (the unfused reference, plain
    autograd: supports ``retain_graph`` and higher-order gradients)."""
    dtype = functional.compute_dtype(logits)
    ntl_value = functional.get_loss(ntl)(
        logits, labels, vocab, ignore_index=ignore_index, reduction=reduction,
        num_items_in_batch=num_number_items, **ntl_options)
    target = labels.reshape(-1).long()
    # Ignored rows become 0 before the softmax: a NaN / inf there gets a zero gradient row.
    flat = torch.where((target != ignore_index)[:, None],
                       logits.reshape(-1, logits.shape[-1]).to(dtype), 0.0)
    if reduction == "none":
        ce = F.cross_entropy(flat, target, ignore_index=ignore_index,
                             reduction="none").reshape(labels.shape)
    elif num_items_in_batch is not None:  # HF: sum / num_items_in_batch (at least 1)
        ce = F.cross_entropy(flat, target, ignore_index=ignore_index, reduction="sum")
        ce = ce / torch.as_tensor(num_items_in_batch, dtype=ce.dtype, device=ce.device).clamp_min(1)
    else:
        ce = F.cross_entropy(flat, target, ignore_index=ignore_index, reduction=reduction)
    return LossOutput(ce + lam * ntl_value, ce, ntl_value)


def fused_plan(
    logits_like: torch.Tensor,
    labels: torch.Tensor,
    vocab: NumberVocab | NumberTable,
    *,
    ntl: str,
    lam: float,
    ignore_index: int,
    reduction: str,
    loss_weights: torch.Tensor | None,
    num_items_in_batch: Any,
    num_number_items: Any,
    reweigh: bool,
    squash_factor: float | None,
    huber_delta: float,
) -> tuple[NumberTable, Plan]:
    """The set-up of a fused call: validate, build the NTL spec and the row plan.

    ``logits_like`` is the logits, or a tensor of their shape and dtype (only metadata is read).
    """
    table = functional.as_table(vocab, logits_like.device)
    functional.validate(logits_like, labels, table, ignore_index=ignore_index,
                        reduction=reduction, loss_weights=loss_weights,
                        num_items_in_batch=num_items_in_batch)
    if labels.numel() == 0:
        raise ValueError(f"labels {tuple(labels.shape)} hold no rows to compute a loss over.")
    dtype = functional.compute_dtype(logits_like)
    spec = make_spec(table, ntl, squash_factor=squash_factor, huber_delta=huber_delta,
                     reweigh=reweigh, dtype=dtype)
    plan = make_plan(labels, table, spec, lam=lam, ignore_index=ignore_index,
                     reduction=reduction, loss_weights=loss_weights,
                     num_items_in_batch=num_items_in_batch,
                     num_number_items=num_number_items, dtype=dtype)
    return table, plan
