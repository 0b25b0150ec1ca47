"""Train, predict and evaluate the encoding arms (xval, rt, rt+ntl, regression-head).

A small loop of its own (AdamW, warmup + schedule from ``transformers.get_scheduler``, gradient
clipping, gradient accumulation, checkpoints, resume) because the HF Trainer path does not fit
value-carrying inputs (xVal) or a scalar head. It follows the same rules as :mod:`ntl.train`:
the experiment's tokenizer (xVal adds ``[NUM]``, RT the 320 place-value tokens), the model size
and seed of the profile, the same examples in the same order (``ntl.data.collate.epoch_order``
of the seed), counted in optimizer steps, and the same run folder layout (notes/CONTRACTS.md):

``train_config.json`` (``"encoding": <kind>`` marks these arms), ``checkpoint-<step>/``
(``encoding_model.safetensors``, ``training_state.pt``, ``state.json``), ``final/``
(``encoding_model.safetensors``, the backbone's ``config.json``, the tokenizer),
``log_history.json`` (``step, loss, learning_rate, epoch`` + ``ce``/``ntl`` (RT), ``ce``/``mse``
(xVal), ``mse`` (regression head); ``eval_loss`` rows), ``train_summary.json``, and
``eval/<split>.jsonl`` + ``eval/metrics.json`` from :func:`evaluate_run`.

Two entry points of each kind:

- records level: :func:`train_arm` ``(arm, train_records, valid_records, *, model_size, steps,
  batch_size, lr, seed, out_dir, ...)`` and :func:`predict` ``(out_dir, records, batch_size)``
  -> generated answer texts;
- experiment level, with the signatures of ``ntl.train.train_arm`` and
  ``ntl.evaluate.evaluate_run``: :func:`train_profile_arm` ``(profile, arm, seed, out_dir, *,
  data_paths, tokenizer, resume, overwrite, progress)`` and :func:`evaluate_run`.

Generation is greedy (``num_beams`` is ignored), the value-feeding decoder of
:class:`ntl.encodings.common.NumberT5`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntl.config import Profile
from ntl.encodings import EncodingArm, parse_encoding_arm
from ntl.encodings.common import IGNORE_INDEX, cut_at_eos, pad, shift_right

WEIGHTS_NAME = "encoding_model.safetensors"
_CKPT_RE = re.compile(r"checkpoint-(\d+)")


# ---------------------------------------------------------------------- tokenizer
def default_tokenizer(texts: Sequence[str], base: str = "t5-small", restrict: bool = True) -> Any:
    """The CE arms' tokenizer recipe for ``texts``: ``base`` made digit-level
    (``split_digits``) and, with ``restrict``, restricted to the pieces ``texts`` use.
    Returns a generic ``PreTrainedTokenizerFast`` (it keeps the digit split when saved)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from ntl import lab_tokenizers
    from ntl.numbers import split_digits

    tok = split_digits(lab_tokenizers.load(base))
    if restrict:
        from ntl.data.collate import restrict_tokenizer

        return restrict_tokenizer(tok, texts)
    specials = {
        n: getattr(tok, n) for n in ("pad_token", "eos_token", "unk_token") if getattr(tok, n, None)
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()), **specials
    )


def _load_tokenizer(path: str | os.PathLike[str]) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


