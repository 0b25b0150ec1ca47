"""`nn.Module` wrappers of the Number Token Loss.

The lookup tables are registered buffers: ``.to(device)`` moves them once, and they are saved
in ``state_dict``. The math lives in `ntl.losses.functional` (NTL), `ntl.losses.fused`
(CE + NTL on logits) and `ntl.losses.linear` (CE + NTL from hidden states).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ntl._deprecation import UNSET, renamed_keyword
from ntl.losses import functional
from ntl.losses.combined import LossOutput, check_lam
from ntl.losses.fused import cross_entropy_with_ntl
from ntl.losses.linear import linear_cross_entropy_with_ntl
from ntl.numbers import NumberTable, NumberVocab

__all__ = ["CrossEntropyWithNTL", "LinearCrossEntropyWithNTL", "LossOutput", "NumberTokenLoss"]

_TABLE_BUFFERS = ("values", "is_number", "number_ids", "number_values", "digit_counts",
                  "frac_digits", "is_dot", "is_minus")


class _NumberTableModule(nn.Module):
    """Holds a NumberVocab's lookup tables as buffers."""

    def __init__(self, vocab: NumberVocab) -> None:
        super().__init__()
        if not isinstance(vocab, NumberVocab):
            raise TypeError(
                f"vocab must be a NumberVocab, got {type(vocab).__name__}; build one with "
                "NumberVocab.from_tokenizer(tokenizer)."
            )
        vocab.require_numbers()
        table = vocab.table("cpu")
        for name in _TABLE_BUFFERS:
            self.register_buffer(name, getattr(table, name).clone())
        self.value_span = table.value_span
        self.min_gap = table.min_gap
        self.vocab_size = vocab.vocab_size

    def table(self) -> NumberTable:
        """The tables as the functional losses take them (no copy)."""
        return NumberTable(
            **{name: getattr(self, name) for name in _TABLE_BUFFERS},
            value_span=self.value_span,
            min_gap=self.min_gap,
        )


# Arguments the modules set themselves; the rest of a loss function's keywords are its options.
_NOT_OPTIONS = frozenset({"logits", "labels", "vocab", "ntl", "loss", "ignore_index",
                          "reduction", "num_items_in_batch"})


def _check_options(ntl: str, loss_fn: Any, options: dict[str, Any]) -> None:
    """Raise TypeError at construction for an option ``loss_fn`` does not take."""
    accepted = sorted(set(inspect.signature(loss_fn).parameters) - _NOT_OPTIONS)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"unexpected option(s) {', '.join(map(repr, unknown))} for the {ntl!r} loss; "
            f"it takes {', '.join(accepted)}."
        )


class NumberTokenLoss(_NumberTableModule):
    r"""The Number Token Loss alone: ``NumberTokenLoss(vocab, ntl="was")(logits, labels)``.

    ``p`` is the softmax over the number-token logits; a position counts when its label is a
    number token. ``"was"`` is the Wasserstein-1 distance between ``p`` and the label's value
    (NTL-WAS), ``"mse"`` / ``"mae"`` / ``"huber"`` an Lp loss between the label's value and the
    expected value ``sum_i p_i·v_i`` (NTL-MSE, ...), ``"number-level"`` a bounded relative
    distance between whole numbers (see `ntl.losses.functional`).

    Args:
        vocab: the tokenizer's `NumberVocab` (``vocab_size`` = the model's logits size).
        ntl: ``"was"`` (default), ``"mse"``, ``"mae"``, ``"huber"``, ``"was-soft"`` or
            ``"number-level"`` (see `functional.LOSSES`). ``loss=`` is its deprecated name.
        reduction: ``"mean"`` (over number targets, weighted by ``loss_weights``) | ``"sum"``
            | ``"none"``.
        ignore_index: label value that is skipped (default -100).
        **options: passed to the loss function (``reweigh``, ``squash_factor``,
            ``huber_delta``, ...); an option the loss does not take fails here.

    Shape:
        - logits: (B, T, V) or (N, V), any float dtype.
        - labels: (B, T) or (N,), aligned with the logits (no shifting inside).
        - output: 0-d, or the labels' shape with ``reduction="none"`` (0 where the label is
          not a number token); float32 (float64 for float64 logits).

    Examples::

        >>> vocab = NumberVocab.from_vocab({str(d): d for d in range(10)} | {"a": 10})
        >>> loss = NumberTokenLoss(vocab, ntl="was")
        >>> logits = torch.randn(2, 4, 11, requires_grad=True)
        >>> labels = torch.tensor([[3, 10, 7, -100], [0, 9, 10, 5]])
        >>> loss(logits, labels).backward()
    """

    def __init__(
        self,
        vocab: NumberVocab,
        ntl: str = "was",
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        loss: Any = UNSET,
        **options: Any,
    ) -> None:
        super().__init__(vocab)
        ntl = renamed_keyword("NumberTokenLoss", "loss", "ntl", loss, ntl, "was")
        self.loss_name = ntl
        self.loss_fn = functional.get_loss(ntl)
        _check_options(ntl, self.loss_fn, options)
        if reduction not in functional.REDUCTIONS:
            raise ValueError(f"reduction={reduction!r}; use one of {functional.REDUCTIONS}.")
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.options = options

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        loss_weights: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self.loss_fn(
            logits, labels, self.table(),
            ignore_index=self.ignore_index, reduction=self.reduction, loss_weights=loss_weights,
            num_items_in_batch=num_items_in_batch, **self.options, **kwargs,
        )

    def count_items(self, labels: torch.Tensor) -> torch.Tensor:
        """What this loss averages over in ``labels`` (number tokens, or numbers)."""
        return functional.ITEM_COUNTERS[self.loss_name](labels, self.table(), self.ignore_index)

    def extra_repr(self) -> str:
        return f"ntl={self.loss_name!r}, reduction={self.reduction!r}, options={self.options}"


