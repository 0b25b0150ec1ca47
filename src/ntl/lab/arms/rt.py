"""The Regression-Transformer arms (``rt``, ``rt+ntl[-<loss>][@λ]``): numbers as place-value tokens
``_d_p_`` with a fixed numeric encoding added to their embeddings (:mod:`ntl.lab.encodings.rt`).
The model is a T5 whose ``forward`` returns CE; :class:`ntl.integrations.hf.NTLTrainer` adds
λ·NTL over the place-value tokens (valued by their digit), exactly as for the token arms
(``rt`` logs NTL-MSE with λ = 0). Answers are decoded greedily and read back from the
place-value tokens."""

from __future__ import annotations

import copy
import warnings
from typing import Any

from ntl.lab.arms.base import ArmRecipe, predict_in_batches
from ntl.lab.encodings import EncodingArm


def _clip(ids: list[int], limit: int, eos: int) -> list[int]:
    return ids[: limit - 1] + [eos]


class RTRecipe(ArmRecipe):
    """RT (+NTL) on a T5 of the profile's size; ``encoding_scale`` is the numeric encoding's
    amplitude."""

    kind = "rt"
    greedy_only = True

    def __init__(self, arm: EncodingArm, encoding_scale: float = 1.0) -> None:
        super().__init__(arm.name)
        self.arm = arm
        self.encoding_scale = float(encoding_scale)
        self.truncated_numbers = 0
        self._described: dict[str, Any] = {}

    def tokenizer(self, shared):
        from ntl.lab.encodings.rt import add_rt_tokens

        return add_rt_tokens(copy.deepcopy(shared))

    def build_model(self, profile, tokenizer, seed, init_from):
        from ntl.lab.arms.backbone import backbone_config, seeded
        from ntl.lab.encodings.rt import RT_TOKENS, RTT5, RTConfig

        if init_from is not None:
            raise ValueError(f"arm {self.name!r} has its own model and cannot start from a base")
        token_ids = dict(zip(RT_TOKENS, tokenizer.convert_tokens_to_ids(list(RT_TOKENS))))
        config = RTConfig(rt_token_ids=token_ids, rt_encoding_scale=self.encoding_scale,
                          **backbone_config(profile, tokenizer, self.name))
        return seeded(seed, lambda: RTT5(config))

    def load_model(self, folder):
        from ntl.lab.arms.backbone import load_eval
        from ntl.lab.encodings.rt import RTT5

        return load_eval(RTT5, folder)

    def features(self, records, tokenizer, profile, with_targets):
        from ntl.lab.encodings.rt import encode_texts

        eos = int(tokenizer.eos_token_id)
        q_ids, n_q = encode_texts(tokenizer, [str(r["question"]) for r in records])
        out = [{"input_ids": _clip(ids, profile.max_source_length, eos)} for ids in q_ids]
        n_a = 0
        if with_targets:
            a_ids, n_a = encode_texts(tokenizer, [str(r["answer"]) for r in records])
            for feat, ids in zip(out, a_ids):
                feat["labels"] = _clip(ids, profile.max_target_length, eos)
        self.truncated_numbers += n_q + n_a
        if n_q + n_a:
            warnings.warn(f"RT: {n_q + n_a} numbers had decimals below 10^-12 and were truncated",
                          stacklevel=2)
        return out

    def collator(self, tokenizer):
        from ntl.lab.data.collate import Collator, pad_id

        return Collator(pad_id(tokenizer))

    def trainer(self, *, model, args, tokenizer, train_dataset, eval_dataset, features, profile,
                callbacks):
        from ntl.integrations.hf import NTLTrainer
        from ntl.lab.encodings.rt import rt_number_vocab
        from ntl.losses.modules import CrossEntropyWithNTL

        vocab = rt_number_vocab(tokenizer, model.config.vocab_size)
        loss = CrossEntropyWithNTL(vocab, ntl=self.arm.ntl or "mse", lam=self.arm.lam)
        self._described = {"encoding": "rt", "ntl": self.arm.ntl, "lam": self.arm.lam,
                           "number_tokens": vocab.number_tokens, "generation": "greedy"}
        return NTLTrainer(
            model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            data_collator=self.collator(tokenizer), processing_class=tokenizer, ntl_loss=loss,
            causal=False, callbacks=list(callbacks) or None,
        )

    def describe(self) -> dict[str, Any]:
        return dict(self._described)

    def summary(self) -> dict[str, Any]:
        return {"rt_truncated_numbers": self.truncated_numbers}

    def predict(self, model, tokenizer, questions, *, batch_size, num_beams, max_new_tokens,
                max_source_length, progress, desc):
        from ntl.lab.arms.backbone import prediction_setup
        from ntl.lab.encodings.common import cut_at_eos
        from ntl.lab.encodings.rt import rt_to_text

        feats, device, keep_out = prediction_setup(self, model, tokenizer, questions, max_source_length)
        special = set(tokenizer.all_special_ids)
        eos, pad = model.eos_id, model.pad_id

        def answer(batch):
            ids, _ = model.greedy(batch["input_ids"], batch["attention_mask"],
                                  max_new_tokens=max_new_tokens, logits_filter=keep_out)
            texts = []
            for row in ids.tolist():
                kept = [i for i in cut_at_eos(row, eos, pad) if i not in special]
                texts.append(rt_to_text(tokenizer.convert_ids_to_tokens(kept)))
            return texts

        return predict_in_batches(feats, self.collator(tokenizer), answer, batch_size=batch_size,
                                  device=device, progress=progress, desc=desc)
