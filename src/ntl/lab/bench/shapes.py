"""The benchmark shapes and dtypes: logits (batch, seq, vocab) and whose number tokens they use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    """A benchmark shape: logits (batch, seq, vocab) and whose number tokens it uses."""

    name: str
    batch: int
    seq: int
    vocab: int
    tokenizer: str | None  # a tokenizer name (ntl.lab.tokenization), or None: synthetic vocabulary
    mode: str = "digits"

    @property
    def label(self) -> str:
        src = self.tokenizer or "synthetic"
        return f"({self.batch}, {self.seq}, {self.vocab}) {src} {self.mode}"


SHAPES: dict[str, Shape] = {
    "llama2": Shape("llama2", 8, 512, 32000, "llama2", "digits"),
    "llama3": Shape("llama3", 4, 1024, 128256, "llama3", "numbers"),
    "ntloss": Shape("ntloss", 16, 1000, 10000, None, "digits"),  # ntloss's own speed test
}
QUICK_SHAPES: dict[str, Shape] = {"tiny": Shape("tiny", 2, 64, 2000, None, "digits")}
DTYPES = ("fp32", "bf16")


def parse_shape(text: str, quick: bool) -> Shape:
    """A ``--shapes`` entry: a name in `SHAPES` / `QUICK_SHAPES`, or ``B,T,V`` (synthetic
    vocabulary with 10 digit tokens)."""
    table = QUICK_SHAPES if quick else SHAPES
    if text in SHAPES or text in QUICK_SHAPES:
        return {**SHAPES, **QUICK_SHAPES}[text] if text not in table else table[text]
    try:
        b, t, v = (int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        from ntl.errors import UsageError

        raise UsageError(f"--shapes entry {text!r} is neither a name in "
                         f"{sorted(SHAPES)} nor B,T,V") from None
    return Shape(text, b, t, v, None, "digits")


def torch_dtype(name: str) -> Any:
    """``"fp32"`` / ``"bf16"`` -> the torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
