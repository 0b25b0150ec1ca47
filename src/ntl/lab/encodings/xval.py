"""xVal (Golkar et al., 2023): one ``[NUM]`` token per number, its embedding scaled by the value.

- **Text**: every number (``-5``, ``3.25``) becomes one ``[NUM]`` token; its value travels beside
  the ids (:func:`encode_texts`).
- **Embedding**: ``E[NUM] · s(x)`` where ``s`` is the scaling (:class:`Scaling`): signed-log
  ``sign(x)·log10(|x|+1)`` by default (the paper's setting), or linear ``x / scale``. Other
  tokens are embedded as usual. (As in xVal, ``x = 0`` gives a zero embedding.)
- **Number head**: a small MLP beside the LM head reads the decoder state that predicts each
  token and regresses ``s(x)``; training loss = CE (all tokens, ``[NUM]`` included) +
  ``mse_weight``·MSE(head, s(x)) over the positions whose target is ``[NUM]``.
- **Generation** (:meth:`XValT5.greedy`): whenever ``[NUM]`` is the argmax, the head's prediction
  is the number, and it is fed back as the next decoder input ``E[NUM] · ŝ`` — the decoder
  conditions on the value it generated. (The paper's xVal code did not feed the predicted value
  back: its next-step input was the bare ``[NUM]`` embedding; this is the correct version.)
  Predicted values are printed by :func:`ntl.lab.encodings.common.format_value` (plain decimals of
  the float32 value, no scientific notation) so ``ntl.lab.metrics.parse_number`` reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import T5Config
from transformers.utils import ModelOutput

from ntl.lab.encodings.common import (
    NumberT5,
    format_value,
    inverse_signed_log,
    is_word_char,
    render_pieces,
    shift_right,
    signed_log,
    tokenize_with_numbers,
)

NUM_TOKEN = "[NUM]"
SCALINGS = ("signed-log", "linear")
#: The head's output is clipped to |s| <= this in signed-log scale before inversion (|x| <= 1e30).
MAX_SIGNED_LOG = 30.0


@dataclass(frozen=True)
class Scaling:
    """Value <-> embedding scale ``s``: ``"signed-log"`` (``sign(x)·log10(|x|+1)``) or
    ``"linear"`` (``x / scale``). Both elementwise on float tensors of any shape."""

    kind: str = "signed-log"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SCALINGS:
            raise ValueError(f"xVal scaling must be one of {SCALINGS}, got {self.kind!r}")
        if not self.scale > 0:
            raise ValueError(f"xVal linear scale must be > 0, got {self.scale}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return signed_log(x) if self.kind == "signed-log" else x / self.scale

    def inverse(self, s: torch.Tensor) -> torch.Tensor:
        if self.kind == "signed-log":
            return inverse_signed_log(s.clamp(-MAX_SIGNED_LOG, MAX_SIGNED_LOG))
        return s * self.scale


# ---------------------------------------------------------------------- text side
def add_num_token(tokenizer: Any) -> Any:
    """Add ``[NUM]`` to ``tokenizer`` (in place) and return it."""
    tokenizer.add_tokens([NUM_TOKEN])
    return tokenizer


def num_id(tokenizer: Any) -> int:
    """The ``[NUM]`` id; ``ValueError`` if the tokenizer lacks it."""
    idx = tokenizer.convert_tokens_to_ids(NUM_TOKEN)
    if idx is None or idx == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {NUM_TOKEN} token; call add_num_token first")
    return int(idx)


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> tuple[list[list[int]], list[list[float]]]:
    """Ids of ``texts`` with every number as one ``[NUM]``, and the raw values per token.

    Returns:
        (ids per text, values per text aligned with the ids: the number's value at ``[NUM]``,
        NaN elsewhere). No eos is added.
    """
    ids, numbers = tokenize_with_numbers(tokenizer, texts)
    zero = tokenizer.convert_tokens_to_ids("0")
    num = num_id(tokenizer)
    out_ids, out_values = [], []
    for row, nums in zip(ids, numbers):
        new, vals, k = [], [], 0
        for i in row:
            if i == zero:
                new.append(num)
                vals.append(float(nums[k]))
                k += 1
            else:
                new.append(i)
                vals.append(float("nan"))
        out_ids.append(new)
        out_values.append(vals)
    return out_ids, out_values


def decode_text(tokenizer: Any, ids: Sequence[int], values: Sequence[float]) -> str:
    """Generated ids (eos/pad removed) and the raw values fed with them -> text.

    Each ``[NUM]`` is printed as its value (:func:`format_value`). A ``[NUM]`` glued to a
    neighbour it would fuse with (a letter, digit, ``.``, ``_`` or another ``[NUM]``: ``3.2``
    then ``5`` would read ``3.25``) is printed as ``NUM_<value>``, which
    :func:`ntl.lab.metrics.parse_number` rejects, so such output counts invalid.
    """
    num = num_id(tokenizer)
    special = set(tokenizer.all_special_ids)
    pieces: list[str] = []
    is_num: list[bool] = []
    for i, v in zip(ids, values):
        if i == num:
            pieces.append(format_value(float(v)))
            is_num.append(True)
        elif i not in special:
            pieces.append(tokenizer.convert_ids_to_tokens(int(i)))
            is_num.append(False)
    out = []
    for k, piece in enumerate(pieces):
        if is_num[k]:
            prev_glued = k > 0 and (is_num[k - 1] or is_word_char(pieces[k - 1][-1:] or " "))
            next_glued = k + 1 < len(pieces) and (is_num[k + 1] or is_word_char(pieces[k + 1][:1] or " "))
            if prev_glued or next_glued:
                piece = "NUM_" + piece
        out.append(piece)
    return render_pieces(out)


# ---------------------------------------------------------------------- model side
class NumberHead(nn.Module):
    """MLP d_model -> hidden -> 1 (GELU): decoder states (..., d) -> scaled values (...)."""

    def __init__(self, d_model: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or d_model
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden).squeeze(-1)


class XValConfig(T5Config):
    """A T5 config plus xVal's settings. Its own ``model_type``, so ``AutoModel`` refuses the
    folder instead of loading a plain T5 without the number head.

    Args:
        num_token_id: the ``[NUM]`` id.
        xval_scaling: ``"signed-log"`` or ``"linear"`` (:class:`Scaling`).
        xval_scale: the linear scaling's divisor.
        mse_weight: weight of the number-head MSE in the training loss.
        head_hidden: the number head's hidden width (default d_model).
        **kwargs: ``T5Config`` fields.
    """

    model_type = "ntl-xval-t5"

    def __init__(
        self,
        num_token_id: int = 0,
        xval_scaling: str = "signed-log",
        xval_scale: float = 1.0,
        mse_weight: float = 1.0,
        head_hidden: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.num_token_id = int(num_token_id)
        self.xval_scaling = xval_scaling
        self.xval_scale = float(xval_scale)
        self.mse_weight = float(mse_weight)
        self.head_hidden = head_hidden
        super().__init__(**kwargs)


@dataclass
class XValOutput(ModelOutput):
    """``loss`` = CE + mse_weight·MSE (0-d), its parts ``ce`` and ``mse`` (0-d, MSE in scaled
    units), ``logits`` (B, T, V) and the number head's scaled values (B, T)."""

    loss: torch.Tensor | None = None
    ce: torch.Tensor | None = None
    mse: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    number_values: torch.Tensor | None = None


