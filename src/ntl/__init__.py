"""ntl: make language models regress numbers instead of guessing them.

The Number Token Loss (Zausinger et al., ICML 2025) for any tokenizer::

    from ntl import NumberVocab, CrossEntropyWithNTL
    vocab = NumberVocab.from_tokenizer(tokenizer, mode="digits", vocab_size=model_vocab_size)
    loss = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)(logits, labels).total
"""

from ntl.losses import (
    CrossEntropyWithNTL,
    LinearCrossEntropyWithNTL,
    LossOutput,
    NumberTokenLoss,
    cross_entropy_with_ntl,
    linear_cross_entropy_with_ntl,
)
from ntl.numbers import NumberVocab

__version__ = "0.2.0"  # the package version (pyproject.toml reads it); see CHANGELOG.md
__all__ = [
    "CrossEntropyWithNTL",
    "LinearCrossEntropyWithNTL",
    "LossOutput",
    "NumberTokenLoss",
    "NumberVocab",
    "__version__",
    "cross_entropy_with_ntl",
    "linear_cross_entropy_with_ntl",
]
