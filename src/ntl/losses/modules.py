"""`nn.Module` wrappers of the Number Token Loss.

The lookup tables are registered buffers: ``.to(device)`` moves them once, and they are saved
in ``state_dict``. The math lives in `ntl.losses.functional`.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
from torch import nn

from ntl.losses import functional, fused
from ntl.numbers import NumberTable, NumberVocab

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
_NOT_OPTIONS = frozenset({"logits", "labels", "vocab", "loss", "ignore_index", "reduction",
                          "num_items_in_batch"})


def _check_options(loss: str, loss_fn: Any, options: dict[str, Any]) -> None:
    """Raise TypeError at construction for an option ``loss_fn`` does not take."""
    accepted = sorted(set(inspect.signature(loss_fn).parameters) - _NOT_OPTIONS)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"unexpected option(s) {', '.join(map(repr, unknown))} for the {loss!r} loss; "
            f"it takes {', '.join(accepted)}."
        )


class NumberTokenLoss(_NumberTableModule):
    """NTL as a module: ``NumberTokenLoss(vocab, loss="was")(logits, labels)``.

    Args:
        vocab: the tokenizer's `NumberVocab` (``vocab_size`` = the model's logits size).
        loss: ``"was"`` (NTL-WAS, default), ``"mse"``, ``"mae"``, ``"huber"`` or
            ``"number-level"`` (see `functional.LOSSES`).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        ignore_index: label value that is skipped (default -100).
        **options: passed to the loss function (``reweigh``, ``squash_factor``, ``huber_delta``, ...).

    Shapes: logits (B, T, V) or (N, V); labels (B, T) or (N,); returns a 0-d tensor, or the
    labels' shape with ``reduction="none"``, in float32 (float64 for float64 logits).
    """

    def __init__(
        self,
        vocab: NumberVocab,
        loss: str = "was",
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        **options: Any,
    ) -> None:
        super().__init__(vocab)
        self.loss_name = loss
        self.loss_fn = functional.get_loss(loss)
        _check_options(loss, self.loss_fn, options)
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
        return f"loss={self.loss_name!r}, reduction={self.reduction!r}, options={self.options}"


class LossOutput(NamedTuple):
    """The combined loss and its parts, for logging. All 0-d tensors."""

    total: torch.Tensor
    ce: torch.Tensor
    ntl: torch.Tensor


class CrossEntropyWithNTL(nn.Module):
    """``CE + lam·NTL``, returning ``LossOutput(total, ce, ntl)``.

    Args:
        vocab: the tokenizer's `NumberVocab`.
        ntl: the NTL variant (``"was"``, ``"mse"``, ...; see `functional.LOSSES`).
        lam: weight λ of the NTL term (paper: 0.3). ``lam=0`` trains plain CE, still logging NTL.
        ignore_index: label value skipped by both terms.
        fused: ``True`` (default) runs the single-pass kernel below; ``False`` plain autograd
            (functional NTL + ``F.cross_entropy``), for ``retain_graph=True`` / higher-order
            gradients.
        **ntl_options: passed to the NTL function (``reweigh``, ``squash_factor``, ...).

    Call with ``(logits, labels, num_items_in_batch=..., num_number_items=...)``: the first is
    the count of non-ignored labels in the whole accumulated batch (CE's denominator), the second
    the count of NTL items (`NumberTokenLoss.count_items`). Without them, both are per-call means.

    Runs the single-pass kernel of `ntl.losses.fused` (CE, number probabilities and NTL from one
    softmax, logits gradient made once: about the cost of CE alone); ``number-level`` falls back
    to the functional path. The outputs are float32 (float64 for float64 logits).
    """

    def __init__(
        self,
        vocab: NumberVocab,
        ntl: str = "was",
        lam: float = 0.3,
        *,
        ignore_index: int = -100,
        fused: bool = True,
        **ntl_options: Any,
    ) -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}.")
        self.ntl = NumberTokenLoss(vocab, ntl, ignore_index=ignore_index, **ntl_options)
        self.lam = lam
        self.ignore_index = ignore_index
        self.fused = bool(fused)

    @property
    def vocab_size(self) -> int:
        return self.ntl.vocab_size

    def count_items(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE items, NTL items) in ``labels``, to be summed over an accumulated batch."""
        return (labels != self.ignore_index).sum(), self.ntl.count_items(labels)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_items_in_batch: Any = None,
        num_number_items: Any = None,
    ) -> LossOutput:
        out = fused.cross_entropy_with_ntl(
            logits, labels, self.ntl.table(), ntl=self.ntl.loss_name, lam=self.lam,
            ignore_index=self.ignore_index, num_items_in_batch=num_items_in_batch,
            num_number_items=num_number_items, fused=self.fused, **self.ntl.options,
        )
        return LossOutput(*out)