class XValT5(NumberT5):
    """T5 with xVal number embeddings and a number head (:class:`XValConfig`).

    ``values`` fed to :meth:`embed` (B, T) are *scaled* values ``s(x)`` at ``[NUM]`` positions and
    1 elsewhere: the input embedding is ``E[id] · values[..., None]``. :meth:`forward` takes the
    *raw* values (NaN off ``[NUM]``) as the collator gives them and returns :class:`XValOutput`.
    """

    config_class = XValConfig
    accepts_loss_kwargs = False  # the loss is a per-batch mean; the Trainer averages over steps

    def __init__(self, config: XValConfig) -> None:
        super().__init__(config)
        self.scaling = Scaling(config.xval_scaling, config.xval_scale)
        self.number_head = NumberHead(int(config.d_model), config.head_hidden)

    @property
    def num_token_id(self) -> int:
        return int(self.config.num_token_id)

    def embed(self, ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        emb = self.shared(ids)
        if values is None:
            return emb
        return emb * values.to(emb.dtype).unsqueeze(-1)

    def next_values(self, hidden: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """The head's scaled value where ``[NUM]`` was generated, 1 elsewhere (B,)."""
        pred = self.number_head(hidden)
        return torch.where(next_ids == self.num_token_id, pred, torch.ones_like(pred))

    def multipliers(self, ids: torch.Tensor, raw_values: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and raw values (NaN off ``[NUM]``) -> (B, T) embedding multipliers."""
        scaled = self.scaling.forward(torch.nan_to_num(raw_values.float(), nan=0.0))
        return torch.where(ids == self.num_token_id, scaled, torch.ones_like(scaled))

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_values: torch.Tensor,
        labels: torch.Tensor,
        label_values: torch.Tensor,
    ) -> XValOutput:
        """Teacher-forced loss.

        Args:
            input_ids, attention_mask: (B, S); input_values (B, S) raw values (NaN off ``[NUM]``).
            labels: (B, T) target ids, -100 on padding; label_values (B, T) raw values.

        Returns:
            :class:`XValOutput`: ``loss`` = CE (all tokens, ``[NUM]`` included) +
            ``config.mse_weight``·MSE, where MSE is the mean over ``[NUM]`` targets in scaled
            units, an exact 0 (with a graph) when there are none.
        """
        dec_ids = shift_right(labels, self.start_id)
        label_mult = self.multipliers(labels.clamp_min(0), label_values)
        dec_values = shift_right(label_mult, 1.0)
        enc = self.encode(input_ids, attention_mask, self.multipliers(input_ids, input_values))
        logits, hidden, _ = self.decode(enc, attention_mask, dec_ids, dec_values)
        ce = nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
        )
        is_num = labels == self.num_token_id
        pred = self.number_head(hidden).float()
        if bool(is_num.any()):
            mse = ((pred - label_mult.float()) ** 2)[is_num].mean()
        else:
            mse = pred.sum() * 0.0
        loss = ce + self.config.mse_weight * mse
        return XValOutput(loss=loss, ce=ce, mse=mse, logits=logits, number_values=pred)

    def generate_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, input_values: torch.Tensor,
        max_new_tokens: int = 32, use_cache: bool = True,
        logits_filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy generation from raw input values (B, S), NaN off ``[NUM]``.

        Returns:
            (ids (B, L), raw values (B, L): the predicted number at ``[NUM]``, NaN elsewhere).
        """
        ids, mult = self.greedy(
            input_ids, attention_mask, self.multipliers(input_ids, input_values),
            max_new_tokens=max_new_tokens, use_cache=use_cache, logits_filter=logits_filter,
        )
        raw = self.scaling.inverse(mult.double())
        return ids, torch.where(ids == self.num_token_id, raw, torch.full_like(raw, float("nan")))
