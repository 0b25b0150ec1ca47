"""Logits-free CE + λ·NTL inside a Hugging Face causal LM's own forward.

For large vocabularies (Llama-3, Qwen2, Granite: 128k-152k tokens) the (B, T, V) logits are
the largest tensor of a training step. `apply_logits_free` patches one model instance so that
its ``forward``, called with ``labels`` in training mode, runs the decoder body for the final
hidden states and returns ``CE + λ·NTL`` computed by
`ntl.losses.fused.linear_cross_entropy_with_ntl` from those hidden states and
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
accumulated batch, `ntl.losses.fused.count_causal_items`) to the call for exact gradient
accumulation. `ntl.integrations.hf.NTLTrainer` does all of this with ``logits_free=True``.

Everything else keeps ordinary logits: evaluation (``model.eval()``), ``torch.no_grad()``,
generation and calls without ``labels`` run the model's original forward.

Supported: decoder-only ``*ForCausalLM`` models whose logits are ``lm_head(hidden)``, possibly
scaled by a constant (Llama, Qwen2, Mistral, Phi-3, GPT-2, Granite's ``logits_scaling``,
Cohere's ``logit_scale``). Refused with an error: logit soft-capping (Gemma 2), and an
``lm_head`` whose weight is sharded at forward time (DeepSpeed ZeRO-3, FSDP), because the loss
needs the whole (V, d) weight.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ntl.losses import fused
from ntl.losses.modules import CrossEntropyWithNTL

try:
    from transformers.utils import ModelOutput
except ImportError:  # pragma: no cover - the patch is for transformers models
    ModelOutput = object

__all__ = ["LogitsFreeOutput", "apply_logits_free", "remove_logits_free", "is_logits_free"]

_ATTR = "_ntl_logits_free"  # the instance attribute holding (original forward, settings)
# Config attributes that scale the logits by a constant: name -> (hidden -> scaled hidden).
_LOGIT_SCALES = {
    "logits_scaling": lambda h, s: h / s,  # Granite: logits = lm_head(h) / logits_scaling
    "logit_scale": lambda h, s: h * s,  # Cohere: logits = lm_head(h) * logit_scale
}
_SOFTCAPS = ("final_logit_softcapping", "logit_softcapping")
# Keyword arguments of a *ForCausalLM forward that the body does not take.
_HEAD_ONLY_KWARGS = ("logits_to_keep", "return_dict", "shift_labels")


@dataclass
class LogitsFreeOutput(ModelOutput):
    """What a patched model returns for a training call with labels.

    Attributes:
        loss: 0-d float32, ``ce + λ·ntl`` (as `ntl.CrossEntropyWithNTL`).
        ce: 0-d float32, the token cross-entropy.
        ntl: 0-d float32, the Number Token Loss.
        logits: always None: the point of this path.
        hidden_states, attentions: as the model's body returned them (when requested).
    """

    loss: torch.Tensor | None = None
    ce: torch.Tensor | None = None
    ntl: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Any = None
    attentions: Any = None


@dataclass(frozen=True)
class _Settings:
    loss: CrossEntropyWithNTL
    chunk_size: int | None
    original: Any


def is_logits_free(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the module a DDP wrapper holds) carries the patch."""
    return hasattr(getattr(model, "module", model), _ATTR)


def apply_logits_free(
    model: torch.nn.Module, loss: CrossEntropyWithNTL, *, chunk_size: int | None = None
) -> torch.nn.Module:
    """Make ``model``'s training forward compute ``CE + λ·NTL`` without logits (in place).

    Args:
        model: a decoder-only Hugging Face ``*ForCausalLM`` (unwrapped: patch before wrapping
            it in DDP).
        loss: the loss, ``CrossEntropyWithNTL(vocab, ntl="was"|"mse"|"mae"|"huber", lam=...)``
            with ``vocab.vocab_size == model.config.vocab_size``; ``number-level`` and soft
            targets have no logits-free form and are refused.
        chunk_size: rows per chunk of the loss (default: about 2**25 logits per chunk).

    Returns:
        ``model`` itself. The patched ``forward(..., labels=None, num_items_in_batch=None,
        num_number_items=None, **kwargs)`` returns a `LogitsFreeOutput` when called with
        ``labels`` (B, T), unshifted as for HF models, while ``model.training`` and grad mode
        are on; otherwise it is the original forward. `remove_logits_free` undoes the patch.
    """
    if not isinstance(loss, CrossEntropyWithNTL):
        raise TypeError(f"loss must be an ntl.CrossEntropyWithNTL, got {type(loss).__name__}.")
    if not loss.fused or loss.ntl.loss_name not in fused.FUSED_LOSSES or \
            "target_probs" in loss.ntl.options:
        raise ValueError(
            f"the logits-free path computes ntl in {fused.FUSED_LOSSES} with the fused kernel; "
            f"got ntl={loss.ntl.loss_name!r}, fused={loss.fused}, options "
            f"{sorted(loss.ntl.options)}. Train with materialized logits for this loss.")
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError("patch the model before wrapping it: apply_logits_free(model, loss), "
                        "then DistributedDataParallel(model).")
    _check_model(model, loss)
    if is_logits_free(model):
        remove_logits_free(model)
    head = model.get_output_embeddings()
    settings = _Settings(loss.to(head.weight.device), chunk_size, model.forward)
    setattr(model, _ATTR, settings)
    model.forward = _patched_forward(model, settings)
    return model


