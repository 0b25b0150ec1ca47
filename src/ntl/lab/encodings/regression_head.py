"""Regression head: a T5 encoder with a scalar head, the paper's "does NTL on a token head match
a regression head" reference.

The question is tokenized as for the CE arms (digit-split T5 tokenizer); the encoder states are
mean-pooled over real tokens, an MLP maps them to one number, trained with MSE against
``sign(y)·log10(|y|+1)`` of the answer's value (answers that are not one number are skipped in
training). The prediction is inverted from that scale and printed like xVal's
(:func:`ntl.lab.encodings.common.format_value`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import T5Config, T5EncoderModel
from transformers.utils import ModelOutput

from ntl.lab.encodings.common import format_value, inverse_signed_log, signed_log

#: Predictions are clipped to |s| <= this in signed-log scale before inversion (|y| <= 1e30).
MAX_SIGNED_LOG = 30.0


class RegressionConfig(T5Config):
    """A T5 (encoder) config plus the head's width. Its own ``model_type``, so ``AutoModel``
    refuses the folder instead of loading a plain T5.

    Args:
        head_hidden: the MLP's hidden width (default d_model).
        **kwargs: ``T5Config`` fields.
    """

    model_type = "ntl-regression-t5"

    def __init__(self, head_hidden: int | None = None, **kwargs: Any) -> None:
        self.head_hidden = head_hidden
        super().__init__(**kwargs)


@dataclass
class RegressionOutput(ModelOutput):
    """``loss`` = ``mse`` (0-d, signed-log units; when targets are given) and ``values`` (B,),
    the predictions in signed-log scale."""

    loss: torch.Tensor | None = None
    mse: torch.Tensor | None = None
    values: torch.Tensor | None = None


class RegressionT5(T5EncoderModel):
    """T5 encoder + mean pooling + MLP -> one value per example (signed-log scale).

    Shapes: ``forward(input_ids (B, S), attention_mask (B, S), labels (B,) raw values or None)
    -> RegressionOutput(loss, mse, values (B,))``.
    """

    config_class = RegressionConfig
    accepts_loss_kwargs = False  # the loss is a per-batch mean; the Trainer averages over steps

    def __init__(self, config: RegressionConfig) -> None:
        super().__init__(config)
        d = int(config.d_model)
        hidden = config.head_hidden or d
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> RegressionOutput:
        """Predictions (B,) in signed-log scale and, with ``labels`` (B,) raw target values, the
        MSE between the predictions and ``signed_log(labels)``."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.to(states.dtype).unsqueeze(-1)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        values = self.head(pooled).squeeze(-1)
        if labels is None:
            return RegressionOutput(values=values)
        mse = nn.functional.mse_loss(values.float(), signed_log(labels.float()))
        return RegressionOutput(loss=mse, mse=mse, values=values)

    @torch.no_grad()
    def predict_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw predicted values (B,) float64."""
        was_training = self.training
        self.eval()
        try:
            pred = self(input_ids, attention_mask).values.double()
        finally:
            self.train(was_training)
        return inverse_signed_log(pred.clamp(-MAX_SIGNED_LOG, MAX_SIGNED_LOG))

    def predict_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Predicted answers as plain decimal text."""
        return [format_value(float(v)) for v in self.predict_values(input_ids, attention_mask)]
