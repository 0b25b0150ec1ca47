"""Hugging Face ``transformers.Trainer`` glue for ``CE + λ·NTL``.

Two ways in, both for encoder-decoder (labels aligned with the decoder logits) and causal LMs
(``causal=True``: position ``t`` predicts ``labels[t + 1]``; the shift happens here):

1. **NTLTrainer** — a thin ``Trainer`` subclass (recommended). It counts the number targets of
   the whole accumulated batch next to Hugging Face's count of label tokens, so gradient
   accumulation (and multi-process training) reproduces the mean over number tokens of one big
   batch exactly, and it logs ``ce`` and ``ntl`` next to ``loss`` in ``state.log_history``::

       from ntl import CrossEntropyWithNTL, NumberVocab
       from ntl.integrations.hf import NTLTrainer

       vocab = NumberVocab.from_tokenizer(tok, vocab_size=model.config.vocab_size)
       trainer = NTLTrainer(model=model, args=args, train_dataset=ds, data_collator=collate,
                            ntl_loss=CrossEntropyWithNTL(vocab, ntl="was", lam=0.3))
       trainer.train()

   ``causal`` defaults to ``not model.config.is_encoder_decoder``. ``logits_free=True``
   (decoder-only models) computes the training loss from the final hidden states and
   ``lm_head.weight`` inside the model's forward, never building the (B, T, V) logits
   (`ntl.integrations.logits_free`); evaluation keeps ordinary logits.

2. **make_compute_loss_func** — a ``compute_loss_func`` for a plain ``Trainer`` (or any trainer
   that calls ``compute_loss_func(outputs, labels, num_items_in_batch=...)``)::

       loss_func = make_compute_loss_func(vocab, ntl="was", lam=0.3, causal=True)
       trainer = Trainer(..., compute_loss_func=loss_func, callbacks=[NTLLogCallback(loss_func)])

   CE is exact. A plain ``Trainer`` passes only the count of label tokens, so the NTL term of
   each micro-batch is its mean over its own number tokens weighted by its share of the batch's
   label tokens: exact without gradient accumulation, an approximation with it (exact when every
   micro-batch has the same share of number tokens). ``NTLTrainer`` is always exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ntl.integrations.causal_lm import shift_labels
from ntl.losses.modules import CrossEntropyWithNTL, LossOutput
from ntl.numbers import NumberVocab, vocab_size_hint

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Trainer, TrainerCallback
else:  # the classes below subclass these only when transformers is importable
    try:
        from transformers import Trainer, TrainerCallback
    except ImportError:  # pragma: no cover - the library part works without transformers
        Trainer = object
        TrainerCallback = object

__all__ = [
    "NTLLossFunc",
    "NTLTrainer",
    "NTLLogCallback",
    "make_compute_loss_func",
    "shift_labels",
    "logits_of",
    "decoder_inputs_from_labels",
]


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output: ``outputs["logits"]``, ``outputs[0]`` or the tensor itself."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) or hasattr(outputs, "keys"):
        if "logits" in outputs:
            return outputs["logits"]
    if isinstance(outputs, (tuple, list)) or hasattr(outputs, "to_tuple"):
        return outputs[0]
    raise TypeError(f"cannot find logits in model outputs of type {type(outputs).__name__}")


def decoder_inputs_from_labels(model: Any, labels: torch.Tensor) -> torch.Tensor:
    """Decoder input ids of an encoder-decoder for ``labels``: the labels shifted right behind
    ``decoder_start_token_id``, -100 replaced by the pad id (``model.prepare_decoder_input_ids_
    from_labels`` when the model has it)."""
    inner = getattr(model, "module", model)  # DDP / DataParallel wrappers
    prepare = getattr(inner, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        return prepare(labels=labels)
    config = inner.config
    start = config.decoder_start_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    if start is None:
        raise ValueError("the model config has no decoder_start_token_id; pass decoder_input_ids")
    shifted = F.pad(labels, (1, 0), value=start)[..., :-1]
    return shifted.masked_fill(shifted == -100, pad)


class NTLLossFunc:
    """A ``compute_loss_func`` computing ``CE + λ·NTL`` from model outputs and labels.

    Args:
        loss: the combined loss module (:class:`ntl.CrossEntropyWithNTL`).
        causal: shift labels by one (decoder-only LMs). ``False`` for encoder-decoders.

    Call: ``(outputs, labels, num_items_in_batch=None, num_number_items=None, shift_labels=None)
    -> total`` (0-d). ``outputs`` is a model output with ``logits`` (B, T, V); ``labels`` (B, T)
    unshifted, -100 = ignore; ``shift_labels`` (B, T), when given, are the targets already
    aligned with the logits (HF's convention, e.g. from a padding-free collator) and replace the
    shift. ``num_items_in_batch`` is the count of non-ignored (shifted, if causal) labels in the
    whole accumulated batch (what ``Trainer`` passes), ``num_number_items`` the NTL item count of
    the whole accumulated batch (what :class:`NTLTrainer` passes). When only the first is given,
    the NTL denominator is estimated from this micro-batch's share (see the module docstring).

    The parts of the last call (``last``) and the running sums of the training calls since the
    last :meth:`pop_means` are kept for logging. A call counts as training when the logits
    require grad.
    """

    def __init__(self, loss: CrossEntropyWithNTL, *, causal: bool) -> None:
        if not isinstance(loss, CrossEntropyWithNTL):
            raise TypeError(
                f"loss must be an ntl.CrossEntropyWithNTL, got {type(loss).__name__}; build it "
                "with CrossEntropyWithNTL(vocab, ntl='was', lam=0.3)"
            )
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be True (decoder-only) or False (seq2seq), got {causal!r}")
        self.loss = loss
        self.causal = causal
        self.last: LossOutput | None = None
        self._sums: torch.Tensor | None = None  # (ce, ntl) accumulated over training calls

    @property
    def ignore_index(self) -> int:
        return self.loss.ignore_index

    def align(self, labels: torch.Tensor, shifted: torch.Tensor | None = None) -> torch.Tensor:
        """Labels aligned with the logits: ``shifted`` when given, else ``labels`` shifted for
        causal LMs."""
        if shifted is not None:
            return shifted
        return shift_labels(labels, self.ignore_index) if self.causal else labels

    def count_items(
        self, labels: torch.Tensor, shifted: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(CE items, NTL items)`` of unshifted ``labels`` (after this glue's alignment), or
        of ``shifted`` targets when given."""
        return self.loss.count_items(self.align(labels, shifted))

    @property
    def running_sums(self) -> torch.Tensor | None:
        """``(ce, ntl)`` summed over the training calls since the last `pop_means`, or None."""
        return self._sums

    def record(self, out: LossOutput) -> None:
        """Keep the parts of a training call (computed elsewhere, e.g. logits-free) for logs."""
        parts = torch.stack([out.ce.detach().float(), out.ntl.detach().float()])
        self._sums = parts if self._sums is None else self._sums + parts.to(self._sums.device)
        self.last = LossOutput(out.total.detach(), out.ce.detach(), out.ntl.detach())

    def __call__(
        self,
        outputs: Any,
        labels: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None = None,
        num_number_items: torch.Tensor | int | None = None,
        shift_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if labels is None and shift_labels is None:
            raise ValueError(
                "NTL needs labels: the batch has no 'labels' (check the data collator and "
                "TrainingArguments.label_names)"
            )
        logits = logits_of(outputs)
        aligned = self.align(labels, shift_labels)
        if logits.shape[:-1] != aligned.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and labels {tuple(aligned.shape)} do not match: "
                "expected logits (B, T, V) with labels (B, T)"
            )
        if logits.shape[-1] != self.loss.vocab_size:
            raise ValueError(vocab_size_hint(logits.shape[-1], self.loss.vocab_size))
        if num_items_in_batch is not None and num_number_items is None:
            num_number_items = self.estimate_number_items(aligned, num_items_in_batch)
        out = self.loss(
            logits,
            aligned,
            num_items_in_batch=num_items_in_batch,
            num_number_items=num_number_items,
        )
        self.last = LossOutput(out.total.detach(), out.ce.detach(), out.ntl.detach())
        if logits.requires_grad:
            self.record(out)
        return out.total

    def estimate_number_items(
        self, aligned: torch.Tensor, num_items_in_batch: torch.Tensor | int
    ) -> torch.Tensor:
        """The NTL item count of the accumulated batch, estimated from this micro-batch's
        ``aligned`` labels and the batch's CE item count (see the module docstring)."""
        local_items, local_numbers = self.loss.count_items(aligned)
        total = torch.as_tensor(num_items_in_batch, device=aligned.device, dtype=torch.float32)
        share = total / local_items.float().clamp_min(1)
        return (local_numbers.float() * share).clamp_min(1)

    def pop_means(
        self, steps: int, combine: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """``{"ce", "ntl"}`` summed since the last call, divided by ``steps`` optimizer steps
        (the same averaging as the Trainer's ``loss``); resets the sums. ``{}`` if none.
        ``combine`` maps the (2,) sums first (e.g. averaging them over processes)."""
        if self._sums is None or steps <= 0:
            return {}
        sums = self._sums if combine is None else combine(self._sums)
        ce, ntl = (sums / steps).tolist()
        self._sums = None
        return {"ce": ce, "ntl": ntl}

    def reset(self) -> None:
        """Forget the running sums (e.g. at the start of training)."""
        self._sums = None


def make_compute_loss_func(
    vocab: NumberVocab,
    ntl: str = "was",
    lam: float = 0.3,
    *,
    causal: bool,
    ignore_index: int = -100,
    **ntl_options: Any,
) -> NTLLossFunc:
    """``compute_loss_func`` for ``transformers.Trainer``: ``CE + lam·NTL-<ntl>``.

    Args:
        vocab: number vocabulary with ``vocab_size == model.config.vocab_size``.
        ntl: NTL variant, a name from ``ntl.losses.functional.LOSSES`` (``"was"``, ``"mse"``...).
        lam: weight of the NTL term (``0`` = plain CE, NTL still logged).
        causal: ``True`` for decoder-only LMs (labels shifted by one here), ``False`` for
            encoder-decoders. Required: a wrong alignment trains silently on the wrong targets.
        ignore_index: label value to skip.
        **ntl_options: passed to the NTL function (``reweigh``, ``squash_factor``, ...).
    """
    return NTLLossFunc(
        CrossEntropyWithNTL(vocab, ntl=ntl, lam=lam, ignore_index=ignore_index, **ntl_options),
        causal=causal,
    )


class NTLLogCallback(TrainerCallback):
    """Adds ``ce`` and ``ntl`` (averaged over the logging interval) to every training log of a
    plain ``Trainer`` that uses ``loss_func`` as its ``compute_loss_func``. Single process."""

    def __init__(self, loss_func: NTLLossFunc) -> None:
        self.loss_func = loss_func
        self._last_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
        self._last_step = state.global_step
        self.loss_func.reset()

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
        if logs is None or "loss" not in logs:
            return
        last = self._last_step if self._last_step is not None else 0
        parts = self.loss_func.pop_means(state.global_step - last)
        self._last_step = state.global_step
        logs.update(parts)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(parts)


class NTLTrainer(Trainer):
    """``transformers.Trainer`` whose loss is ``CE + λ·NTL``, exact under gradient accumulation.

    Args:
        *args, **kwargs: as for ``Trainer`` (``compute_loss_func`` must not be given).
        ntl_loss: the loss, ``CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)``.
        causal: shift labels for decoder-only models; default ``not
            model.config.is_encoder_decoder``.
        logits_free: decoder-only models only. Training steps compute ``CE + λ·NTL`` inside
            the model's forward from its final hidden states and ``lm_head.weight``
            (`ntl.integrations.logits_free.apply_logits_free` patches the model), so the
            (B, T, V) logits are never built; the model is still called through its DDP
            wrapper. Evaluation and generation keep ordinary logits. Needs an ``ntl`` with a
            fused kernel (``was``/``mse``/``mae``/``huber``) and the whole ``lm_head`` weight
            in each process: refused under FSDP and DeepSpeed ZeRO-3.
        logits_free_chunk_size: rows per chunk of the logits-free loss (default: automatic).

    What it changes, and nothing else:

    - ``get_batch_samples`` also counts the NTL items (number-target tokens, or numbers for
      ``number-level``) of the whole accumulated batch, summed over processes, and
      ``compute_loss`` hands that count to the loss, so the NTL term is the mean over the
      accumulated batch's number tokens (as ``num_items_in_batch`` does for CE). Under DDP with
      ``average_tokens_across_devices=True`` (the default) both counts are global and
      ``Trainer.compute_loss`` multiplies the loss by the world size, so N processes train
      exactly as one process on the global batch (tests/test_ddp.py); with ``False`` each
      process divides by its own counts, as the Trainer does for CE;
    - label-token counting follows ``causal`` (``labels[..., 1:]`` for causal LMs);
    - ``log`` adds ``ce`` and ``ntl``, averaged over the logging interval and the processes like
      ``loss`` (so ``loss == ce + λ·ntl``);
    - evaluation adds ``eval_ce`` and ``eval_ntl``, averaged over batches and processes like
      ``eval_loss`` (so ``eval_loss == eval_ce + λ·eval_ntl``).

    ``Seq2SeqTrainer`` users can mix it in: ``class T(NTLTrainer, Seq2SeqTrainer): pass``.
    """

    def __init__(
        self,
        *args: Any,
        ntl_loss: CrossEntropyWithNTL,
        causal: bool | None = None,
        logits_free: bool = False,
        logits_free_chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if Trainer is object:  # pragma: no cover
            from ntl._optional import MissingDependency, missing_message

            raise MissingDependency(missing_message("transformers", "NTLTrainer"))
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("NTLTrainer computes the loss itself; do not pass compute_loss_func")
        super().__init__(*args, **kwargs)
        if causal is None:
            if self.model is None:
                raise ValueError("pass causal=True/False when the Trainer has no model yet")
            causal = not bool(getattr(self.model.config, "is_encoder_decoder", False))
        if isinstance(ntl_loss, torch.nn.Module):
            ntl_loss = ntl_loss.to(self.args.device)
        self.ntl_loss_func = NTLLossFunc(ntl_loss, causal=causal)
        self.causal = causal
        # Read by Trainer._get_num_items_in_batch: count CE items over labels[..., 1:] for causal
        # LMs, all labels for seq2seq, whatever the model's loss_type says.
        self._loss_shifts_labels = causal
        self.compute_loss_func = self._compute_loss_with_counts
        self._num_number_items: torch.Tensor | None = None
        self._current_number_items: torch.Tensor | None = None
        self._current_shift_labels: torch.Tensor | None = None
        self._ntl_last_logged_step: int | None = None
        self._ntl_eval_parts: list[torch.Tensor] | None = None  # (ce·rows, ntl·rows, rows) per eval batch
        self.logits_free = bool(logits_free)
        if self.logits_free:
            self._setup_logits_free(logits_free_chunk_size)

    def _setup_logits_free(self, chunk_size: int | None) -> None:
        from ntl.integrations.logits_free import apply_logits_free

        if not self.causal:
            raise ValueError("logits_free=True is for decoder-only models (causal=True); an "
                             "encoder-decoder trains with materialized logits.")
        if self.model is None:
            raise ValueError("logits_free=True patches the model's forward: pass model=..., "
                             "not model_init.")
        sharded = None
        if getattr(self, "is_fsdp_enabled", False):
            sharded = "FSDP"
        elif getattr(self, "is_deepspeed_enabled", False):
            plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
            if getattr(plugin, "zero_stage", None) == 3:
                sharded = "DeepSpeed ZeRO-3"
        if sharded:
            raise ValueError(
                f"logits_free=True needs the whole lm_head weight inside the model's forward, "
                f"but {sharded} shards it. Use DDP or DeepSpeed ZeRO-1/2, or logits_free=False "
                "(materialized logits, fused CE+NTL).")
        apply_logits_free(self.model, self.ntl_loss_func.loss, chunk_size=chunk_size)

    # -- counting -----------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """As ``Trainer.get_batch_samples``, plus the NTL item count of the fetched batches."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._num_number_items = self._count_number_items(batch_samples, device)
        return batch_samples, num_items_in_batch

    def _count_number_items(self, batch_samples: list, device: Any) -> torch.Tensor | None:
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        total = None
        for batch in batch_samples:
            labels = batch.get("labels")
            if not isinstance(labels, torch.Tensor):
                return None
            _, n = self.ntl_loss_func.count_items(labels, batch.get("shift_labels"))
            total = n if total is None else total + n.to(total.device)
        total = total.to(device)
        if self.args.average_tokens_across_devices:
            if self.args.world_size > 1:
                total = self.accelerator.gather(total).sum()
        elif self.args.n_gpu > 1:
            total = total // self.args.n_gpu
        divisor = 1
        for name in ("get_tp_size", "get_cp_size", "get_sp_size"):
            fn = getattr(self, name, None)
            divisor *= int(fn()) if callable(fn) else 1
        return total / divisor if divisor != 1 else total

    # -- loss -------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``Trainer.compute_loss`` with the NTL item count of the current accumulated batch."""
        if num_items_in_batch is None:
            self._current_number_items = None
        elif model.training:
            self._current_number_items = self._num_number_items
            if self._ntl_last_logged_step is None:
                self._ntl_last_logged_step = self.state.global_step
        else:  # evaluation: one batch is the whole "accumulated batch"
            labels = inputs.get("labels")
            self._current_number_items = (
                self.ntl_loss_func.count_items(labels, inputs.get("shift_labels"))[1]
                if labels is not None else None
            )
        self._current_shift_labels = inputs.get("shift_labels")
        if self.logits_free and model.training and "labels" in inputs:
            return self._logits_free_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self.causal and "labels" in inputs and "decoder_input_ids" not in inputs:
            # The Trainer pops the labels before the forward when a compute_loss_func is set, so
            # an encoder-decoder would get no decoder inputs: build them as the model would.
            inputs = {**inputs, "decoder_input_ids": decoder_inputs_from_labels(model, inputs["labels"])}
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def _logits_free_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """A training loss computed inside the (patched, possibly wrapped) model's forward."""
        n_ntl = self._current_number_items if num_items_in_batch is not None else None
        if num_items_in_batch is not None and n_ntl is None:  # as NTLLossFunc does
            n_ntl = self.ntl_loss_func.estimate_number_items(
                self.ntl_loss_func.align(inputs["labels"], inputs.get("shift_labels")),
                num_items_in_batch)
        outputs = model(**inputs, num_items_in_batch=num_items_in_batch, num_number_items=n_ntl)
        self.ntl_loss_func.record(LossOutput(outputs.loss, outputs.ce, outputs.ntl))
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As Trainer.compute_loss: the counts are global, DDP averages the gradients.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size()
                           if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss

    def _compute_loss_with_counts(self, outputs, labels, num_items_in_batch=None):
        loss = self.ntl_loss_func(
            outputs,
            labels,
            num_items_in_batch=num_items_in_batch,
            num_number_items=self._current_number_items if num_items_in_batch is not None else None,
            shift_labels=self._current_shift_labels,
        )
        if self._ntl_eval_parts is not None and labels is not None:
            last, rows = self.ntl_loss_func.last, float(labels.shape[0])
            self._ntl_eval_parts.append(torch.stack([last.ce.float() * rows, last.ntl.float() * rows,
                                                     torch.tensor(rows, device=last.ce.device)]))
        return loss

    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any):
        """``Trainer.evaluation_loop`` plus ``<prefix>_ce`` and ``<prefix>_ntl``, averaged as
        ``<prefix>_loss`` is: each example counts with the loss of its batch."""
        self._ntl_eval_parts = []
        try:
            output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
            parts = self._ntl_eval_parts
        finally:
            self._ntl_eval_parts = None
        if parts:
            sums = torch.stack(parts).sum(0)
            if self.args.world_size > 1:
                sums = self.accelerator.gather(sums[None]).sum(0)
            ce, ntl, rows = sums.tolist()
            output.metrics[f"{metric_key_prefix}_ce"] = ce / rows
            output.metrics[f"{metric_key_prefix}_ntl"] = ntl / rows
        return output

    # -- logging ----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """``Trainer.log`` plus ``ce`` and ``ntl`` on training logs (those with ``loss``)."""
        if "loss" in logs and self.ntl_loss_func.running_sums is not None:
            last = self._ntl_last_logged_step
            steps = self.state.global_step - (last if last is not None else 0)
            combine = self._combine_over_processes if self.args.world_size > 1 else None
            logs.update(self.ntl_loss_func.pop_means(steps, combine))
            self._ntl_last_logged_step = self.state.global_step
        super().log(logs, start_time)

    def _combine_over_processes(self, sums: torch.Tensor) -> torch.Tensor:
        """Like ``loss``: the mean over processes of what each one's loss returned, times the
        factor Trainer.compute_loss applies when the counts are global."""
        sums = self.accelerator.gather(sums[None]).mean(0)
        if self.args.average_tokens_across_devices:
            sums = sums * (self.accelerator.num_processes // max(1, self.get_tp_size()))
        return sums
