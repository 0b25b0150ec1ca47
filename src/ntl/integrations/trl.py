"""TRL glue: ``NTLSFTTrainer``, TRL's ``SFTTrainer`` trained with ``CE + λ·NTL``.

Everything ``SFTTrainer`` does stays: datasets (language modeling, prompt-completion,
conversational), ``completion_only_loss`` / ``assistant_only_loss`` (prompt tokens get label -100
and are skipped by both terms), packing, PEFT, its ``entropy`` / ``mean_token_accuracy`` /
``num_tokens`` logs. What changes is the loss, as in `ntl.integrations.hf.NTLTrainer`:

- one forward pass per step that returns the logits, and ``CE + λ·NTL`` from them (TRL's own
  loss runs a fused LM head that never builds logits; a ``compute_loss_func`` makes TRL run an
  extra forward for them, and TRL has deprecated it);
- exact under gradient accumulation and DDP: CE is divided by the label tokens and NTL by the
  number-target tokens of the whole accumulated batch;
- ``ce`` and ``ntl`` are logged next to ``loss`` in training, ``eval_ce`` and ``eval_ntl`` next to
  ``eval_loss`` in evaluation.

Example (``pip install 'number-token-loss[trl]'``)::

    from trl import SFTConfig
    from ntl import CrossEntropyWithNTL, NumberVocab
    from ntl.integrations.trl import NTLSFTTrainer

    vocab = NumberVocab.from_tokenizer(tokenizer, vocab_size=model.config.vocab_size)
    trainer = NTLSFTTrainer(model=model, args=SFTConfig("out"), train_dataset=ds,
                            processing_class=tokenizer,
                            ntl_loss=CrossEntropyWithNTL(vocab, ntl="was", lam=0.3))
    trainer.train()

Not supported: ``loss_type="dft"``, label smoothing, the MoE router auxiliary loss, and
DeepSpeed-Ulysses sequence parallelism (they belong to TRL's own loss).
"""

from __future__ import annotations

from typing import Any

import torch

from ntl._optional import require

_transformers = require("transformers", "ntl.integrations.trl")
_trl = require("trl", "ntl.integrations.trl")
SFTTrainer = _trl.SFTTrainer

from ntl.integrations.hf import NTLTrainer  # noqa: E402 - after the dependency checks

__all__ = ["NTLSFTTrainer"]


class _OneForwardSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss is the ``compute_loss_func`` of one forward pass with logits
    (``Trainer.compute_loss``), with TRL's token metrics computed from those logits."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        labels = inputs.get("labels")
        inputs = {**inputs, "use_cache": False}  # as SFTTrainer: no KV cache in training
        loss, outputs = _transformers.Trainer.compute_loss(
            self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if labels is not None:
            self._record_token_metrics(mode, outputs, labels, inputs)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _record_token_metrics(self, mode: str, outputs: Any, labels: torch.Tensor, inputs: dict) -> None:
        """TRL's ``entropy``, ``mean_token_accuracy`` and ``num_tokens``, from the logits."""
        target = labels[..., 1:]
        mask = target != -100
        logits = outputs["logits"][..., :-1, :][mask].float()  # (M, V) at the trained positions
        entropy = (torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)).sum()
        correct = (logits.argmax(-1) == target[mask]).sum()
        gather = self.accelerator.gather_for_metrics
        count = gather(mask.sum()).sum()
        entropy, correct = gather(entropy).sum(), gather(correct).sum()
        valid = count.item()
        self._metrics[mode]["entropy"].append((entropy / count).item() if valid else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / count).item() if valid else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens += gather(local).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


class NTLSFTTrainer(NTLTrainer, _OneForwardSFTTrainer):
    """TRL's ``SFTTrainer`` with the loss ``CE + λ·NTL`` (see the module docstring).

    Args:
        *args, **kwargs: as for ``trl.SFTTrainer`` (``compute_loss_func`` must not be given).
        ntl_loss: the loss, ``CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)`` with
            ``vocab = NumberVocab.from_tokenizer(tokenizer, vocab_size=model.config.vocab_size)``.
    """

    def __init__(self, *args: Any, ntl_loss: Any, **kwargs: Any) -> None:
        args_ = kwargs.get("args", args[1] if len(args) > 1 else None)
        for field, value in (("loss_type", "nll"), ("label_smoothing_factor", 0.0)):
            got = getattr(args_, field, value)
            if got != value:
                raise ValueError(
                    f"NTLSFTTrainer computes CE + λ·NTL itself: SFTConfig({field}={got!r}) is not "
                    f"supported; leave {field} at {value!r}"
                )
        super().__init__(*args, ntl_loss=ntl_loss, causal=True, **kwargs)
