"""Logits-free CE + λ·NTL inside a Hugging Face causal LM's own forward.

For large vocabularies (Llama-3, Qwen2, Granite: 128k-152k tokens) the (B, T, V) logits are
the largest tensor of a training step. `apply_logits_free` patches one model instance so that
its ``forward``, called with ``labels`` in training mode, runs the decoder body for the final
hidden states and returns ``CE + λ·NTL`` computed by
`ntl.losses.linear.linear_cross_entropy_with_ntl` from those hidden states and
``lm_head.weight``: the logits are never built. This is how Liger-Kernel
(``apply_liger_kernel_to_*``) and Cut Cross-Entropy (``cce_patch``) hand hidden states to
their losses: the loss runs *inside* the model's forward, so a model wrapped by
``DistributedDataParallel`` is still called through the wrapper and its gradient hooks fire.

A plain PyTorch loop::

    from ntl import CrossEntropyWithNTL, NumberVocab
    from ntl.integrations.logits_free import apply_logits_free

    vocab = NumberVocab.from_tokenizer(tok, vocab_size=model.config.vocab_size)
    apply_logits_free(model, CrossEntropyWithNTL(vocab, ntl="was", lam=0.3))
    model = DDP(model)                                   # optional, after patching
    out = model(input_ids=ids, attention_mask=mask, labels=labels)   # labels unshifted
    out.loss.backward()                                  # out.ce, out.ntl for logging; no logits

Pass ``num_items_in_batch`` / ``num_number_items`` (the CE and NTL item counts of the whole
accumulated batch, `ntl.integrations.causal_lm.count_causal_items`) to the call for exact
gradient accumulation. `ntl.integrations.hf.NTLTrainer` does all of this with
``logits_free=True``. As HF's causal-LM loss, the patched forward takes ``shift_labels``
(targets already aligned with the positions, e.g. from a padding-free collator) in place of the
label shift, and returns a tuple under ``return_dict=False``.

Everything else keeps ordinary logits: evaluation (``model.eval()``), ``torch.no_grad()``,
generation and calls without ``labels`` run the model's original forward.

Supported and refused models: see `ntl.integrations.causal_lm` (the loss computed here is its
`loss_from_hidden`). A PEFT model is patched at its base model (``get_base_model()``); an
``lm_head`` in ``modules_to_save`` is used as PEFT's forward would use it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ntl.integrations.causal_lm import (
    check_linear_logits,
    decoder_body,
    loss_from_hidden,
    output_head,
)
from ntl.losses.combined import FUSED_LOSSES
from ntl.losses.modules import CrossEntropyWithNTL, LinearCrossEntropyWithNTL

try:
    from transformers.utils import ModelOutput
except ImportError:  # pragma: no cover - the patch is for transformers models
    ModelOutput = object

__all__ = ["LogitsFreeOutput", "apply_logits_free", "remove_logits_free", "is_logits_free"]

_ATTR = "_ntl_logits_free"  # the instance attribute holding (original forward, settings)
# Keyword arguments of a *ForCausalLM forward that the body does not take.
_HEAD_ONLY_KWARGS = ("logits_to_keep",)


@dataclass
class LogitsFreeOutput(ModelOutput):
    """What a patched model returns for a training call with labels.

    Attributes:
        loss: 0-d float32, ``ce + λ·ntl`` (as `ntl.CrossEntropyWithNTL`).
        ce: 0-d float32, the token cross-entropy.
        ntl: 0-d float32, the Number Token Loss.
        logits: always None: the point of this path.
        hidden_states, attentions: as the model's body returned them (when requested).

    With ``return_dict=False`` the patched forward returns ``to_tuple()``: ``(loss, ce, ntl,
    ...)`` without the None fields, loss first as in HF's tuples.
    """

    loss: torch.Tensor | None = None
    ce: torch.Tensor | None = None
    ntl: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Any = None
    attentions: Any = None


@dataclass(frozen=True)
class _Settings:
    loss: CrossEntropyWithNTL | LinearCrossEntropyWithNTL
    chunk_size: int | None
    original: Any


def _target(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose forward is patched: the model a DDP wrapper or a PEFT model holds."""
    model = getattr(model, "module", model)  # DDP / DataParallel
    get_base = getattr(model, "get_base_model", None)  # peft.PeftModel
    return get_base() if callable(get_base) else model


