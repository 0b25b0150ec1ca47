"""CE + λ·NTL of a Hugging Face decoder-only LM from its final hidden states (no logits).

One helper for every logits-free caller: the label shift (`shift_labels`, as HF's
``ForCausalLMLoss``), the item counts of an accumulated batch (`count_causal_items`), the parts of
a ``*ForCausalLM`` the loss needs (`decoder_body`, `output_head`, `hidden_for_head`) and the loss
itself (`loss_from_hidden`). `causal_lm_loss` runs a model's body and that loss in one call;
`ntl.integrations.logits_free.apply_logits_free` runs the same loss inside the model's forward.

Supported: models whose logits are ``lm_head(hidden)``, possibly scaled by a constant (Llama,
Qwen2, Mistral, Phi-3, GPT-2, Granite's ``logits_scaling``, Cohere's ``logit_scale``), with the
head optionally wrapped by PEFT's ``modules_to_save``. Refused with an error: logit soft-capping
(Gemma 2), a LoRA adapter on ``lm_head``, and a head weight sharded at forward time (DeepSpeed
ZeRO-3, FSDP): the loss needs the whole (V, d) weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ntl.losses import functional
from ntl.losses.combined import LossOutput
from ntl.losses.linear import linear_cross_entropy_with_ntl
from ntl.losses.modules import CrossEntropyWithNTL, LinearCrossEntropyWithNTL
from ntl.numbers import NumberTable, NumberVocab

__all__ = [
    "causal_lm_loss",
    "count_causal_items",
    "decoder_body",
    "hidden_for_head",
    "loss_from_hidden",
    "output_head",
    "shift_labels",
]

# Config attributes that scale the logits by a constant: name -> (hidden, s) -> scaled hidden.
_LOGIT_SCALES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "logits_scaling": lambda h, s: h / s,  # Granite: logits = lm_head(h) / logits_scaling
    "logit_scale": lambda h, s: h * s,  # Cohere: logits = lm_head(h) * logit_scale
}
_SOFTCAPS = ("final_logit_softcapping", "logit_softcapping")

CombinedLoss = CrossEntropyWithNTL | LinearCrossEntropyWithNTL


# ---------------------------------------------------------------------- labels and counts
def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Causal-LM targets aligned with the logits: ``out[..., t] = labels[..., t + 1]``, and
    ``ignore_index`` at the last position (as HF's ``ForCausalLMLoss``). Shifting the labels
    instead of slicing the logits avoids copying the (B, T, V) logits."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


_shift = shift_labels  # for functions whose `shift_labels` argument hides the name


def count_causal_items(
    labels: torch.Tensor | None,
    vocab: NumberVocab | NumberTable,
    ignore_index: int = -100,
    *,
    shifted: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE items, NTL items) of unshifted causal-LM ``labels``: the non-ignored and the
    number-token targets after `shift_labels` (or of ``shifted``, targets already aligned, when
    given). Sum them over micro-batches (and processes)."""
    targets = shifted if shifted is not None else shift_labels(labels, ignore_index)
    return (targets != ignore_index).sum(), functional.count_number_targets(
        targets, vocab, ignore_index)


# ---------------------------------------------------------------------- the model's parts
def decoder_body(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder body of a ``*ForCausalLM``: ``model.<base_model_prefix>`` (``model.model``
    for Llama-likes, ``model.transformer`` for GPT-2), else ``model.get_decoder()``."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    if isinstance(body, torch.nn.Module) and body is not model:
        return body
    get_decoder = getattr(model, "get_decoder", None)
    body = get_decoder() if callable(get_decoder) else None
    return body if isinstance(body, torch.nn.Module) and body is not model else None


def output_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The ``nn.Linear`` that makes the logits: ``model.get_output_embeddings()``, unwrapped from
    PEFT's ``ModulesToSaveWrapper`` to the copy its forward would call (the active adapter's
    trained copy, or the original when adapters are disabled)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if hasattr(head, "modules_to_save") and hasattr(head, "original_module"):
        active = list(getattr(head, "active_adapters", []))
        copies = head.modules_to_save
        if getattr(head, "disable_adapters", False) or not active or \
                any(name not in copies for name in active):
            head = head.original_module
        else:
            head = copies[active[0]]
    if not isinstance(head, torch.nn.Linear):
        what = type(head).__name__
        hint = (" A LoRA adapter on lm_head changes the logits in a way the logits-free loss "
                "does not compute: train lm_head with modules_to_save, or leave it out of "
                "target_modules." if hasattr(head, "base_layer") else "")
        raise TypeError(f"{type(model).__name__} has no nn.Linear output embedding (lm_head), "
                        f"got {what}.{hint}")
    return head


def full_weight(head: torch.nn.Linear) -> torch.Tensor:
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


