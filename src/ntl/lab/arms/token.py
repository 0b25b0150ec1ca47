"""Token arms: CE + λ·NTL on a plain language model (T5 or decoder-only), the paper's method and
its ablations, trained by :class:`ntl.integrations.hf.NTLTrainer`.

Arm names: ``ce`` (λ = 0; NTL-WAS is still computed and logged), ``ce+ntl-<loss>`` for any loss in
``ntl.losses.functional.LOSSES`` (``was``, ``mse``, ``mae``, ``huber``, ``number-level``,
``was-soft<σ>``), with an optional λ suffix ``ce+ntl-was@0.8`` and a variant suffix
``:multidigit`` / ``:decoder`` / ``:alltokens`` / ``:scratch`` (:data:`ARM_VARIANTS`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ntl.lab.arms.base import ArmRecipe
from ntl.lab.config import Profile, override

_ARM_RE = re.compile(
    r"^ce(?:\+ntl-(?P<loss>[a-z][a-z_-]*?)(?P<sigma>[0-9]+(?:\.[0-9]*)?)?)?"
    r"(?:@(?P<lam>[0-9.eE+-]+))?(?::(?P<variant>[a-z-]+))?$"
)
#: Losses that take a width σ as a suffix (``ce+ntl-was-soft0.5``), and its default.
SIGMA_LOSSES: dict[str, float] = {"was-soft": 0.5}

# Arm variants (``<arm>:<variant>``): profile fields a variant changes, for the paper's ablations.
# ``multidigit``: the base tokenizer's own multi-digit pieces (T5's ``▁130``, ``3.5``), NTL over
# every plain-decimal token (numbers mode) -- the tokenizer ablation. ``decoder``: a decoder-only
# model of the same size name (``t5-tiny`` -> ``llama-tiny``; prompt + answer, loss on the answer
# only) instead of T5. ``alltokens``: NTL over every number token of the tokenizer (T5's ``▁7``
# besides ``7``), not only those that occur as labels -- the token-set ablation. ``scratch`` (in a
# profile with a base stage): train from random initialisation, i.e. the from-scratch regime on
# the same footing -- with a pretrained base (``base_modules``) the arms' own recipe and data,
# otherwise the base's own recipe and data (``ce:scratch`` is then the base itself).
def _scratch(profile: Profile) -> dict[str, Any]:
    from ntl.lab.config import base_profile

    if profile.base_steps <= 0:
        raise ValueError("the :scratch variant needs a profile with a base stage (base_steps > 0)")
    if profile.base_modules:
        return {"base_steps": 0}
    base = base_profile(profile)
    fields = ("max_steps", "lr", "warmup_steps", "lr_scheduler", "train_slice", "base_steps")
    return {k: getattr(base, k) for k in fields}


def _decoder_model(profile: Profile) -> dict[str, Any]:
    from ntl.lab.models import MODEL_SIZES

    size = profile.model.split("-", 1)[-1]
    return {"model": f"llama-{size}" if f"llama-{size}" in MODEL_SIZES else "llama-tiny"}


ARM_VARIANTS: dict[str, Any] = {
    "multidigit": lambda profile: {"split_digits": False, "number_mode": "numbers"},
    "decoder": _decoder_model,
    "alltokens": lambda profile: {"ntl_label_tokens": False},
    "scratch": _scratch,
}


# ---------------------------------------------------------------------- arms
@dataclass(frozen=True)
class Arm:
    """A parsed arm name: the NTL variant, its weight λ (0 for the CE baseline) and options
    (``sigma`` of the soft-target loss)."""

    name: str
    ntl: str
    lam: float
    variant: str | None = None
    options: tuple[tuple[str, float], ...] = ()

    def apply(self, profile: Profile) -> Profile:
        """The profile this arm trains with (its variant's fields replaced)."""
        return override(profile, ARM_VARIANTS[self.variant](profile)) if self.variant else profile

    @property
    def own_tokenizer(self) -> bool:
        """Whether the variant needs a tokenizer other than the experiment's shared one."""
        return self.variant == "multidigit"

    @property
    def is_baseline(self) -> bool:
        return self.lam == 0.0


def parse_arm(name: str, default_lam: float = 0.3) -> Arm:
    """Parse ``ce`` | ``ce+ntl-<loss>`` | ``ce+ntl-<loss>@<lam>``, each optionally followed by
    ``:<variant>`` (see `ARM_VARIANTS`, e.g. ``ce+ntl-was:multidigit``), into an :class:`Arm`.
    The soft-target loss takes its width σ (value units) as a suffix: ``ce+ntl-was-soft0.25@0.3``
    (default σ: `SIGMA_LOSSES`).

    The ``ce`` arm computes NTL-WAS with λ = 0 so its NTL curve can be compared.
    """
    from ntl.losses.functional import LOSSES

    m = _ARM_RE.match(name.strip())
    if m is None:
        raise ValueError(
            f"arm {name!r} is not 'ce' or 'ce+ntl-<loss>[@lam]' (optionally ':<variant>') with "
            f"<loss> in {sorted(LOSSES)} and <variant> in {sorted(ARM_VARIANTS)}"
        )
    variant = m.group("variant")
    if variant is not None and variant not in ARM_VARIANTS:
        raise ValueError(f"arm {name!r}: unknown variant {variant!r}; choose one of {sorted(ARM_VARIANTS)}")
    loss = m.group("loss")
    if loss is None:
        if m.group("lam") is not None:
            raise ValueError(f"arm {name!r}: the ce arm takes no λ")
        return Arm(name, "was", 0.0, variant)
    if loss not in LOSSES:
        raise ValueError(f"arm {name!r}: unknown NTL {loss!r}; choose one of {sorted(LOSSES)}")
    options: tuple[tuple[str, float], ...] = ()
    if loss in SIGMA_LOSSES:
        sigma = float(m.group("sigma")) if m.group("sigma") is not None else SIGMA_LOSSES[loss]
        if not sigma > 0:
            raise ValueError(f"arm {name!r}: σ must be > 0, e.g. ce+ntl-{loss}0.5")
        options = (("sigma", sigma),)
    elif m.group("sigma") is not None:
        raise ValueError(f"arm {name!r}: only {sorted(SIGMA_LOSSES)} take a σ suffix")
    lam = float(m.group("lam")) if m.group("lam") is not None else float(default_lam)
    if lam < 0:
        raise ValueError(f"arm {name!r}: λ must be >= 0")
    return Arm(name, loss, lam, variant, options)


# ---------------------------------------------------------------------- the recipe
class TokenRecipe(ArmRecipe):
    """CE + λ·NTL on a plain T5 / decoder-only language model (see :func:`parse_arm`)."""

    kind = "token"
    fine_tunes_base = True

    def __init__(self, arm: Arm) -> None:
        super().__init__(arm.name)
        self.arm = arm
        self.own_tokenizer = arm.own_tokenizer
        self._described: dict[str, Any] = {}

    def apply(self, profile: Profile) -> Profile:
        return self.arm.apply(profile)

    def build_model(self, profile, tokenizer, seed, init_from):
        from ntl.lab.models import build_model, load_model, model_spec, model_vocab_size

        mspec = model_spec(profile.model, dropout=profile.dropout)
        vocab_size = model_vocab_size(tokenizer)
        if init_from is None:
            return build_model(mspec, vocab_size, tokenizer=tokenizer, seed=seed)
        model = load_model(init_from, causal=not mspec.is_encoder_decoder)
        model.train()
        if model.config.vocab_size != vocab_size:
            raise ValueError(
                f"{init_from} has {model.config.vocab_size} logits but the tokenizer needs "
                f"{vocab_size}: the base was trained with another tokenizer"
            )
        return model

    def load_model(self, folder):
        from ntl.lab.models import load_model

        return load_model(folder)

    def features(self, records, tokenizer, profile, with_targets):
        from ntl.lab.data.collate import encode
        from ntl.lab.models import model_spec

        causal = not model_spec(profile.model).is_encoder_decoder
        return encode(records, tokenizer, causal=causal, max_source_length=profile.max_source_length,
                      max_target_length=profile.max_target_length, with_labels=with_targets)

    def collator(self, tokenizer):
        from ntl.lab.data.collate import Collator, pad_id

        return Collator(pad_id(tokenizer))

    def trainer(self, *, model, args, tokenizer, train_dataset, eval_dataset, features, profile,
                callbacks):
        from ntl.integrations.hf import NTLTrainer
        from ntl.losses.modules import CrossEntropyWithNTL
        from ntl.numbers import NumberVocab

        vocab = NumberVocab.from_tokenizer(
            tokenizer, mode=profile.number_mode, vocab_size=model.config.vocab_size
        )
        if profile.ntl_label_tokens:
            vocab = vocab.restricted({t for f in features for t in f["labels"] if t >= 0})
        loss = CrossEntropyWithNTL(vocab, ntl=self.arm.ntl, lam=self.arm.lam, **dict(self.arm.options))
        self._described = {
            "variant": self.arm.variant,
            "number_mode": profile.number_mode,
            "ntl": self.arm.ntl,
            "lam": self.arm.lam,
            "ntl_options": dict(self.arm.options),
            "number_tokens": vocab.number_tokens,
        }
        causal = not bool(model.config.is_encoder_decoder)
        return NTLTrainer(
            model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            data_collator=self.collator(tokenizer), processing_class=tokenizer, ntl_loss=loss,
            causal=causal, callbacks=list(callbacks) or None,
        )

    def describe(self) -> dict[str, Any]:
        return dict(self._described)

    def predict(self, model, tokenizer, questions, *, batch_size, num_beams, max_new_tokens,
                max_source_length, progress, desc):
        return generate_answers(
            model, tokenizer, questions, batch_size=batch_size, num_beams=num_beams,
            max_new_tokens=max_new_tokens, max_source_length=max_source_length, progress=progress,
            desc=desc,
        )

    def predict_numbers(self, model, tokenizer, questions, *, decoding, batch_size, max_new_tokens,
                        max_source_length, progress, desc):
        return generate_number_answers(
            model, tokenizer, questions, decoding=decoding, batch_size=batch_size,
            max_new_tokens=max_new_tokens, max_source_length=max_source_length, progress=progress,
            desc=desc,
        )


# ---------------------------------------------------------------------- generation
def generate_answers(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    batch_size: int = 256,
    num_beams: int = 1,
    max_new_tokens: int = 32,
    max_source_length: int = 160,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Generated answer texts for ``questions``, in order: greedy, or the best of ``num_beams``
    beams (see :func:`generate_number_answers`)."""
    from ntl.decoding import Decoding

    decoding = Decoding("beam", k=num_beams) if num_beams > 1 else Decoding()
    answers = generate_number_answers(
        model, tokenizer, questions, decoding=decoding, batch_size=batch_size,
        max_new_tokens=max_new_tokens, max_source_length=max_source_length, progress=progress,
        desc=desc,
    )
    return [a.text for a in answers]


def generate_number_answers(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    decoding: Any = None,
    batch_size: int = 256,
    max_new_tokens: int = 32,
    max_source_length: int = 160,
    progress: bool = True,
    desc: str = "generate",
) -> list[Any]:
    """Each question's :class:`ntl.decoding.NumberAnswer` under ``decoding`` (greedy by
    default), in order.

    Questions are batched by length (deterministically) to limit padding; causal models get
    left-padded prompts ``question + eos`` and only the new tokens are decoded. Sampling
    decodings reseed every batch with ``decoding.seed``, so the answers are reproducible.
    """
    from ntl.decoding import Decoding, generate_numbers
    from ntl.lab.data.collate import Collator, encode, pad_id
    from ntl.lab.models import is_encoder_decoder

    decoding = decoding or Decoding()
    causal = not is_encoder_decoder(model)
    feats = encode(
        [{"question": q, "answer": ""} for q in questions],
        tokenizer,
        causal=causal,
        max_source_length=max_source_length,
        with_labels=False,
    )
    order = sorted(range(len(feats)), key=lambda i: (len(feats[i]["input_ids"]), i))
    collate = Collator(pad_id(tokenizer), padding_side="left" if causal else "right")
    vocab_size = model.config.vocab_size
    suppress = list(range(len(tokenizer), vocab_size)) or None  # padding ids of the embedding
    gen_kwargs: dict[str, Any] = dict(pad_token_id=pad_id(tokenizer), eos_token_id=tokenizer.eos_token_id)
    if suppress:
        gen_kwargs["suppress_tokens"] = suppress
    number_vocab = None
    if decoding.method == "expected-digits":
        from ntl.numbers import NumberVocab

        number_vocab = NumberVocab.from_tokenizer(tokenizer, mode="digits", vocab_size=vocab_size)
    answers: list[Any] = [None] * len(feats)
    device = next(model.parameters()).device
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(feats), desc=desc, unit="ex")
    for idx in batches:
        batch = collate([feats[i] for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        got = generate_numbers(model, tokenizer, batch, decoding, max_new_tokens=max_new_tokens,
                               number_vocab=number_vocab, **gen_kwargs)
        for i, answer in zip(idx, got):
            answers[i] = answer
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return answers
