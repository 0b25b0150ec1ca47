"""Shared fixtures: the real tokenizers in ../shared/tokenizers, loaded once per session."""

from __future__ import annotations

import os

import pytest
import torch

# TOKENIZERS and tokenizer are re-exported for tests that still import them from here.
from tests.helpers import TOKENIZERS, tokenizer  # noqa: F401

os.environ.setdefault("NTL_TOKENIZERS", str(TOKENIZERS))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def load_tok():
    return tokenizer