def check_linear_logits(model: torch.nn.Module) -> None:
    """Raise unless ``model``'s logits are a (scaled) linear map of its hidden states."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        raise TypeError(f"{name}: the logits-free loss is for decoder-only *ForCausalLM models "
                        "(an encoder-decoder keeps materialized logits).")
    for attr in _SOFTCAPS:
        if getattr(config, attr, None):
            raise NotImplementedError(
                f"{name} soft-caps its logits ({attr}={getattr(config, attr)}): tanh capping "
                "is not a linear map of hidden @ W.T, so the logits-free loss would differ. "
                "Train this model with materialized logits.")
    output_head(model)
    if decoder_body(model) is None:
        raise TypeError(f"{name} has no decoder body at model."
                        f"{getattr(model, 'base_model_prefix', '?')} or model.get_decoder().")


def hidden_for_head(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``hidden`` scaled so that ``output_head(model)(result)`` is the model's logits (Granite's
    ``logits_scaling``, Cohere's ``logit_scale``; unchanged for other models)."""
    for attr, apply in _LOGIT_SCALES.items():
        value = getattr(model.config, attr, None)
        if value not in (None, 1, 1.0):
            hidden = apply(hidden, value)
    return hidden


# ---------------------------------------------------------------------- the loss
def loss_from_hidden(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    loss: CombinedLoss,
    *,
    labels: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: Any = None,
    num_number_items: Any = None,
    chunk_size: int | None = None,
) -> LossOutput:
    """``loss`` (CE + λ·NTL) of ``model``'s logits, from its final hidden states (B, T, d),
    without building the logits.

    The targets are ``shift_labels`` when given (already aligned: position t predicts
    ``shift_labels[t]``, as HF models take them), else `shift_labels` of ``labels``
    (unshifted, as passed to an HF model). ``chunk_size`` defaults to ``loss.chunk_size`` for a
    `LinearCrossEntropyWithNTL`.
    """
    if shift_labels is None:
        if labels is None:
            raise ValueError("loss_from_hidden needs labels (unshifted) or shift_labels.")
        shift_labels = _shift(labels, loss.ignore_index)
    if chunk_size is None:
        chunk_size = getattr(loss, "chunk_size", None)
    head = output_head(model)
    weight = full_weight(head)
    hidden = hidden_for_head(model, hidden)
    # The loss kernel runs its own precision plan (float32 math, logits rounded to the weight's
    # dtype per chunk); autocast must not recast its matmuls.
    with torch.autocast(hidden.device.type, enabled=False):
        return linear_cross_entropy_with_ntl(
            hidden.to(weight.dtype), weight, shift_labels.to(hidden.device), loss.table(),
            bias=head.bias, num_items_in_batch=num_items_in_batch,
            num_number_items=num_number_items, chunk_size=chunk_size, **loss.loss_kwargs())


def causal_lm_loss(
    model: Any,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None,
    loss: CombinedLoss | NumberVocab,
    *,
    attention_mask: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: Any = None,
    num_number_items: Any = None,
    chunk_size: int | None = None,
    **loss_options: Any,
) -> LossOutput:
    """CE + λ·NTL of a Hugging Face decoder-only LM without materializing its logits.

    Runs the model body (`decoder_body`) for the last hidden states and computes the loss with
    `loss_from_hidden` (the labels shifted as HF's ``ForCausalLMLoss`` does, or the given
    ``shift_labels``). Call it on the model itself, not on the module inside a
    ``DistributedDataParallel`` wrapper: that would run the body behind DDP's back. For training
    (DDP included) use `ntl.integrations.logits_free.apply_logits_free`, which computes the same
    loss inside the model's own forward.

    Args:
        model: a ``*ForCausalLM`` (Llama, Qwen2, Mistral, GPT-2-style ``transformer`` body...).
        input_ids: int64 (B, T).
        labels: int64 (B, T), unshifted (``labels = input_ids`` with prompt / padding set to
            ``ignore_index``), as passed to the HF model; None when ``shift_labels`` is given.
        loss: a `CrossEntropyWithNTL` / `LinearCrossEntropyWithNTL`, or a `NumberVocab` with the
            loss's keywords in ``loss_options`` (``ntl="was"``, ``lam=0.3``, ``ignore_index``,
            ``reweigh``, ...).
        attention_mask: optional (B, T).
        shift_labels: optional (B, T) targets already aligned with the positions.
        num_items_in_batch: count of non-ignored *shifted* labels of the accumulated batch
            (`count_causal_items`), as HF Trainer passes it.
        num_number_items: count of number targets among the shifted labels.

    Shape:
        - output: ``LossOutput(total, ce, ntl)``, 0-d float32 tensors (float64 for a float64
          model).
    """
    if not isinstance(loss, (CrossEntropyWithNTL, LinearCrossEntropyWithNTL)):
        if not isinstance(loss, NumberVocab):
            raise TypeError(f"loss must be a CrossEntropyWithNTL, LinearCrossEntropyWithNTL or "
                            f"NumberVocab, got {type(loss).__name__}.")
        loss = LinearCrossEntropyWithNTL(loss, **loss_options)
    elif loss_options:
        raise TypeError(f"unexpected options {sorted(loss_options)}: the loss module "
                        f"{type(loss).__name__} already holds its options.")
    check_linear_logits(model)
    head = output_head(model)
    loss = loss.to(head.weight.device)
    out = decoder_body(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return loss_from_hidden(model, hidden, loss, labels=labels, shift_labels=shift_labels,
                            num_items_in_batch=num_items_in_batch,
                            num_number_items=num_number_items, chunk_size=chunk_size)