class _CombinedLoss(nn.Module):
    """What `CrossEntropyWithNTL` and `LinearCrossEntropyWithNTL` share: the NTL, λ, the
    reduction, the item counts."""

    def __init__(self, vocab: NumberVocab, ntl: str, lam: float, *, reduction: str,
                 ignore_index: int, ntl_options: dict[str, Any]) -> None:
        super().__init__()
        lam = check_lam(lam)
        if reduction not in functional.REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not supported; use one of "
                             f"{functional.REDUCTIONS}.")
        self.ntl = NumberTokenLoss(vocab, ntl, ignore_index=ignore_index, **ntl_options)
        self.lam = lam
        self.reduction = reduction
        self.ignore_index = ignore_index

    @property
    def vocab_size(self) -> int:
        return self.ntl.vocab_size

    def count_items(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE items, NTL items) in ``labels``, to be summed over an accumulated batch."""
        return (labels != self.ignore_index).sum(), self.ntl.count_items(labels)

    def loss_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `cross_entropy_with_ntl` / `linear_cross_entropy_with_ntl`
        this module stands for (the vocabulary is `table`)."""
        return dict(ntl=self.ntl.loss_name, lam=self.lam, ignore_index=self.ignore_index,
                    reduction=self.reduction, **self.ntl.options)

    def table(self) -> NumberTable:
        """The number tables, on the module's device."""
        return self.ntl.table()

    def extra_repr(self) -> str:
        return f"lam={self.lam}, reduction={self.reduction!r}"


