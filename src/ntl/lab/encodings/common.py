"""What the number-encoding arms share: finding numbers in text, tokenizing text with numbers
replaced by per-arm tokens, rendering generated pieces back to text, and a T5 wrapper with its
own embedding hook and a batched greedy decoder.

Numbers in text (:data:`NUMBER_RE`): an optional ``-`` sign, digits, an optional ``.`` and
digits. The ``-`` belongs to the number only when it does not follow a word character, ``.``,
``)`` or ``]`` (``-5 + 3``, ``(-20)/4``, ``*-6`` are signed; ``2-3`` and ``5 - 3`` are
subtractions). Every ASCII digit of a text belongs to exactly one number.

Tokenization (:func:`tokenize_with_numbers`): every number is replaced by the placeholder
``0``; the digit-split tokenizer (``ntl.numbers.split_digits``) turns each placeholder into
exactly one ``0`` piece (with a ``▁`` piece before it when a space precedes the number), so the
space structure around numbers is the same as the CE arms see. The arm then swaps each
placeholder id for its own tokens: one ``[NUM]`` (xVal) or ``-`` + place-value tokens (RT).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import T5ForConditionalGeneration

#: A number in text: optional attached sign, digits, optional fraction.
NUMBER_RE = re.compile(r"(?:(?<![\w.)\]])-)?\d+(?:\.\d+)?")
PLACEHOLDER = "0"
SPACE_MARKER = "\u2581"
IGNORE_INDEX = -100


# ---------------------------------------------------------------------- text <-> numbers
def mask_numbers(text: str) -> tuple[str, list[str]]:
    """Replace every number of ``text`` by the placeholder ``0``.

    Returns:
        (masked text, the numbers' literal texts in order), e.g.
        ``"What is -5 + 3.5?"`` -> ``("What is 0 + 0?", ["-5", "3.5"])``.
    """
    numbers = [m.group(0) for m in NUMBER_RE.finditer(text)]
    return NUMBER_RE.sub(PLACEHOLDER, text), numbers


def tokenize_with_numbers(
    tokenizer: Any, texts: Sequence[str]
) -> tuple[list[list[int]], list[list[str]]]:
    """Tokenize ``texts`` with numbers masked (no special tokens added).

    Returns:
        (ids per text, where each number is one placeholder id; number texts per text). The
        placeholder id is ``tokenizer.convert_tokens_to_ids("0")``; the i-th placeholder id in a
        text stands for its i-th number.

    Raises:
        ValueError: the tokenizer does not give one ``0`` piece per number (it must split digits:
            ``ntl.numbers.split_digits``).
    """
    masked, numbers = zip(*(mask_numbers(t) for t in texts)) if texts else ((), ())
    if not masked:
        return [], []
    ids = tokenizer(list(masked), add_special_tokens=False)["input_ids"]
    zero = placeholder_id(tokenizer)
    for row, nums, text in zip(ids, numbers, masked):
        if sum(1 for i in row if i == zero) != len(nums):
            raise ValueError(
                f"tokenizing {text!r} did not give one {PLACEHOLDER!r} piece per number "
                f"({len(nums)} numbers): use a digit-split tokenizer (ntl.numbers.split_digits)"
            )
    return [list(r) for r in ids], [list(n) for n in numbers]


def placeholder_id(tokenizer: Any) -> int:
    """The id of the placeholder piece ``0``; ``ValueError`` if the tokenizer lacks it."""
    idx = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    if idx is None or idx == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {PLACEHOLDER!r} piece; it cannot mark numbers")
    return int(idx)


def render_pieces(pieces: Sequence[str]) -> str:
    """Join token pieces into text the way T5's Metaspace decoder does: ``▁`` -> space, stripped."""
    return "".join(pieces).replace(SPACE_MARKER, " ").strip()


def is_word_char(c: str) -> bool:
    """Letters, digits, ``.`` and ``_``: a number next to one of these would fuse with it."""
    return c.isalnum() or c in "._"


def format_value(value: float, max_abs_exponent: int = 30) -> str:
    """A regressed value as plain decimal text that :func:`ntl.lab.metrics.parse_number` reads back.

    The value is rounded to float32 (the models' precision) and printed as the shortest decimal
    that identifies that float32, never in scientific notation: ``3.5`` -> ``"3.5"``,
    ``-1e-7`` -> ``"-0.0000001"``, ``2758677479`` -> ``"2758677500"``. Magnitudes are clipped to
    ``10**max_abs_exponent``; NaN gives ``"nan"`` (parsed as invalid).
    """
    import numpy as np

    if not math.isfinite(value):
        if math.isnan(value):
            return "nan"
        value = math.copysign(10.0**max_abs_exponent, value)
    value = max(-(10.0**max_abs_exponent), min(10.0**max_abs_exponent, float(value)))
    text = np.format_float_positional(np.float32(value), trim="-")
    return "0" if text in ("-0", "0") else text


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)·log10(|x| + 1)`` elementwise (the paper's scale), any shape, float."""
    return torch.sign(x) * torch.log10(x.abs() + 1)


def inverse_signed_log(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`signed_log`: ``sign(y)·(10**|y| − 1)``."""
    return torch.sign(y) * (torch.pow(10.0, y.abs()) - 1)


# ---------------------------------------------------------------------- batching
def pad(seqs: Sequence[Sequence[Any]], value: Any, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Right-pad ``seqs`` to a (N, max_len) tensor of ``dtype`` filled with ``value``."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=dtype)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(list(s), dtype=dtype)
    return out


def pad_inputs(feats: Sequence[Any], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` right-padded with ``pad_token_id`` and their ``attention_mask``, (B, T) each."""
    return {
        "input_ids": pad([f["input_ids"] for f in feats], pad_token_id),
        "attention_mask": pad([[1] * len(f["input_ids"]) for f in feats], 0),
    }


def shift_right(x: torch.Tensor, start: float | int) -> torch.Tensor:
    """(B, T) -> (B, T): ``start`` then ``x[:, :-1]`` (teacher-forcing decoder inputs);
    ``-100`` entries (padding labels) become 0, which the causal mask never lets matter."""
    out = torch.full_like(x, start)
    out[:, 1:] = x[:, :-1]
    if not out.is_floating_point():
        out = out.masked_fill(out == IGNORE_INDEX, 0)
    return out


# ---------------------------------------------------------------------- the T5 model
class NumberT5(T5ForConditionalGeneration):
    """A ``T5ForConditionalGeneration`` whose token embeddings go through one hook,
    :meth:`embed`, in every pass (training forward, encoder, greedy decoder), so that an arm can
    change how tokens are embedded (xVal scales ``[NUM]`` by its value, RT adds a numeric
    encoding) and attach heads to the decoder states. It saves and loads like any Hugging Face
    model (``save_pretrained`` / ``from_pretrained``: ``config.json`` + ``model.safetensors``).

    Per-token float ``values`` (B, T) travel with the ids; what they mean is the subclass's
    business (:meth:`embed`), and :meth:`next_values` says which value the greedy decoder feeds
    back with each generated token. The base class ignores values (plain T5).
    """

    @property
    def d_model(self) -> int:
        return int(self.config.d_model)

    @property
    def start_id(self) -> int:
        return int(self.config.decoder_start_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.config.eos_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.config.pad_token_id)

    # -- hooks
    def embed(self, ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        """(B, T) ids (and (B, T) float values) -> (B, T, d_model) input embeddings."""
        return self.shared(ids)

    def next_values(self, hidden: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """The value fed back with each generated token: hidden (B, d), next_ids (B,) -> (B,)."""
        return torch.ones(next_ids.shape, dtype=hidden.dtype, device=hidden.device)

    # -- passes
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        decoder_values: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """T5's teacher-forced pass with both sides embedded by :meth:`embed`.

        Args:
            input_ids, attention_mask: (B, S) encoder ids and mask; input_values (B, S) or None.
            decoder_input_ids: (B, T); default: ``labels`` shifted right behind the start id.
            labels: (B, T) target ids, -100 ignored; gives ``loss`` = mean CE over them.
            decoder_values: (B, T) values fed with the decoder inputs, or None.
            **kwargs: passed to ``T5ForConditionalGeneration.forward`` (``cache``, ...).

        Returns:
            ``Seq2SeqLMOutput`` (``loss`` when labels are given, ``logits`` (B, T, V)).
        """
        if decoder_input_ids is None and kwargs.get("decoder_inputs_embeds") is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels (teacher forcing needs one)")
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if input_ids is not None and kwargs.get("encoder_outputs") is None:
            kwargs["inputs_embeds"] = self.embed(input_ids, input_values)
        if decoder_input_ids is not None:
            kwargs["decoder_inputs_embeds"] = self.embed(decoder_input_ids, decoder_values)
        return super().forward(attention_mask=attention_mask, labels=labels, **kwargs)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encoder states (B, S, d) of ``input_ids`` (B, S) with mask (B, S)."""
        out = self.encoder(inputs_embeds=self.embed(input_ids, values), attention_mask=attention_mask)
        return out[0]

    def decode(
        self,
        encoder_states: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_ids: torch.Tensor,
        decoder_values: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Decoder pass: (logits (B, T, V), hidden (B, T, d) before the LM head, cache)."""
        out = self.decoder(
            inputs_embeds=self.embed(decoder_ids, decoder_values),
            encoder_hidden_states=encoder_states,
            encoder_attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
        )
        hidden = out[0]
        scaled = hidden * self.d_model**-0.5 if self.config.scale_decoder_outputs else hidden
        return self.lm_head(scaled), hidden, getattr(out, "cache", None)

    @torch.no_grad()
    def greedy(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_values: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        use_cache: bool = True,
        logits_filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched greedy decoding; stops when every row has produced eos.

        At each step the argmax token and its value (:meth:`next_values`) become the next
        step's decoder input, so a value the model predicts is what it conditions on next.

        Args:
            input_ids, attention_mask: (B, S) encoder inputs; input_values (B, S) or None.
            max_new_tokens: the most tokens generated per row (eos included).
            use_cache: reuse past keys/values (one token per step) instead of re-running the
                decoder over the whole prefix; both give the same tokens.
            logits_filter: optional (B, V) -> (B, V) applied before the argmax.

        Returns:
            (ids (B, L), values (B, L)) of the generated tokens, L <= max_new_tokens; rows that
            finished early are padded with pad ids and value 1.
        """
        was_training = self.training
        self.eval()
        try:
            enc = self.encode(input_ids, attention_mask, input_values)
            batch = input_ids.shape[0]
            device = input_ids.device
            ids = torch.full((batch, 1), self.start_id, dtype=torch.long, device=device)
            values = torch.ones((batch, 1), dtype=enc.dtype, device=device)
            done = torch.zeros(batch, dtype=torch.bool, device=device)
            out_ids, out_values = [], []
            cache = None
            for step in range(max_new_tokens):
                if use_cache:
                    logits, hidden, cache = self.decode(
                        enc, attention_mask, ids[:, -1:], values[:, -1:], cache=cache, use_cache=True
                    )
                    if cache is None or cache.get_seq_length() != step + 1:
                        raise RuntimeError(
                            "the T5 decoder did not keep a key/value cache (transformers API "
                            "change?); call greedy(..., use_cache=False)"
                        )
                else:
                    logits, hidden, _ = self.decode(enc, attention_mask, ids, values)
                last_logits, last_hidden = logits[:, -1], hidden[:, -1]
                if logits_filter is not None:
                    last_logits = logits_filter(last_logits)
                nxt = last_logits.argmax(-1)
                val = self.next_values(last_hidden, nxt).to(values.dtype)
                nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
                val = torch.where(done, torch.ones_like(val), val)
                out_ids.append(nxt)
                out_values.append(val)
                done = done | (nxt == self.eos_id)
                if bool(done.all()):
                    break
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                values = torch.cat([values, val[:, None]], dim=1)
            if not out_ids:
                empty = torch.zeros((batch, 0), device=device)
                return empty.long(), empty
            return torch.stack(out_ids, 1), torch.stack(out_values, 1)
        finally:
            self.train(was_training)


def cut_at_eos(ids: Sequence[int], eos_id: int, pad_id: int) -> list[int]:
    """Generated ids up to (not including) the first eos, pads dropped."""
    out = []
    for i in ids:
        if i == eos_id:
            break
        if i != pad_id:
            out.append(int(i))
    return out
