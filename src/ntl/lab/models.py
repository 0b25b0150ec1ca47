"""Models for the lab: a T5 encoder-decoder (the paper's backbone) and a Llama-style decoder-only model.

Both are built from a named size with random initialisation; nothing is downloaded. The vocabulary
size comes from the tokenizer (``len(tokenizer)``, optionally padded to a multiple of 8), and the
:class:`~ntl.NumberVocab` must then be built with ``vocab_size=model.config.vocab_size`` so the loss
sees logits of the model's width.

Example::

    from ntl.lab.models import build_model, model_vocab_size
    model = build_model("t5-tiny", vocab_size=model_vocab_size(tok), tokenizer=tok)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Arch = Literal["t5", "llama"]


@dataclass(frozen=True)
class ModelSpec:
    """Architecture hyper-parameters of a named model size.

    ``arch`` is ``"t5"`` (encoder-decoder, ``num_layers`` encoder + ``num_decoder_layers`` decoder
    blocks, relative position buckets) or ``"llama"`` (decoder-only, ``num_layers`` blocks, RoPE).
    ``d_kv`` is the per-head width (T5) / head_dim (Llama). Input and output embeddings are tied
    in both, as in T5.
    """

    arch: Arch
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    d_kv: int
    num_decoder_layers: int | None = None
    dropout: float = 0.0
    max_positions: int = 512
    feed_forward_proj: str = "relu"

    def __post_init__(self) -> None:
        if self.arch not in ("t5", "llama"):
            raise ValueError(f"ModelSpec.arch must be 't5' or 'llama', got {self.arch!r}")
        for name in ("d_model", "num_layers", "num_heads", "d_ff", "d_kv"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelSpec.{name} must be positive, got {getattr(self, name)!r}")

    @property
    def is_encoder_decoder(self) -> bool:
        return self.arch == "t5"


# Named sizes. "micro" sizes are for tests; "tiny" is the quick profile's CPU model;
# "t5-small"/"t5-base" follow the original T5 configurations (the paper used T5-base).
MODEL_SIZES: dict[str, ModelSpec] = {
    "t5-micro": ModelSpec("t5", d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16),
    "t5-tiny": ModelSpec("t5", d_model=128, num_layers=3, num_heads=4, d_ff=512, d_kv=32),
    "t5-mini": ModelSpec("t5", d_model=256, num_layers=4, num_heads=4, d_ff=1024, d_kv=64),
    "t5-small": ModelSpec("t5", d_model=512, num_layers=6, num_heads=8, d_ff=2048, d_kv=64, dropout=0.1),
    "t5-base": ModelSpec("t5", d_model=768, num_layers=12, num_heads=12, d_ff=3072, d_kv=64, dropout=0.1),
    "llama-micro": ModelSpec(
        "llama", d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16, feed_forward_proj="silu"
    ),
    "llama-tiny": ModelSpec(
        "llama", d_model=128, num_layers=6, num_heads=4, d_ff=512, d_kv=32, feed_forward_proj="silu"
    ),
    "llama-small": ModelSpec(
        "llama", d_model=512, num_layers=8, num_heads=8, d_ff=2048, d_kv=64, feed_forward_proj="silu"
    ),
}


def model_spec(name: str | ModelSpec, **overrides: Any) -> ModelSpec:
    """Return the :class:`ModelSpec` of a named size, with fields replaced by ``overrides``.

    Raises ``KeyError`` naming the known sizes when ``name`` is unknown.
    """
    if isinstance(name, ModelSpec):
        spec = name
    else:
        try:
            spec = MODEL_SIZES[name]
        except KeyError:
            raise KeyError(
                f"unknown model size {name!r}; known sizes: {', '.join(sorted(MODEL_SIZES))}"
            ) from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(spec, **overrides) if overrides else spec


def model_vocab_size(tokenizer: PreTrainedTokenizerBase, multiple_of: int = 8) -> int:
    """Vocabulary size for a model trained with ``tokenizer``: ``len(tokenizer)`` rounded up.

    Rounding up to a multiple of 8 is friendlier to GPU kernels; the extra ids are never produced by
    the tokenizer and are not number tokens. Use ``multiple_of=1`` for the exact size.
    """
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    n = len(tokenizer)
    return ((n + multiple_of - 1) // multiple_of) * multiple_of


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """``pad``/``eos``/``bos``/``decoder_start`` ids for a model config, with sane fallbacks.

    T5 tokenizers have pad (0) and eos (1) but no bos; GPT-2-style ones have eos only. Missing pad
    falls back to eos; missing bos falls back to eos; T5's decoder starts with pad.
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if eos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos token; set tokenizer.eos_token first"
        )
    if pad is None:
        pad = eos
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    return {"pad": int(pad), "eos": int(eos), "bos": int(bos), "decoder_start": int(pad)}