def remove_logits_free(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `apply_logits_free` (no-op on an unpatched model)."""
    settings = model.__dict__.pop(_ATTR, None)
    if settings is not None:
        model.__dict__.pop("forward", None)  # the class's forward shows again
    return model


def _check_model(model: torch.nn.Module, loss: CrossEntropyWithNTL) -> None:
    """Raise if ``model`` is not a decoder-only LM whose logits are a scaled ``lm_head``."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        raise TypeError(f"{name}: the logits-free patch is for decoder-only *ForCausalLM models "
                        "(an encoder-decoder keeps materialized logits).")
    for attr in _SOFTCAPS:
        if getattr(config, attr, None):
            raise NotImplementedError(
                f"{name} soft-caps its logits ({attr}={getattr(config, attr)}): tanh capping "
                "is not a linear map of hidden @ W.T, so the logits-free loss would differ. "
                "Train this model with materialized logits.")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{name} has no nn.Linear output embedding (lm_head), got "
                        f"{type(head).__name__}.")
    if _body(model) is None:
        raise TypeError(f"{name} has no decoder body at model.{model.base_model_prefix}.")
    if head.out_features != loss.vocab_size:
        raise ValueError(f"{name}'s lm_head has {head.out_features} outputs but the loss's "
                         f"NumberVocab has vocab_size={loss.vocab_size}; build it with "
                         "vocab_size=model.config.vocab_size.")


def _body(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder body (``model.model`` for Llama-likes, ``model.transformer`` for GPT-2)."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    return body if isinstance(body, torch.nn.Module) and body is not model else None


def _full_weight(head: torch.nn.Linear) -> torch.Tensor:
    """``head.weight`` as a whole (V, d) tensor, or an error saying why it is not one."""
    weight = head.weight
    why = None
    if hasattr(weight, "ds_id") or hasattr(weight, "ds_shape"):
        why = "DeepSpeed ZeRO-3 partitions it"
    elif type(weight).__name__ == "DTensor" or hasattr(weight, "_local_tensor"):
        why = "it is a DTensor (FSDP2 / tensor parallel)"
    elif weight.dim() != 2 or tuple(weight.shape) != (head.out_features, head.in_features):
        why = f"it has shape {tuple(weight.shape)} (an FSDP shard?)"
    if why is not None:
        raise RuntimeError(
            f"logits-free CE+NTL needs the whole lm_head weight ({head.out_features}, "
            f"{head.in_features}) inside the model's forward, but {why}. Train with DDP or "
            "DeepSpeed ZeRO-1/2 (lm_head replicated), or with logits_free=False.")
    return weight


def _patched_forward(model: torch.nn.Module, settings: _Settings):
    original = settings.original

    @functools.wraps(original)
    def forward(*args: Any, labels: torch.Tensor | None = None,
                num_items_in_batch: Any = None, num_number_items: Any = None, **kwargs: Any):
        if labels is None or not (model.training and torch.is_grad_enabled()):
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original(*args, labels=labels, **kwargs)
        return _logits_free_loss(model, settings, args, kwargs, labels, num_items_in_batch,
                                 num_number_items)

    return forward


def _logits_free_loss(model, settings: _Settings, args: tuple, kwargs: dict, labels, n_ce,
                      n_ntl) -> LogitsFreeOutput:
    if len(args) > 1:
        raise TypeError("call the patched model with input_ids as its only positional "
                        "argument and the rest as keywords.")
    if args:
        kwargs["input_ids"] = args[0]
    for key in _HEAD_ONLY_KWARGS:
        kwargs.pop(key, None)
    kwargs.setdefault("use_cache", False)
    out = _body(model)(**kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    for attr, apply in _LOGIT_SCALES.items():
        value = getattr(model.config, attr, None)
        if value not in (None, 1, 1.0):
            hidden = apply(hidden, value)
    head = model.get_output_embeddings()
    weight = _full_weight(head)
    loss = settings.loss
    shifted = fused.shift_labels(labels, loss.ignore_index)
    # The loss kernel runs its own precision plan (float32 math, logits rounded to the
    # weight's dtype per chunk); autocast must not recast its matmuls.
    with torch.autocast(hidden.device.type, enabled=False):
        res = fused.linear_cross_entropy_with_ntl(
            hidden.to(weight.dtype), weight, shifted, loss.ntl.table(), bias=head.bias,
            ntl=loss.ntl.loss_name, lam=loss.lam, ignore_index=loss.ignore_index,
            num_items_in_batch=n_ce, num_number_items=n_ntl, chunk_size=settings.chunk_size,
            **loss.ntl.options)
    return LogitsFreeOutput(loss=res.total, ce=res.ce, ntl=res.ntl,
                            hidden_states=getattr(out, "hidden_states", None),
                            attentions=getattr(out, "attentions", None))