class CrossEntropyWithNTL(_CombinedLoss):
    r"""``CE + lam·NTL`` on logits, returning ``LossOutput(total, ce, ntl)``.

    ``ce`` is the token cross-entropy over the non-ignored labels, ``ntl`` the Number Token Loss
    (`NumberTokenLoss`) over the number-target labels, ``total = ce + lam·ntl``. Runs the
    single-pass kernel of `ntl.losses.fused` (CE, number probabilities and NTL from one
    softmax, the logits' gradient made once: about the cost of CE alone); ``number-level`` and
    soft targets run the plain autograd path.

    Args:
        vocab: the tokenizer's `NumberVocab`.
        ntl: the NTL variant (``"was"``, ``"mse"``, ...; see `functional.LOSSES`).
        lam: weight λ ≥ 0 of the NTL term (paper: 0.3). ``lam=0`` trains plain CE, still
            logging NTL.
        reduction: ``"mean"`` (CE over non-ignored labels, NTL over number targets) |
            ``"sum"`` | ``"none"``; applies to both terms.
        ignore_index: label value skipped by both terms.
        fused: ``True`` (default) runs the single-pass kernel; ``False`` plain autograd
            (functional NTL + ``F.cross_entropy``), for ``retain_graph=True`` / higher-order
            gradients.
        **ntl_options: passed to the NTL function (``reweigh``, ``squash_factor``, ...).

    Call with ``(logits, labels, num_items_in_batch=..., num_number_items=...)``: the first is
    the count of non-ignored labels in the whole accumulated batch (CE's denominator), the
    second the count of NTL items (`count_items`). Without them, both are per-call means.

    Shape:
        - logits: (B, T, V) or (N, V), float32 / bfloat16 / float16 / float64.
        - labels: (B, T) or (N,), aligned with the logits (no shifting inside).
        - output: ``LossOutput(total, ce, ntl)``, each 0-d, or the labels' shape with
          ``reduction="none"``; float32 (float64 for float64 logits).

    Examples::

        >>> vocab = NumberVocab.from_vocab({str(d): d for d in range(10)} | {"a": 10, "b": 11})
        >>> loss = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)
        >>> logits = torch.randn(2, 5, 12, requires_grad=True)
        >>> labels = torch.tensor([[3, 7, 10, -100, 1], [11, 0, 9, 9, -100]])
        >>> out = loss(logits, labels)
        >>> out.total.backward()
        >>> out.ce, out.ntl  # for logging
    """

    def __init__(
        self,
        vocab: NumberVocab,
        ntl: str = "was",
        lam: float = 0.3,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        fused: bool = True,
        **ntl_options: Any,
    ) -> None:
        super().__init__(vocab, ntl, lam, reduction=reduction, ignore_index=ignore_index,
                         ntl_options=ntl_options)
        self.fused = bool(fused)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_items_in_batch: Any = None,
        num_number_items: Any = None,
    ) -> LossOutput:
        return cross_entropy_with_ntl(
            logits, labels, self.table(), num_items_in_batch=num_items_in_batch,
            num_number_items=num_number_items, fused=self.fused, **self.loss_kwargs())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fused={self.fused}"


class LinearCrossEntropyWithNTL(_CombinedLoss):
    r"""``CE + lam·NTL`` of ``logits = hidden @ weight.T (+ bias)`` without building the logits
    (`ntl.losses.linear.linear_cross_entropy_with_ntl`), returning ``LossOutput(total, ce,
    ntl)``. Same loss as `CrossEntropyWithNTL` on the materialized logits; for large
    vocabularies, where the (N, V) logits are the largest tensor of a training step.

    Args:
        vocab, ntl, lam, reduction, ignore_index, **ntl_options: as `CrossEntropyWithNTL`
            (``ntl`` in ``"was"``, ``"mse"``, ``"mae"``, ``"huber"`` runs logits-free; others
            materialize the logits).
        chunk_size: rows per chunk (default: about 2**25 logits per chunk, at least 256 rows).

    Call with ``(hidden, weight, labels, bias=None, num_items_in_batch=None,
    num_number_items=None)``.

    Shape:
        - hidden: (B, T, d) or (N, d); weight: (V, d) (``lm_head.weight``), same dtype;
          bias: (V,).
        - labels: (B, T) or (N,), aligned with ``hidden`` (no shifting inside).
        - output: ``LossOutput(total, ce, ntl)``, each 0-d, or the labels' shape with
          ``reduction="none"``; float32 (float64 for float64 inputs).

    Examples::

        >>> vocab = NumberVocab.from_vocab({str(d): d for d in range(10)} | {"a": 10, "b": 11})
        >>> loss = LinearCrossEntropyWithNTL(vocab, ntl="was", lam=0.3)
        >>> head = torch.nn.Linear(16, 12, bias=False)
        >>> hidden = torch.randn(2, 5, 16, requires_grad=True)
        >>> labels = torch.tensor([[3, 7, 10, -100, 1], [11, 0, 9, 9, -100]])
        >>> loss(hidden, head.weight, labels).total.backward()
    """

    def __init__(
        self,
        vocab: NumberVocab,
        ntl: str = "was",
        lam: float = 0.3,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        chunk_size: int | None = None,
        **ntl_options: Any,
    ) -> None:
        super().__init__(vocab, ntl, lam, reduction=reduction, ignore_index=ignore_index,
                         ntl_options=ntl_options)
        self.chunk_size = chunk_size

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        num_number_items: Any = None,
    ) -> LossOutput:
        return linear_cross_entropy_with_ntl(
            hidden, weight, labels, self.table(), bias=bias,
            num_items_in_batch=num_items_in_batch, num_number_items=num_number_items,
            chunk_size=self.chunk_size, **self.loss_kwargs())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}"
