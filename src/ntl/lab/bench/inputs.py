"""What the benchmarks run on: number vocabularies, random labels with a share of number tokens,
and the reference losses they compare against (CE + λ·NTL unfused, ntloss)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ntl.lab.bench.shapes import Shape

LAM = 0.3
"""λ of every CE + λ·NTL case."""


def synthetic_tokenizer(vocab_size: int) -> Any:
    """A Hugging Face fast tokenizer: digits 0..9 at ids 0..9, then ``tok<i>`` words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {str(d): d for d in range(10)}
    words.update({f"tok{i}": i for i in range(10, vocab_size - 1)})
    words["[UNK]"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def tokenizer_and_vocab(shape: Shape) -> tuple[Any, Any]:
    """The shape's tokenizer (named, or `synthetic_tokenizer`) and its `NumberVocab`."""
    from ntl import NumberVocab
    from ntl.lab.tokenization import load_named_tokenizer

    tok = (synthetic_tokenizer(shape.vocab) if shape.tokenizer is None
           else load_named_tokenizer(shape.tokenizer))
    vocab = NumberVocab.from_tokenizer(tok, mode=shape.mode, vocab_size=shape.vocab)
    return tok, vocab.require_numbers()


def digit_vocab(vocab_size: int) -> Any:
    """A `NumberVocab` with digits 0..9 at ids 0..9 and ``tok<i>`` words after them (no
    tokenizer needed)."""
    from ntl import NumberVocab

    words = {str(i): i for i in range(10)}
    words.update({f"tok{i}": i for i in range(10, vocab_size)})
    return NumberVocab.from_vocab(words)


def random_labels(vocab: Any, n: int, fraction: float, generator: Any) -> Any:
    """(n,) labels: each a random number token with probability ``fraction``, else a random
    non-number token."""
    import torch

    is_num = torch.rand(n, generator=generator) < fraction
    others = torch.nonzero(torch.isnan(vocab.values)).flatten()
    numbers = vocab.number_ids
    labels = others[torch.randint(0, others.numel(), (n,), generator=generator)]
    picks = numbers[torch.randint(0, numbers.numel(), (n,), generator=generator)]
    return torch.where(is_num, picks, labels)


def plain_ce_ntl(table: Any, ntl: str) -> Callable[..., Any]:
    """CE + λ·NTL as two independent functional ops (the unfused reference path)."""
    from ntl.losses import functional
    from ntl.losses.modules import LossOutput

    loss_fn = functional.get_loss(ntl)

    def run(logits: Any, labels: Any) -> LossOutput:
        ce = functional.cross_entropy(logits, labels)
        ntl_value = loss_fn(logits, labels, table).float()
        return LossOutput(ce + LAM * ntl_value, ce, ntl_value)

    return run


def ntloss_loss(tok: Any, shape: Shape, reweigh: bool) -> Any:
    """ntloss.NTLoss on a copy of the tokenizer (digit_level adds digit tokens to it)."""
    import copy

    from ntloss import NTLoss

    return NTLoss(copy.deepcopy(tok), vocab_size=shape.vocab, digit_level=shape.mode == "digits",
                  reweigh=reweigh)