# ---------------------------------------------------------------------- per-arm runtimes
class _Runtime:
    """What differs between arms: tokens, features, batches, model, loss, generation."""

    def __init__(self, arm: EncodingArm, tokenizer: Any, options: Mapping[str, Any]) -> None:
        from ntl.models import model_vocab_size

        self.arm = arm
        self.tokenizer = tokenizer
        self.options = dict(options)
        self.vocab_size = model_vocab_size(tokenizer)
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos)
        self.max_source = int(options.get("max_source_length", 160))
        self.max_target = int(options.get("max_target_length", 32))

    @staticmethod
    def add_tokens(tokenizer: Any) -> Any:
        return tokenizer

    def features(self, records: Sequence[Mapping[str, Any]], with_targets: bool) -> list[dict]:
        raise NotImplementedError

    def collate(self, feats: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def build_model(self, spec: Any, seed: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def generate(self, model: nn.Module, batch: Mapping[str, torch.Tensor], max_new_tokens: int) -> list[str]:
        raise NotImplementedError

    # shared helpers
    def _t5(self, spec: Any, seed: int) -> nn.Module:
        from ntl.models import build_model

        return build_model(spec, self.vocab_size, tokenizer=self.tokenizer, seed=seed)

    def _clip(self, ids: list[int], limit: int) -> list[int]:
        return ids[: limit - 1] + [self.eos]

    def _banned_ids(self) -> torch.Tensor:
        """Ids generation never picks: embedding padding and plain digit tokens (every digit of
        the training text is inside a number, which these arms never spell with digits)."""
        from ntl.numbers import number_value

        banned = set(range(len(self.tokenizer), self.vocab_size))
        for token, idx in self.tokenizer.get_vocab().items():
            if number_value(token, "digits") is not None:
                banned.add(int(idx))
        return torch.tensor(sorted(banned), dtype=torch.long)

    def _filter(self, device: torch.device):
        if getattr(self, "_banned", None) is None:
            self._banned = self._banned_ids()
        banned = self._banned.to(device)

        def apply(logits: torch.Tensor) -> torch.Tensor:
            return logits.index_fill(-1, banned, float("-inf")) if banned.numel() else logits

        return apply


class _XValRuntime(_Runtime):
    @staticmethod
    def add_tokens(tokenizer: Any) -> Any:
        from ntl.encodings.xval import add_num_token

        return add_num_token(tokenizer)

    def features(self, records, with_targets):
        from ntl.encodings.xval import encode_texts

        q_ids, q_vals = encode_texts(self.tokenizer, [str(r["question"]) for r in records])
        out = []
        for ids, vals in zip(q_ids, q_vals):
            n = min(len(ids), self.max_source - 1)
            out.append({"input_ids": self._clip(ids, self.max_source), "input_values": vals[:n] + [math.nan]})
        if with_targets:
            a_ids, a_vals = encode_texts(self.tokenizer, [str(r["answer"]) for r in records])
            for feat, ids, vals in zip(out, a_ids, a_vals):
                n = min(len(ids), self.max_target - 1)
                feat["labels"] = self._clip(ids, self.max_target)
                feat["label_values"] = vals[:n] + [math.nan]
        return out

    def collate(self, feats):
        batch = {
            "input_ids": pad([f["input_ids"] for f in feats], self.pad),
            "attention_mask": pad([[1] * len(f["input_ids"]) for f in feats], 0),
            "input_values": pad([f["input_values"] for f in feats], math.nan, torch.float64),
        }
        if feats and "labels" in feats[0]:
            batch["labels"] = pad([f["labels"] for f in feats], IGNORE_INDEX)
            batch["label_values"] = pad([f["label_values"] for f in feats], math.nan, torch.float64)
        return batch

    def build_model(self, spec, seed):
        from ntl.encodings.xval import Scaling, XValT5, num_id

        scaling = Scaling(self.arm.scaling or "signed-log", float(self.options.get("xval_linear_scale", 1.0)))
        return XValT5(self._t5(spec, seed), num_id(self.tokenizer), scaling)

    def loss(self, model, batch):
        return model.loss(
            batch["input_ids"], batch["attention_mask"], batch["input_values"],
            batch["labels"], batch["label_values"], mse_weight=float(self.options.get("mse_weight", 1.0)),
        )

    def generate(self, model, batch, max_new_tokens):
        from ntl.encodings.xval import decode_text

        ids, values = model.generate_values(
            batch["input_ids"], batch["attention_mask"], batch["input_values"],
            max_new_tokens=max_new_tokens, logits_filter=self._filter(batch["input_ids"].device),
        )
        texts = []
        for row_ids, row_vals in zip(ids.tolist(), values.tolist()):
            kept = cut_at_eos(row_ids, self.eos, self.pad)
            texts.append(decode_text(self.tokenizer, kept, row_vals[: len(kept)]))
        return texts


class _RTRuntime(_Runtime):
    def __init__(self, arm, tokenizer, options):
        super().__init__(arm, tokenizer, options)
        self._loss_fn: nn.Module | None = None
        self.truncated_numbers = 0

    @staticmethod
    def add_tokens(tokenizer: Any) -> Any:
        from ntl.encodings.rt import add_rt_tokens

        return add_rt_tokens(tokenizer)

    def features(self, records, with_targets):
        from ntl.encodings.rt import encode_texts

        q_ids, n_q = encode_texts(self.tokenizer, [str(r["question"]) for r in records])
        out = [{"input_ids": self._clip(ids, self.max_source)} for ids in q_ids]
        n_a = 0
        if with_targets:
            a_ids, n_a = encode_texts(self.tokenizer, [str(r["answer"]) for r in records])
            for feat, ids in zip(out, a_ids):
                feat["labels"] = self._clip(ids, self.max_target)
        self.truncated_numbers += n_q + n_a
        if n_q + n_a:
            warnings.warn(
                f"RT: {n_q + n_a} numbers had decimals below 10^-12 and were truncated",
                stacklevel=2,
            )
        return out

    def collate(self, feats):
        batch = {
            "input_ids": pad([f["input_ids"] for f in feats], self.pad),
            "attention_mask": pad([[1] * len(f["input_ids"]) for f in feats], 0),
        }
        if feats and "labels" in feats[0]:
            batch["labels"] = pad([f["labels"] for f in feats], IGNORE_INDEX)
        return batch

    def number_vocab(self):
        from ntl.encodings.rt import rt_number_vocab

        return rt_number_vocab(self.tokenizer, self.vocab_size)

    def build_model(self, spec, seed):
        from ntl.encodings.rt import RTT5, numeric_encoding

        t5 = self._t5(spec, seed)
        enc = numeric_encoding(
            self.tokenizer.get_vocab(), self.vocab_size, int(t5.config.d_model),
            scale=float(self.options.get("rt_encoding_scale", 1.0)),
        )
        return RTT5(t5, enc)

    def loss(self, model, batch):
        from ntl.losses.modules import CrossEntropyWithNTL

        if self._loss_fn is None:
            self._loss_fn = CrossEntropyWithNTL(
                self.number_vocab(), ntl=self.arm.ntl or "mse", lam=self.arm.lam
            )
        self._loss_fn = self._loss_fn.to(batch["input_ids"].device)
        logits, _ = model(
            batch["input_ids"], batch["attention_mask"], shift_right(batch["labels"], model.start_id)
        )
        out = self._loss_fn(logits, batch["labels"])
        return {"loss": out.total, "ce": out.ce, "ntl": out.ntl}

    def generate(self, model, batch, max_new_tokens):
        from ntl.encodings.rt import rt_to_text

        ids, _ = model.greedy(
            batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
            logits_filter=self._filter(batch["input_ids"].device),
        )
        special = set(self.tokenizer.all_special_ids)
        texts = []
        for row in ids.tolist():
            kept = [i for i in cut_at_eos(row, self.eos, self.pad) if i not in special]
            texts.append(rt_to_text(self.tokenizer.convert_ids_to_tokens(kept)))
        return texts


class _RegressionRuntime(_Runtime):
    skipped_records = 0

    def features(self, records, with_targets):
        from ntl.data.collate import encode_seq2seq
        from ntl.metrics import parse_number

        feats = encode_seq2seq(
            records, self.tokenizer, max_source_length=self.max_source, with_labels=False
        )
        if not with_targets:
            return feats
        out = []
        for feat, r in zip(feats, records):
            value = parse_number(str(r["answer"]))
            if value is None:
                self.skipped_records += 1
                continue
            out.append({**feat, "target": value})
        return out

    def collate(self, feats):
        batch = {
            "input_ids": pad([f["input_ids"] for f in feats], self.pad),
            "attention_mask": pad([[1] * len(f["input_ids"]) for f in feats], 0),
        }
        if feats and "target" in feats[0]:
            batch["targets"] = torch.tensor([f["target"] for f in feats], dtype=torch.float64)
        return batch

    def build_model(self, spec, seed):
        from transformers import T5EncoderModel

        from ntl.encodings.regression_head import RegressionT5

        config = copy.deepcopy(self._t5(spec, seed).config)
        torch.manual_seed(seed)
        return RegressionT5(T5EncoderModel(config))

    def loss(self, model, batch):
        return model.loss(batch["input_ids"], batch["attention_mask"], batch["targets"])

    def generate(self, model, batch, max_new_tokens):
        return model.predict_texts(batch["input_ids"], batch["attention_mask"])


_RUNTIMES: dict[str, type[_Runtime]] = {
    "xval": _XValRuntime,
    "rt": _RTRuntime,
    "regression-head": _RegressionRuntime,
}


def _runtime(arm: EncodingArm, tokenizer: Any, options: Mapping[str, Any]) -> _Runtime:
    return _RUNTIMES[arm.kind](arm, tokenizer, options)


# ---------------------------------------------------------------------- checkpoints
def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))


