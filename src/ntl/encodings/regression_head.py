"""Regression head: a T5 encoder with a scalar head, the paper's "does NTL on a token head match
a regression head" reference.

The question is tokenized as for the CE arms (digit-split T5 tokenizer); the encoder states are
mean-pooled over real tokens, an MLP maps them to one number, trained with MSE against
``sign(y)·log10(|y|+1)`` of the answer's value (answers that are not one number are skipped in
training). The prediction is inverted from that scale and printed like xVal's
(:func:`ntl.encodings.common.format_value`).
"""

from __future__ import annotations

import torch
from torch import nn

from ntl.encodings.common import format_value, inverse_signed_log, signed_log

#: Predictions are clipped to |s| <= this in signed-log scale before inversion (|y| <= 1e30).
MAX_SIGNED_LOG = 30.0


class RegressionT5(nn.Module):
    """T5 encoder + mean pooling + MLP -> one value per example (signed-log scale).

    Args:
        encoder: a ``transformers.T5EncoderModel``.
        head_hidden: the MLP's hidden width (default d_model).

    Shapes: ``forward(input_ids (B, S), attention_mask (B, S)) -> (B,)`` float.
    """

    def __init__(self, encoder: nn.Module, head_hidden: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        d = int(encoder.config.d_model)
        hidden = head_hidden or d
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.to(states.dtype).unsqueeze(-1)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(pooled).squeeze(-1)

    def loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "mse"}``: MSE between predictions and ``signed_log(targets)`` (B,) raw values."""
        pred = self(input_ids, attention_mask).float()
        mse = nn.functional.mse_loss(pred, signed_log(targets.float()))
        return {"loss": mse, "mse": mse}

    @torch.no_grad()
    def predict_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw predicted values (B,) float64."""
        was_training = self.training
        self.eval()
        try:
            pred = self(input_ids, attention_mask).double()
        finally:
            self.train(was_training)
        return inverse_signed_log(pred.clamp(-MAX_SIGNED_LOG, MAX_SIGNED_LOG))

    def predict_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Predicted answers as plain decimal text."""
        return [format_value(float(v)) for v in self.predict_values(input_ids, attention_mask)]
