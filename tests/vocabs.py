"""Small number vocabularies shared by the loss tests."""

from __future__ import annotations

from ntl import NumberVocab

V = 60


def digit_vocab() -> NumberVocab:
    """60 ids: 40 words, the digits 0-9 at 40-49, ``.`` at 50, ``-`` at 51, padding to 60."""
    tok = {f"t{i}": i for i in range(40)}
    tok.update({str(d): 40 + d for d in range(10)})
    tok.update({".": 50, "-": 51})
    return NumberVocab.from_vocab(tok, vocab_size=V)
