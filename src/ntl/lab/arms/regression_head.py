"""The regression-head arm: a T5 encoder with a scalar head, trained with MSE on the signed-log
answer (:mod:`ntl.lab.encodings.regression_head`); its ``forward`` returns that MSE, trained by
:class:`ntl.lab.arms.parts_trainer.PartsTrainer`. The question is tokenized as for the token arms;
training records whose answer is not one number are skipped (counted in ``train_summary.json``)."""

from __future__ import annotations

from typing import Any

from ntl.lab.arms.base import ArmRecipe, predict_in_batches
from ntl.lab.encodings import EncodingArm


class RegressionRecipe(ArmRecipe):
    """A T5 encoder of the profile's size + mean pooling + MLP -> one value per question."""

    kind = "regression-head"
    greedy_only = True

    def __init__(self, arm: EncodingArm) -> None:
        super().__init__(arm.name)
        self.arm = arm
        self.skipped_records = 0

    def build_model(self, profile, tokenizer, seed, init_from):
        from ntl.lab.arms.backbone import backbone_config, seeded
        from ntl.lab.encodings.regression_head import RegressionConfig, RegressionT5

        if init_from is not None:
            raise ValueError(f"arm {self.name!r} has its own model and cannot start from a base")
        config = RegressionConfig(**backbone_config(profile, tokenizer, self.name))
        return seeded(seed, lambda: RegressionT5(config))

    def load_model(self, folder):
        from ntl.lab.arms.backbone import load_eval
        from ntl.lab.encodings.regression_head import RegressionT5

        return load_eval(RegressionT5, folder)

    def features(self, records, tokenizer, profile, with_targets):
        from ntl.lab.data.collate import encode_seq2seq
        from ntl.lab.metrics import parse_number

        feats = encode_seq2seq(records, tokenizer, max_source_length=profile.max_source_length,
                               with_labels=False)
        if not with_targets:
            return feats
        out = []
        for feat, r in zip(feats, records):
            value = parse_number(str(r["answer"]))
            if value is None:
                self.skipped_records += 1
                continue
            out.append({**feat, "labels": value})
        return out

    def collator(self, tokenizer):
        from ntl.lab.data.collate import pad_id

        return RegressionCollator(pad_id(tokenizer))

    def trainer(self, *, model, args, tokenizer, train_dataset, eval_dataset, features, profile,
                callbacks):
        from ntl.lab.arms.parts_trainer import PartsTrainer

        return PartsTrainer(
            model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            data_collator=self.collator(tokenizer), processing_class=tokenizer,
            callbacks=list(callbacks) or None, parts=("mse",),
        )

    def describe(self) -> dict[str, Any]:
        return {"encoding": "regression-head", "generation": "regression"}

    def summary(self) -> dict[str, Any]:
        return {"regression_skipped_records": self.skipped_records}

    def predict(self, model, tokenizer, questions, *, batch_size, num_beams, max_new_tokens,
                max_source_length, progress, desc):
        from ntl.lab.config import Profile

        profile = Profile(max_source_length=max_source_length)
        feats = self.features([{"question": q} for q in questions], tokenizer, profile, False)
        device = next(model.parameters()).device
        return predict_in_batches(
            feats, self.collator(tokenizer),
            lambda batch: model.predict_texts(batch["input_ids"], batch["attention_mask"]),
            batch_size=batch_size, device=device, progress=progress, desc=desc,
        )


class RegressionCollator:
    """Pads ``input_ids`` (pad id) and ``attention_mask``; ``labels`` (when present) are the raw
    target values, float64 (B,)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, feats):
        import torch

        from ntl.lab.encodings.common import pad_inputs

        batch = pad_inputs(feats, self.pad_token_id)
        if feats and "labels" in feats[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in feats], dtype=torch.float64)
        return batch
