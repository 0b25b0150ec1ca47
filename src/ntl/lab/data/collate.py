"""Tokenization and batching of question/answer records for seq2seq and causal language models.

Records are ``{"module", "question", "answer", ...}`` (see :mod:`ntl.lab.data.mathematics`).

- **seq2seq** (T5): ``input_ids`` = question + ``</s>``, ``labels`` = answer + ``</s>``; the model
  builds its decoder inputs from the labels, so labels and decoder logits are aligned.
- **causal** (decoder-only): ``input_ids`` = question + ``eos`` + answer + ``eos``; ``labels`` equal
  the input ids on the answer part and ``-100`` on the prompt, *unshifted* (the model and
  :mod:`ntl.integrations.hf` shift by one). At generation the prompt is question + ``eos``.

Also here: :func:`restrict_tokenizer`, which keeps only the pieces a corpus uses so that a tiny
model on a CPU does not spend most of its time in a 32k-wide softmax, while tokenizing that
corpus exactly as the full tokenizer does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


# ---------------------------------------------------------------------- encoding
def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _eos(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos token; it is needed to end answers"
        )
    return int(tokenizer.eos_token_id)


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, or its eos id when it has no pad token (GPT-2 style)."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos(tokenizer))


def encode_seq2seq(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_source_length: int = 256,
    max_target_length: int = 64,
    with_labels: bool = True,
) -> list[dict[str, list[int]]]:
    """Encode records for an encoder-decoder: ``{"input_ids", "labels"}`` per record.

    Both sequences end with eos; longer ones are truncated (keeping the eos).
    """
    eos = _eos(tokenizer)
    questions = _ids(tokenizer, [str(r["question"]) for r in records])
    answers = _ids(tokenizer, [str(r["answer"]) for r in records]) if with_labels else None
    out = []
    for i, q in enumerate(questions):
        feat = {"input_ids": q[: max_source_length - 1] + [eos]}
        if answers is not None:
            feat["labels"] = answers[i][: max_target_length - 1] + [eos]
        out.append(feat)
    return out


def encode_causal(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_source_length: int = 256,
    max_target_length: int = 64,
    with_labels: bool = True,
) -> list[dict[str, list[int]]]:
    """Encode records for a decoder-only model.

    With labels: ``input_ids`` = question + eos + answer + eos and ``labels`` = -100 over
    question + eos, then answer + eos (unshifted). Without labels (generation): ``input_ids`` =
    question + eos only.
    """
    eos = _eos(tokenizer)
    bos = tokenizer.bos_token_id
    prefix = [int(bos)] if bos is not None and bos != eos else []
    questions = _ids(tokenizer, [str(r["question"]) for r in records])
    answers = _ids(tokenizer, [str(r["answer"]) for r in records]) if with_labels else None
    out = []
    for i, q in enumerate(questions):
        prompt = prefix + q[: max_source_length - 1 - len(prefix)] + [eos]
        if answers is None:
            out.append({"input_ids": prompt})
            continue
        answer = answers[i][: max_target_length - 1] + [eos]
        out.append(
            {
                "input_ids": prompt + answer,
                "labels": [IGNORE_INDEX] * len(prompt) + answer,
            }
        )
    return out


def encode(
    records: Sequence[Mapping[str, Any]], tokenizer: Any, *, causal: bool, **kwargs: Any
) -> list[dict[str, list[int]]]:
    """:func:`encode_causal` if ``causal`` else :func:`encode_seq2seq`."""
    fn = encode_causal if causal else encode_seq2seq
    return fn(records, tokenizer, **kwargs)


# ---------------------------------------------------------------------- collation
def _pad(seqs: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        row = torch.as_tensor(list(s), dtype=torch.long)
        if left:
            out[i, width - len(s) :] = row
        else:
            out[i, : len(s)] = row
    return out


@dataclass
class Collator:
    """Pad a list of encoded features into a batch of tensors.

    ``input_ids`` are padded with ``pad_token_id`` (on the left when ``padding_side="left"``, as
    decoder-only generation needs), ``attention_mask`` marks real tokens, ``labels`` (if present)
    are padded with -100 on the same side. Extra keys are dropped.
    """

    pad_token_id: int
    padding_side: str = "right"

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        left = self.padding_side == "left"
        ids = [f["input_ids"] for f in features]
        batch = {
            "input_ids": _pad(ids, self.pad_token_id, left),
            "attention_mask": _pad([[1] * len(s) for s in ids], 0, left),
        }
        if features and "labels" in features[0]:
            batch["labels"] = _pad([f["labels"] for f in features], IGNORE_INDEX, left)
        return batch


class EncodedDataset(torch.utils.data.Dataset):
    """A map-style dataset over encoded features, read in the order given by ``order``.

    ``order`` (indices into ``features``, repeats allowed) fixes which example comes at which
    position, e.g. several seeded epochs concatenated (see :func:`epoch_order`); by default the
    features in their own order.
    """

    def __init__(self, features: Sequence[dict[str, list[int]]], order: Sequence[int] | None = None):
        self.features = list(features)
        self.order = list(range(len(self.features))) if order is None else [int(i) for i in order]
        if self.order and not 0 <= min(self.order) <= max(self.order) < len(self.features):
            raise IndexError(f"order has indices outside [0, {len(self.features)})")

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[self.order[i]]


def epoch_order(n: int, total: int, seed: int) -> list[int]:
    """``total`` indices into ``n`` examples: seeded permutations of ``range(n)``, one per epoch,
    concatenated and cut to ``total``. Depends only on ``(n, total, seed)``."""
    import numpy as np

    if n <= 0:
        raise ValueError(f"cannot order an empty training set (n={n})")
    rng = np.random.default_rng(seed)
    chunks, have = [], 0
    while have < total:
        chunks.append(rng.permutation(n))
        have += n
    return np.concatenate(chunks)[:total].tolist() if chunks else []


# ---------------------------------------------------------------------- vocabulary restriction
_ASCII_PRINTABLE = [chr(c) for c in range(33, 127)]


def restrict_tokenizer(tokenizer: Any, texts: Iterable[str], *, keep_ascii: bool = True) -> Any:
    """A copy of a SentencePiece-Unigram fast tokenizer (T5's) that only knows the pieces
    ``texts`` use (plus special tokens, all digits ``0``-``9``, ``▁`` and, with ``keep_ascii``,
    every single printable ASCII character and its ``▁``-prefixed form).

    Every text in ``texts`` is tokenized into exactly the same pieces as with ``tokenizer``: the
    Unigram segmentation is the best-scoring split over the available pieces, and the split
    found with the full vocabulary uses only kept pieces, so it is still the best. Ids change
    (they are renumbered compactly, special tokens first, in the original order); other text
    degrades to smaller pieces or ``<unk>``. Extra sentinel tokens (``<extra_id_*>``) are
    dropped unless used. Raises ``TypeError`` for non-Unigram tokenizers (BPE merges cannot be
    pruned this way).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"restrict_tokenizer needs a fast tokenizer, got {type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type", "Unigram") != "Unigram" or not isinstance(model.get("vocab"), list):
        raise TypeError(
            f"restrict_tokenizer supports SentencePiece Unigram tokenizers (T5), got a "
            f"{model.get('type')!r} model; use the full tokenizer instead"
        )
    pieces = [p for p, _ in model["vocab"]]
    used: set[str] = set()
    batch: list[str] = []

    def flush() -> None:
        for enc in backend.encode_batch(batch, add_special_tokens=False):
            used.update(enc.tokens)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= 4096:
            flush()
    flush()
    keep = set(used) | {str(d) for d in range(10)} | {"\u2581"}
    if keep_ascii:
        keep |= set(_ASCII_PRINTABLE) | {"\u2581" + c for c in _ASCII_PRINTABLE}
    specials = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    sentinels = {s for s in specials if s.startswith("<extra_id_")}
    core_specials = specials - sentinels
    keep |= core_specials
    keep -= sentinels - used
    unk_piece = pieces[model["unk_id"]] if model.get("unk_id") is not None else None
    if unk_piece is not None:
        keep.add(unk_piece)

    new_vocab = [[p, s] for p, s in model["vocab"] if p in keep]
    new_ids = {p: i for i, (p, _) in enumerate(new_vocab)}
    model["vocab"] = new_vocab
    if unk_piece is not None:
        model["unk_id"] = new_ids[unk_piece]
    added = []
    for tok in spec.get("added_tokens", []):
        if tok["content"] in new_ids:
            added.append({**tok, "id": new_ids[tok["content"]]})
    spec["added_tokens"] = added
    _remap_post_processor(spec.get("post_processor"), new_ids)
    new_backend = Tokenizer.from_str(json.dumps(spec))
    kwargs = {
        name: getattr(tokenizer, name)
        for name in ("pad_token", "eos_token", "unk_token", "bos_token")
        if getattr(tokenizer, name, None) is not None and getattr(tokenizer, name) in new_ids
    }
    out = PreTrainedTokenizerFast(tokenizer_object=new_backend, **kwargs)
    out.model_max_length = getattr(tokenizer, "model_max_length", out.model_max_length)
    return out


def _remap_post_processor(proc: Any, new_ids: Mapping[str, int]) -> None:
    """Rewrite the special-token ids inside a (Sequence of) TemplateProcessing post-processor."""
    if not isinstance(proc, dict):
        return
    for sub in proc.get("processors", []) or []:
        _remap_post_processor(sub, new_ids)
    for name, entry in (proc.get("special_tokens") or {}).items():
        tokens = entry.get("tokens", [name])
        entry["ids"] = [new_ids[t] for t in tokens if t in new_ids]
