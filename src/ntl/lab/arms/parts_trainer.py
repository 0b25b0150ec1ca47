"""A ``transformers.Trainer`` for models whose ``forward`` returns their loss *and* its parts
(xVal: ``ce`` and ``mse``; the regression head: ``mse``): the Trainer's own training, and the
parts logged next to ``loss``, averaged over the logging interval (and over processes) the same
way the Trainer averages ``loss``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Trainer


class PartsTrainer(Trainer):
    """``Trainer`` plus the loss parts ``parts`` (names of 0-d fields of the model output) in
    every training log.

    Args:
        *args, **kwargs: as for ``Trainer``.
        parts: output fields to log, e.g. ``("ce", "mse")``.
    """

    def __init__(self, *args: Any, parts: Sequence[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parts = tuple(parts)
        self._part_sums: torch.Tensor | None = None
        self._parts_logged_step: int | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``Trainer.compute_loss``; in training, the parts (divided by the accumulation steps, as
        the Trainer divides the loss) are summed for the next log."""
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training and self.parts:
            if self._parts_logged_step is None:
                self._parts_logged_step = self.state.global_step
            steps = max(1, int(getattr(self, "current_gradient_accumulation_steps", 1) or 1))
            values = torch.stack([outputs[p].detach().float() for p in self.parts]) / steps
            self._part_sums = values if self._part_sums is None else self._part_sums + values
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """``Trainer.log`` plus the parts' means on training logs (those with ``loss``)."""
        if "loss" in logs and self._part_sums is not None:
            sums = self._part_sums
            if self.args.world_size > 1:
                sums = self.accelerator.gather(sums[None]).mean(0)
            steps = max(1, self.state.global_step - (self._parts_logged_step or 0))
            logs.update({p: float(v) / steps for p, v in zip(self.parts, sums.tolist())})
            self._part_sums = None
            self._parts_logged_step = self.state.global_step
        super().log(logs, start_time)
