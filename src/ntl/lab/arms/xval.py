"""The xVal arm (``xval``, ``xval-linear``): one ``[NUM]`` token per number, its embedding scaled by
the value, a number head regressing it (:mod:`ntl.lab.encodings.xval`). The model's ``forward``
returns CE + MSE, trained by :class:`ntl.lab.arms.parts_trainer.PartsTrainer`; answers are decoded
greedily, each generated ``[NUM]`` printed as the head's value."""

from __future__ import annotations

import copy
import math
from typing import Any

from ntl.lab.arms.base import ArmRecipe, predict_in_batches
from ntl.lab.encodings import EncodingArm


def _clip(ids: list[int], limit: int, eos: int) -> list[int]:
    return ids[: limit - 1] + [eos]


class XValRecipe(ArmRecipe):
    """xVal on a T5 of the profile's size. ``mse_weight`` weighs the number head's MSE."""

    kind = "xval"
    greedy_only = True

    def __init__(self, arm: EncodingArm, mse_weight: float = 1.0, linear_scale: float = 1.0) -> None:
        super().__init__(arm.name)
        self.arm = arm
        self.mse_weight = float(mse_weight)
        self.linear_scale = float(linear_scale)

    def tokenizer(self, shared):
        from ntl.lab.encodings.xval import add_num_token

        return add_num_token(copy.deepcopy(shared))

    def build_model(self, profile, tokenizer, seed, init_from):
        from ntl.lab.arms.backbone import backbone_config, seeded
        from ntl.lab.encodings.xval import XValConfig, XValT5, num_id

        if init_from is not None:
            raise ValueError(f"arm {self.name!r} has its own model and cannot start from a base")
        config = XValConfig(
            num_token_id=num_id(tokenizer), xval_scaling=self.arm.scaling or "signed-log",
            xval_scale=self.linear_scale, mse_weight=self.mse_weight,
            **backbone_config(profile, tokenizer, self.name),
        )
        return seeded(seed, lambda: XValT5(config))

    def load_model(self, folder):
        from ntl.lab.arms.backbone import load_eval
        from ntl.lab.encodings.xval import XValT5

        return load_eval(XValT5, folder)

    def features(self, records, tokenizer, profile, with_targets):
        from ntl.lab.encodings.xval import encode_texts

        eos = int(tokenizer.eos_token_id)
        src, tgt = profile.max_source_length, profile.max_target_length
        q_ids, q_vals = encode_texts(tokenizer, [str(r["question"]) for r in records])
        out = []
        for ids, vals in zip(q_ids, q_vals):
            n = min(len(ids), src - 1)
            out.append({"input_ids": _clip(ids, src, eos), "input_values": vals[:n] + [math.nan]})
        if with_targets:
            a_ids, a_vals = encode_texts(tokenizer, [str(r["answer"]) for r in records])
            for feat, ids, vals in zip(out, a_ids, a_vals):
                n = min(len(ids), tgt - 1)
                feat["labels"] = _clip(ids, tgt, eos)
                feat["label_values"] = vals[:n] + [math.nan]
        return out

    def collator(self, tokenizer):
        return XValCollator(int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                else tokenizer.eos_token_id))

    def trainer(self, *, model, args, tokenizer, train_dataset, eval_dataset, features, profile,
                callbacks):
        from ntl.lab.arms.parts_trainer import PartsTrainer

        return PartsTrainer(
            model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            data_collator=self.collator(tokenizer), processing_class=tokenizer,
            callbacks=list(callbacks) or None, parts=("ce", "mse"),
        )

    def describe(self) -> dict[str, Any]:
        return {"encoding": "xval", "xval_scaling": self.arm.scaling, "mse_weight": self.mse_weight,
                "generation": "greedy"}

    def predict(self, model, tokenizer, questions, *, batch_size, num_beams, max_new_tokens,
                max_source_length, progress, desc):
        from ntl.lab.arms.backbone import prediction_setup
        from ntl.lab.encodings.common import cut_at_eos
        from ntl.lab.encodings.xval import decode_text

        feats, device, keep_out = prediction_setup(self, model, tokenizer, questions, max_source_length)
        eos, pad = model.eos_id, model.pad_id

        def answer(batch):
            ids, values = model.generate_values(
                batch["input_ids"], batch["attention_mask"], batch["input_values"],
                max_new_tokens=max_new_tokens, logits_filter=keep_out,
            )
            texts = []
            for row_ids, row_vals in zip(ids.tolist(), values.tolist()):
                kept = cut_at_eos(row_ids, eos, pad)
                texts.append(decode_text(tokenizer, kept, row_vals[: len(kept)]))
            return texts

        return predict_in_batches(feats, self.collator(tokenizer), answer, batch_size=batch_size,
                                  device=device, progress=progress, desc=desc)


class XValCollator:
    """Pads xVal features: ``input_ids`` (pad id), ``attention_mask``, ``input_values`` (NaN,
    float64) and, when present, ``labels`` (-100) and ``label_values`` (NaN)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, feats):
        import torch

        from ntl.lab.encodings.common import IGNORE_INDEX, pad, pad_inputs

        batch = {
            **pad_inputs(feats, self.pad_token_id),
            "input_values": pad([f["input_values"] for f in feats], math.nan, torch.float64),
        }
        if feats and "labels" in feats[0]:
            batch["labels"] = pad([f["labels"] for f in feats], IGNORE_INDEX)
            batch["label_values"] = pad([f["label_values"] for f in feats], math.nan, torch.float64)
        return batch