def build_model(
    spec: str | ModelSpec,
    vocab_size: int,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    bos_token_id: int | None = None,
    seed: int | None = None,
) -> PreTrainedModel:
    """Build a randomly initialised model of size ``spec`` with ``vocab_size`` output logits.

    Args:
        spec: a name from :data:`MODEL_SIZES` or a :class:`ModelSpec`.
        vocab_size: width of the embedding and LM head (see :func:`model_vocab_size`).
        tokenizer: if given, the special token ids are taken from it (explicit ids win).
        seed: if given, ``torch.manual_seed(seed)`` right before initialisation, so the same seed
            gives the same weights.

    Returns:
        ``T5ForConditionalGeneration`` (arch ``t5``) or ``LlamaForCausalLM`` (arch ``llama``),
        in float32, in train mode.
    """
    import torch

    s = model_spec(spec)
    ids = special_token_ids(tokenizer) if tokenizer is not None else {}
    pad = pad_token_id if pad_token_id is not None else ids.get("pad", 0)
    eos = eos_token_id if eos_token_id is not None else ids.get("eos", 1)
    bos = bos_token_id if bos_token_id is not None else ids.get("bos", eos)
    if tokenizer is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    for name, value in (("pad", pad), ("eos", eos), ("bos", bos)):
        if not 0 <= value < vocab_size:
            raise ValueError(f"{name}_token_id={value} is outside [0, vocab_size={vocab_size})")

    if seed is not None:
        torch.manual_seed(seed)

    if s.arch == "t5":
        from transformers import T5Config, T5ForConditionalGeneration

        config = T5Config(**t5_config_kwargs(s, vocab_size, pad=pad, eos=eos))
        model = T5ForConditionalGeneration(config)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=s.d_model,
            intermediate_size=s.d_ff,
            num_hidden_layers=s.num_layers,
            num_attention_heads=s.num_heads,
            num_key_value_heads=s.num_heads,
            head_dim=s.d_kv,
            hidden_act=s.feed_forward_proj,
            max_position_embeddings=s.max_positions,
            attention_dropout=s.dropout,
            tie_word_embeddings=True,
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
        )
        model = LlamaForCausalLM(config)
    model.train()
    return model


def is_encoder_decoder(model: Any) -> bool:
    """True for encoder-decoder models (labels aligned with decoder logits), False for causal LMs."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def count_parameters(model: Any) -> dict[str, int]:
    """``{"total": ..., "embedding": ..., "non_embedding": ...}`` (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = model.get_input_embeddings().weight.numel()
    return {"total": int(total), "embedding": int(emb), "non_embedding": int(total - emb)}


def t5_config_kwargs(spec: str | ModelSpec, vocab_size: int, *, pad: int, eos: int) -> dict[str, Any]:
    """``transformers.T5Config`` keyword arguments of a T5 size (``spec.arch == "t5"``), for
    :func:`build_model` and the baselines' T5-based models (same backbone, same size)."""
    s = model_spec(spec)
    if s.arch != "t5":
        raise ValueError(f"{spec!r} is a {s.arch} model; a T5 (encoder-decoder) size is needed here")
    return dict(
        vocab_size=vocab_size,
        d_model=s.d_model,
        d_kv=s.d_kv,
        d_ff=s.d_ff,
        num_layers=s.num_layers,
        num_decoder_layers=s.num_decoder_layers or s.num_layers,
        num_heads=s.num_heads,
        dropout_rate=s.dropout,
        feed_forward_proj=s.feed_forward_proj,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=pad,
    )


def load_model(path: str | os.PathLike[str], causal: bool | None = None) -> Any:
    """Load a saved token-arm model (``final/`` or a checkpoint) in eval mode on CPU/GPU.

    ``causal`` picks decoder-only vs encoder-decoder; ``None`` reads it from the config.
    Raises :class:`ntl.lab.file_checks.CorruptFileError` naming a truncated or corrupt weights file.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from ntl.lab.file_checks import check_model_folder

    check_model_folder(path)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if causal is None:
        causal = not getattr(config, "is_encoder_decoder", False)
    cls = AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM
    model = cls.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return model