def is_logits_free(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the model a DDP wrapper or PEFT model holds) carries the patch."""
    return hasattr(_target(model), _ATTR)


def apply_logits_free(
    model: torch.nn.Module,
    loss: CrossEntropyWithNTL | LinearCrossEntropyWithNTL,
    *,
    chunk_size: int | None = None,
) -> torch.nn.Module:
    """Make ``model``'s training forward compute ``CE + λ·NTL`` without logits (in place).

    Args:
        model: a decoder-only Hugging Face ``*ForCausalLM``, or a PEFT model around one
            (unwrapped: patch before wrapping it in DDP).
        loss: the loss, ``CrossEntropyWithNTL(vocab, ntl="was"|"mse"|"mae"|"huber", lam=...)``
            (or its `LinearCrossEntropyWithNTL` twin) with ``vocab.vocab_size ==
            model.config.vocab_size``; ``number-level`` and soft targets have no logits-free
            form and are refused.
        chunk_size: rows per chunk of the loss (default: about 2**25 logits per chunk).

    Returns:
        ``model`` itself. The patched ``forward(..., labels=None, num_items_in_batch=None,
        num_number_items=None, shift_labels=None, return_dict=None, **kwargs)`` returns a
        `LogitsFreeOutput` when called with ``labels`` (B, T), unshifted as for HF models, or
        ``shift_labels`` while ``model.training`` and grad mode are on; otherwise it is the
        original forward. `remove_logits_free` undoes the patch.
    """
    if not isinstance(loss, (CrossEntropyWithNTL, LinearCrossEntropyWithNTL)):
        raise TypeError(f"loss must be an ntl.CrossEntropyWithNTL, got {type(loss).__name__}.")
    if not getattr(loss, "fused", True) or loss.ntl.loss_name not in FUSED_LOSSES or \
            "target_probs" in loss.ntl.options:
        raise ValueError(
            f"the logits-free path computes ntl in {FUSED_LOSSES} with the fused kernel; "
            f"got ntl={loss.ntl.loss_name!r}, fused={getattr(loss, 'fused', True)}, options "
            f"{sorted(loss.ntl.options)}. Train with materialized logits for this loss.")
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError("patch the model before wrapping it: apply_logits_free(model, loss), "
                        "then DistributedDataParallel(model).")
    target = _target(model)
    check_linear_logits(target)
    head = output_head(target)
    if head.out_features != loss.vocab_size:
        raise ValueError(f"{type(target).__name__}'s lm_head has {head.out_features} outputs but "
                         f"the loss's NumberVocab has vocab_size={loss.vocab_size}; build it "
                         "with vocab_size=model.config.vocab_size.")
    if is_logits_free(target):
        remove_logits_free(target)
    settings = _Settings(loss.to(head.weight.device), chunk_size, target.forward)
    setattr(target, _ATTR, settings)
    target.forward = _patched_forward(target, settings)
    return model


def remove_logits_free(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `apply_logits_free` (no-op on an unpatched model)."""
    target = _target(model)
    settings = target.__dict__.pop(_ATTR, None)
    if settings is not None:
        target.__dict__.pop("forward", None)  # the class's forward shows again
    return model


def _patched_forward(model: torch.nn.Module, settings: _Settings):
    original = settings.original

    @functools.wraps(original)
    def forward(*args: Any, labels: torch.Tensor | None = None,
                num_items_in_batch: Any = None, num_number_items: Any = None, **kwargs: Any):
        has_targets = labels is not None or kwargs.get("shift_labels") is not None
        if not has_targets or not (model.training and torch.is_grad_enabled()):
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original(*args, labels=labels, **kwargs)
        return _logits_free_forward(model, settings, args, kwargs, labels, num_items_in_batch,
                                    num_number_items)

    return forward


def _logits_free_forward(model, settings: _Settings, args: tuple, kwargs: dict, labels, n_ce,
                         n_ntl):
    if len(args) > 1:
        raise TypeError("call the patched model with input_ids as its only positional "
                        "argument and the rest as keywords.")
    if args:
        kwargs["input_ids"] = args[0]
    shifted = kwargs.pop("shift_labels", None)
    return_dict = kwargs.pop("return_dict", None)
    if return_dict is None:  # as transformers' can_return_tuple
        return_dict = getattr(model.config, "return_dict", True)
    for key in _HEAD_ONLY_KWARGS:
        kwargs.pop(key, None)
    kwargs.setdefault("use_cache", False)
    out = decoder_body(model)(**kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    res = loss_from_hidden(model, hidden, settings.loss, labels=labels, shift_labels=shifted,
                           num_items_in_batch=n_ce, num_number_items=n_ntl,
                           chunk_size=settings.chunk_size)
    output = LogitsFreeOutput(loss=res.total, ce=res.ce, ntl=res.ntl,
                              hidden_states=getattr(out, "hidden_states", None),
                              attentions=getattr(out, "attentions", None))
    return output if return_dict else output.to_tuple()