def _load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    missing, unexpected = load_model(model, str(path), strict=False, device="cpu")
    # tied copies of the shared embedding are reported missing by safetensors; anything else is an error
    real_missing = [k for k in missing if not k.endswith("embed_tokens.weight") and k != "t5.lm_head.weight"]
    if real_missing or unexpected:
        raise RuntimeError(f"{path}: missing weights {real_missing[:5]}, unexpected {list(unexpected)[:5]}")


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = []
    for p in out.glob("checkpoint-*"):
        m = _CKPT_RE.fullmatch(p.name)
        if m and (p / "state.json").is_file() and (p / WEIGHTS_NAME).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _save_checkpoint(
    out: Path, step: int, model, tokenizer, optimizer, scheduler, history, keep: int | None
) -> None:
    """``checkpoint-<step>/``: weights, tokenizer, optimizer/scheduler/RNG state, log history;
    written to a temporary folder first, so a killed save leaves the previous checkpoints."""
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _save_weights(model, tmp / WEIGHTS_NAME)
    tokenizer.save_pretrained(str(tmp))
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(state, tmp / "training_state.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "log_history": history}) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep:
        for _, old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _scheduler(optimizer, name: str, warmup: int, steps: int):
    from transformers import get_scheduler

    if name == "reduce_lr_on_plateau":  # needs a metric every step; the encoding loop has none
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------- training
def _options(profile: Profile) -> dict[str, Any]:
    return {
        "max_source_length": profile.max_source_length,
        "max_target_length": profile.max_target_length,
    }


def _train(
    profile: Profile,
    arm: EncodingArm,
    seed: int,
    out: Path,
    train_records: Sequence[Mapping[str, Any]],
    valid_records: Sequence[Mapping[str, Any]],
    base_tokenizer: Any,
    *,
    extra_config: Mapping[str, Any],
    arm_options: Mapping[str, Any],
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    from ntl.data.collate import epoch_order
    from ntl.models import count_parameters, model_spec

    if profile.threads:
        torch.set_num_threads(int(profile.threads))
    import transformers

    transformers.logging.set_verbosity_error()
    checkpoints = _checkpoints(out) if resume else []
    if checkpoints:
        tokenizer = _load_tokenizer(checkpoints[-1][1])
    else:
        tokenizer = _RUNTIMES[arm.kind].add_tokens(copy.deepcopy(base_tokenizer))
    options = {**_options(profile), **arm_options}
    rt = _runtime(arm, tokenizer, options)
    mspec = model_spec(profile.model, dropout=profile.dropout)
    if not mspec.is_encoder_decoder:
        raise ValueError(
            f"encoding arm {arm.name!r} needs a T5 (encoder-decoder) model, got {profile.model!r}"
        )
    device = _device()
    model = rt.build_model(mspec, seed).to(device)
    model.train()

    features = rt.features(train_records, with_targets=True)
    if not features:
        raise ValueError(f"arm {arm.name!r}: no usable training records")
    accum = max(1, int(profile.grad_accum))
    per_step = profile.batch_size * accum
    order = epoch_order(len(features), profile.max_steps * per_step, seed)
    valid_feats = rt.features(list(valid_records)[: profile.eval_max_examples or 512], with_targets=True)

    optimizer = torch.optim.AdamW(_param_groups(model, profile.weight_decay), lr=profile.lr)
    scheduler = _scheduler(optimizer, profile.lr_scheduler, profile.warmup_steps, profile.max_steps)
    history: list[dict[str, Any]] = []
    start_step = 0
    if checkpoints:
        step0, ckpt = checkpoints[-1]
        _load_weights(model, ckpt / WEIGHTS_NAME)
        state = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history = json.loads((ckpt / "state.json").read_text())["log_history"]
        start_step = step0
    else:
        torch.manual_seed(seed)

    config = {
        "arm": arm.name,
        "encoding": arm.kind,
        "encoding_arm": dataclasses.asdict(arm),
        "options": options,
        "seed": seed,
        "profile": profile.to_dict(),
        **extra_config,
        "tokenizer_size": len(tokenizer),
        "model": profile.model,
        "model_spec": dataclasses.asdict(mspec),
        "model_vocab_size": rt.vocab_size,
        "causal": False,
        "parameters": count_parameters(model.t5 if hasattr(model, "t5") else model.encoder),
        "parameters_total": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        "n_train_records": len(train_records),
        "n_train_features": len(features),
        "n_train_examples_seen": profile.max_steps * per_step,
        "device": device.type,
        "scheduler": profile.lr_scheduler if profile.lr_scheduler != "reduce_lr_on_plateau"
        else "constant_with_warmup (reduce_lr_on_plateau is not supported by the encoding loop)",
        "generation": "greedy",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=profile.max_steps, initial=start_step, desc=f"train {arm.name}", unit="step")
    sums: dict[str, float] = {}
    n_sum = 0
    t0 = time.time()
    for step in range(start_step + 1, profile.max_steps + 1):
        parts_step: dict[str, float] = {}
        for micro in range(accum):
            lo = (step - 1) * per_step + micro * profile.batch_size
            batch = _to(rt.collate([features[i] for i in order[lo : lo + profile.batch_size]]), device)
            parts = rt.loss(model, batch)
            (parts["loss"] / accum).backward()
            for k, v in parts.items():
                parts_step[k] = parts_step.get(k, 0.0) + float(v.detach()) / accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), profile.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for k, v in parts_step.items():
            sums[k] = sums.get(k, 0.0) + v
        n_sum += 1
        if step % max(1, profile.logging_steps) == 0 or step == profile.max_steps:
            row = {"step": step, **{k: v / n_sum for k, v in sums.items()},
                   "learning_rate": scheduler.get_last_lr()[0],
                   "epoch": step * per_step / len(features), "grad_norm": float(grad_norm)}
            history.append(row)
            sums, n_sum = {}, 0
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.4f}")
        if profile.eval_steps and step % profile.eval_steps == 0 and valid_feats:
            history.append({"step": step, "eval_loss": _eval_loss(rt, model, valid_feats, profile, device),
                            "epoch": step * per_step / len(features)})
        if profile.save_steps and step % profile.save_steps == 0 and step < profile.max_steps:
            _save_checkpoint(
                out, step, model, tokenizer, optimizer, scheduler, history, profile.save_total_limit
            )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.time() - t0
    if valid_feats:
        eval_loss = _eval_loss(rt, model, valid_feats, profile, device)
        history.append({"step": profile.max_steps, "eval_loss": eval_loss,
                        "epoch": profile.max_steps * per_step / len(features)})

    final = out / "final"
    if final.exists():
        shutil.rmtree(final)
    _save_weights(model, final / WEIGHTS_NAME)
    backbone = model.t5 if hasattr(model, "t5") else model.encoder
    backbone.config.save_pretrained(str(final))
    tokenizer.save_pretrained(str(final))
    (out / "log_history.json").write_text(json.dumps(history, indent=1) + "\n")
    steps_run = profile.max_steps - start_step
    train_rows = [h for h in history if "loss" in h]
    summary = {
        "arm": arm.name,
        "seed": seed,
        "global_step": profile.max_steps,
        "resumed_from": f"checkpoint-{start_step}" if start_step else None,
        "steps_this_session": steps_run,
        "runtime_s_this_session": round(elapsed, 2),
        "steps_per_second": round(steps_run / elapsed, 3) if elapsed > 0 else None,
        "train_loss": train_rows[-1]["loss"] if train_rows else None,
        "final_log": history[-1] if history else None,
        "rt_truncated_numbers": getattr(rt, "truncated_numbers", None),
        "regression_skipped_records": getattr(rt, "skipped_records", None),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@torch.no_grad()
def _eval_loss(rt: _Runtime, model: nn.Module, feats: list[dict], profile: Profile, device) -> float:
    was = model.training
    model.eval()
    total, n = 0.0, 0
    bs = profile.batch_size
    for i in range(0, len(feats), bs):
        chunk = feats[i : i + bs]
        total += float(rt.loss(model, _to(rt.collate(chunk), device))["loss"]) * len(chunk)
        n += len(chunk)
    model.train(was)
    return total / max(n, 1)


def train_arm(
    arm: str,
    train_records: Sequence[Mapping[str, Any]],
    valid_records: Sequence[Mapping[str, Any]],
    *,
    model_size: str = "t5-tiny",
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    out_dir: str | os.PathLike[str],
    tokenizer: Any = None,
    lam: float = 0.3,
    resume: bool = True,
    progress: bool = False,
    arm_options: Mapping[str, Any] | None = None,
    **profile_fields: Any,
) -> dict[str, Any]:
    """Train encoding ``arm`` on in-memory records (``{"module", "question", "answer", ...}``).

    Args:
        arm: ``xval``, ``xval-linear``, ``rt``, ``rt+ntl[-<loss>][@lam]`` or ``regression-head``.
        train_records, valid_records: the data; valid gives the final ``eval_loss``.
        model_size: a name from ``ntl.models.MODEL_SIZES`` (a T5 size).
        steps, batch_size, lr, seed: optimizer steps, examples per step, peak learning rate,
            seed of the weights and of the example order.
        out_dir: the run folder (layout in the module docstring).
        tokenizer: a prepared (digit-split) tokenizer or a folder holding one; default: t5-small
            digit-split and restricted to the records' pieces (the CE arms' recipe).
        lam: λ for ``rt+ntl`` arms without an ``@lam`` suffix.
        resume: continue from the last ``checkpoint-<step>`` in ``out_dir``.
        arm_options: ``mse_weight`` (xVal, default 1), ``xval_linear_scale`` (default 1),
            ``rt_encoding_scale`` (default 1).
        **profile_fields: any other :class:`ntl.config.Profile` field (``warmup_steps``,
            ``weight_decay``, ``logging_steps``, ``save_steps``, ``max_source_length``, ...).

    Returns:
        The content of ``train_summary.json``.
    """
    profile = dataclasses.replace(
        Profile(), model=model_size, max_steps=steps, batch_size=batch_size, lr=lr, lam=lam,
        **{"warmup_steps": 0, "logging_steps": 10, "save_steps": 0, **profile_fields},
    )
    if tokenizer is None:
        texts = [str(r[k]) for r in [*train_records, *valid_records] for k in ("question", "answer")]
        tokenizer = default_tokenizer(texts, profile.tokenizer, profile.restrict_vocab)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(tokenizer)
    return _train(
        profile, parse_encoding_arm(arm, lam), seed, Path(out_dir), train_records, valid_records,
        tokenizer, extra_config={}, arm_options=arm_options or {}, resume=resume, progress=progress,
    )


def train_profile_arm(
    profile: Profile,
    arm: str,
    seed: int,
    out_dir: str | os.PathLike[str],
    *,
    data_paths: Mapping[str, Path],
    tokenizer: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    arm_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``ntl.train.train_arm`` for an encoding arm: same signature, same files, same budget.

    ``tokenizer`` is the experiment's prepared tokenizer (object or folder); ``None`` prepares
    one with ``ntl.train.prepare_tokenizer`` into ``out_dir/tokenizer``. The arm's tokens are
    added to a copy of it.
    """
    from ntl.data.mathematics import load_split
    from ntl.train import is_trained, load_prepared_tokenizer, prepare_tokenizer

    out = Path(out_dir)
    spec = parse_encoding_arm(arm, profile.lam)
    if is_trained(out) and not overwrite:
        return json.loads((out / "train_summary.json").read_text())
    ckpts = _checkpoints(out)
    if ckpts and not (resume or overwrite):
        raise FileExistsError(
            f"{out} already has checkpoints (last: {ckpts[-1][1].name}); pass resume=True to "
            "continue or overwrite=True to start over"
        )
    if overwrite and not resume:
        for _, p in ckpts:
            shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = None
    if tokenizer is None:
        tokenizer = prepare_tokenizer(profile, data_paths, out / "tokenizer")
        tokenizer_path = out / "tokenizer"
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer_path = Path(tokenizer)
        tokenizer = load_prepared_tokenizer(tokenizer_path)
    train_records = load_split(data_paths["train"])
    valid_records = load_split(data_paths["valid"]) if "valid" in data_paths else []
    extra = {
        "data": {k: str(Path(v).resolve()) for k, v in data_paths.items()},
        "tokenizer": str(tokenizer_path.resolve()) if tokenizer_path else None,
    }
    return _train(
        profile, spec, seed, out, train_records, valid_records, tokenizer,
        extra_config=extra, arm_options=arm_options or {}, resume=resume, progress=progress,
    )


# ---------------------------------------------------------------------- prediction
def load_arm(run_dir: str | os.PathLike[str], checkpoint: str | None = None) -> tuple[_Runtime, nn.Module]:
    """The runtime and model of a trained encoding arm (``final/`` or ``checkpoint-<step>/``),
    in eval mode on the GPU if there is one."""
    from ntl.models import ModelSpec

    run = Path(run_dir)
    cfg = json.loads((run / "train_config.json").read_text())
    if "encoding" not in cfg:
        raise ValueError(f"{run} is not an encoding arm (no 'encoding' in train_config.json)")
    folder = run / (checkpoint or "final")
    tokenizer = _load_tokenizer(folder)
    arm = EncodingArm(**cfg["encoding_arm"])
    rt = _runtime(arm, tokenizer, cfg.get("options", {}))
    if rt.vocab_size != cfg["model_vocab_size"]:
        raise ValueError(
            f"{folder}: tokenizer gives vocab {rt.vocab_size}, the model has {cfg['model_vocab_size']}"
        )
    spec = ModelSpec(**cfg["model_spec"])
    model = rt.build_model(spec, int(cfg.get("seed", 0)))
    _load_weights(model, folder / WEIGHTS_NAME)
    model.to(_device()).eval()
    return rt, model


def _generate(
    rt: _Runtime, model: nn.Module, records: Sequence[Mapping[str, Any]], batch_size: int,
    max_new_tokens: int, progress: bool, desc: str = "generate",
) -> list[str]:
    feats = rt.features(records, with_targets=False)
    order = sorted(range(len(feats)), key=lambda i: (len(feats[i]["input_ids"]), i))
    texts = [""] * len(feats)
    device = next(model.parameters()).device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(feats), desc=desc, unit="ex")
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        batch = _to(rt.collate([feats[i] for i in idx]), device)
        with torch.no_grad():
            for i, text in zip(idx, rt.generate(model, batch, max_new_tokens)):
                texts[i] = text
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return texts


def predict(
    out_dir: str | os.PathLike[str],
    records: Sequence[Mapping[str, Any]],
    batch_size: int = 256,
    *,
    max_new_tokens: int = 32,
    checkpoint: str | None = None,
    progress: bool = False,
) -> list[str]:
    """Generated answer texts for ``records`` (only ``"question"`` is read), in order.

    xVal/regression-head values are printed as plain decimals, RT place-value runs as their
    decimal text; a malformed RT run or fused xVal number is printed so that
    ``ntl.metrics.parse_number`` rejects it.
    """
    rt, model = load_arm(out_dir, checkpoint)
    return _generate(rt, model, records, batch_size, max_new_tokens, progress)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    checkpoint: str | None = None,
    num_beams: int | None = None,
    batch_size: int | None = None,
    max_examples: int | None = -1,
    max_new_tokens: int | None = None,
    n_boot: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``ntl.evaluate.evaluate_run`` for an encoding arm: same arguments, same files
    (``eval/<split>.jsonl``, ``eval/metrics.json``). Generation is greedy: ``num_beams`` > 1 is
    reported and ignored."""
    from ntl.data.mathematics import load_split
    from ntl.evaluate import DEFAULT_SPLITS, select_examples
    from ntl.metrics import metrics_by_module, parse_number, write_json

    run = Path(run_dir)
    cfg = json.loads((run / "train_config.json").read_text())
    profile = cfg.get("profile", {})
    splits = list(splits or profile.get("eval_splits") or DEFAULT_SPLITS)
    num_beams = num_beams or int(profile.get("num_beams", 1))
    if num_beams > 1:
        print(f"[ntl eval] {cfg['arm']}: greedy decoding (num_beams={num_beams} ignored)", file=sys.stderr)
    batch_size = batch_size or int(profile.get("eval_batch_size", 256))
    max_new_tokens = max_new_tokens or int(profile.get("max_new_tokens", 32))
    n_boot = int(profile.get("n_boot", 1000)) if n_boot is None else n_boot
    if max_examples == -1:
        max_examples = profile.get("eval_max_examples")
    if profile.get("threads"):
        torch.set_num_threads(int(profile["threads"]))
    out = Path(out_dir) if out_dir else run / ("eval" if checkpoint is None else f"eval-{checkpoint}")
    out.mkdir(parents=True, exist_ok=True)
    rt, model = load_arm(run, checkpoint)
    metrics: dict[str, Any] = {}
    for split in splits:
        path = cfg.get("data", {}).get(split)
        if not path or not Path(path).is_file():
            print(f"[ntl eval] no {split} data for {run}; skipped", file=sys.stderr)
            continue
        records = load_split(path)
        keep = [i for i in select_examples(records, max_examples)
                if parse_number(str(records[i]["answer"])) is not None]
        if not keep:
            continue
        chosen = [records[i] for i in keep]
        predictions = _generate(rt, model, chosen, batch_size, max_new_tokens, progress, f"eval {split}")
        rows = []
        for r, pred in zip(chosen, predictions):
            parsed = parse_number(pred)
            rows.append({"module": r["module"], "question": r["question"], "answer": r["answer"],
                         "prediction": pred, "parsed": parsed, "valid": parsed is not None})
        tmp = out / f".{split}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, out / f"{split}.jsonl")
        metrics[split] = metrics_by_module(rows, n_boot=n_boot, seed=0)
    write_json(out / "metrics.json", metrics)
    return metrics
