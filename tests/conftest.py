"""Shared fixtures: the real tokenizers in ../shared/tokenizers, loaded once per session."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZERS = SHARED / "tokenizers"
os.environ.setdefault("NTL_TOKENIZERS", str(TOKENIZERS))
torch.set_num_threads(min(2, torch.get_num_threads()))


@functools.cache
def tokenizer(name: str):
    """A shared tokenizer by folder name, loaded once (tests never mutate it)."""
    from ntl.numbers import load_tokenizer

    return load_tokenizer(TOKENIZERS / name)


@pytest.fixture(scope="session")
def load_tok():
    return tokenizer
