"""What the tests share: paths, small number vocabularies, the devices to run on.

Test modules import from here (never from conftest).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from ntl import NumberVocab

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZERS = SHARED / "tokenizers"



@functools.cache
def tokenizer(name: str):
    """A shared tokenizer by folder name, loaded once (tests never mutate it)."""
    from ntl.numbers import load_tokenizer

    return load_tokenizer(TOKENIZERS / name)


#: Devices the loss tests run on: the CPU always, CUDA when this machine has it.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: ``@on_devices`` parametrizes a test's ``device`` argument over `DEVICES`.
on_devices = pytest.mark.parametrize("device", DEVICES)

V = 60


def digit_vocab() -> NumberVocab:
    """60 ids: 40 words, the digits 0-9 at 40-49, ``.`` at 50, ``-`` at 51, padding to 60."""
    tok = {f"t{i}": i for i in range(40)}
    tok.update({str(d): 40 + d for d in range(10)})
    tok.update({".": 50, "-": 51})
    return NumberVocab.from_vocab(tok, vocab_size=V)
