"""What an arm is: a recipe of five steps that :func:`ntl.lab.train.train_arm` and
:func:`ntl.lab.evaluate.evaluate_run` call in order, the same for every arm.

1. ``tokenizer(shared)``: the arm's tokenizer from the experiment's shared one (baselines add
   their own tokens to a copy);
2. ``build_model(profile, tokenizer, seed, init_from)``: a Hugging Face model whose ``forward``
   returns its loss (or, for token arms, the logits that ``NTLTrainer`` turns into CE + λ·NTL);
3. ``features(records, tokenizer, profile, with_targets)`` and ``collator(tokenizer)``: the
   examples as lists of ids (and values), and their batching;
4. ``trainer(...)``: the ``transformers.Trainer`` (subclass) that trains it -- the training
   loop, checkpoints, resume, logging, bf16 and DDP are the Trainer's, for every arm;
5. ``load_model(folder)`` and ``predict(model, tokenizer, questions, ...)``: the saved model and
   its answers as text, which ``ntl.lab.evaluate`` parses and scores like any other arm's;
   ``predict_numbers(..., decoding=...)`` the same under a number-aware decoding
   (:mod:`ntl.decoding`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ntl.lab.config import Profile


class ArmRecipe:
    """Base class of the arm recipes (one per kind: token arms, xVal, RT, regression head).

    Attributes:
        name: the arm name as given (``ce+ntl-was``, ``xval``, ...).
        kind: ``"token"``, ``"xval"``, ``"rt"`` or ``"regression-head"``.
        fine_tunes_base: whether the arm can start from a CE base model (``init_from``).
        own_tokenizer: whether the arm prepares a tokenizer other than the experiment's.
        greedy_only: whether :meth:`predict` ignores ``num_beams`` > 1.
    """

    kind: str = ""
    fine_tunes_base: bool = False
    own_tokenizer: bool = False
    greedy_only: bool = False

    def __init__(self, name: str) -> None:
        self.name = name

    def apply(self, profile: Profile) -> Profile:
        """The profile this arm trains with (a variant may change fields)."""
        return profile

    def tokenizer(self, shared: Any) -> Any:
        """The arm's tokenizer, made from the experiment's prepared tokenizer (not modified)."""
        return shared

    def build_model(
        self, profile: Profile, tokenizer: Any, seed: int, init_from: str | os.PathLike[str] | None
    ) -> Any:
        raise NotImplementedError

    def load_model(self, folder: str | os.PathLike[str]) -> Any:
        """The model saved in ``folder`` (``final/`` or a checkpoint), in eval mode."""
        raise NotImplementedError

    def features(
        self, records: Sequence[Mapping[str, Any]], tokenizer: Any, profile: Profile, with_targets: bool
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def collator(self, tokenizer: Any) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]:
        raise NotImplementedError

    def trainer(
        self,
        *,
        model: Any,
        args: Any,
        tokenizer: Any,
        train_dataset: Any,
        eval_dataset: Any,
        features: Sequence[Mapping[str, Any]],
        profile: Profile,
        callbacks: Sequence[Any],
    ) -> Any:
        """The ``transformers.Trainer`` that trains ``model``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Arm fields for ``train_config.json`` (set once :meth:`trainer` has run)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Arm fields for ``train_summary.json`` (counts gathered while encoding the data)."""
        return {}

    def predict(
        self,
        model: Any,
        tokenizer: Any,
        questions: Sequence[str],
        *,
        batch_size: int,
        num_beams: int,
        max_new_tokens: int,
        max_source_length: int,
        progress: bool,
        desc: str,
    ) -> list[str]:
        """The model's answer text for each question, in order."""
        raise NotImplementedError

    def predict_numbers(
        self,
        model: Any,
        tokenizer: Any,
        questions: Sequence[str],
        *,
        decoding: Any,
        batch_size: int,
        max_new_tokens: int,
        max_source_length: int,
        progress: bool,
        desc: str,
    ) -> list[Any]:
        """Each question's :class:`ntl.decoding.NumberAnswer` under ``decoding`` (a
        :class:`ntl.decoding.Decoding`), in order.

        This default answers ``greedy`` and ``beam`` through :meth:`predict`; arms that can
        sample or read digit distributions override it.

        Raises:
            ValueError: another decoding; the message names the arm.
        """
        from ntl.decoding import answer_from_samples

        if decoding.method not in ("greedy", "beam"):
            raise ValueError(
                f"arm {self.name!r} decodes only greedily or with beams, not {decoding.method!r}"
            )
        texts = self.predict(
            model, tokenizer, questions, batch_size=batch_size,
            num_beams=decoding.k if decoding.method == "beam" else 1, max_new_tokens=max_new_tokens,
            max_source_length=max_source_length, progress=progress, desc=desc,
        )
        return [answer_from_samples([text]) for text in texts]


def predict_in_batches(
    features: Sequence[Mapping[str, Any]],
    collate: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]],
    answer: Callable[[dict[str, Any]], list[str]],
    *,
    batch_size: int,
    device: Any,
    progress: bool,
    desc: str,
) -> list[str]:
    """``answer(batch)`` over ``features`` in batches of similar length (sorted by
    ``len(input_ids)``, deterministic), returned in the features' order."""
    import torch

    order = sorted(range(len(features)), key=lambda i: (len(features[i]["input_ids"]), i))
    texts = [""] * len(features)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(features), desc=desc, unit="ex")
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            batch = {k: v.to(device) for k, v in collate([features[i] for i in idx]).items()}
            for i, text in zip(idx, answer(batch)):
                texts[i] = text
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.close()
    return texts
