"""Train one arm of an experiment (ce, ce+ntl-was, ...) with the Hugging Face Trainer.

Usage: ``ntl train --out runs/NAME/ARM/seedK --arm ce+ntl-was --seed K [--profile quick]
[--set key=value ...] [--resume]``.

The loss is ``CE + λ·NTL`` through :class:`ntl.integrations.hf.NTLTrainer`. Arms by name: ``ce``
(λ = 0; NTL-WAS is still computed and logged), ``ce+ntl-<loss>`` for any loss in
``ntl.losses.functional.LOSSES`` (``was``, ``mse``, ``mae``, ``huber``, ``number-level``), with an
optional λ suffix ``ce+ntl-was@0.8``. Every arm with the same seed sees the same examples in the
same order (the order is a function of the seed only) and starts from the same weights.

Writes into ``--out`` (layout in notes/CONTRACTS.md): ``train_config.json`` (written first),
``tokenizer/`` (unless a prepared tokenizer is given), ``checkpoint-<step>/`` (safetensors,
optimizer, scheduler and RNG states), ``final/`` (model + tokenizer), ``log_history.json`` and
``train_summary.json`` (steps, runtime; its presence marks a finished run). ``--resume``
continues a killed run from its last checkpoint and ends with the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntl.config import PROFILES, Profile, get_profile, override, parse_sets, profile_help, resolve

TOKENIZER_RECIPE = "ntl_tokenizer.json"
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
# profile with a base stage): train from random initialisation with the base's own recipe and
# data, i.e. the from-scratch regime on the same footing; ``ce:scratch`` is the base itself.
def _scratch(profile: Profile) -> dict[str, Any]:
    from ntl.config import base_profile

    if profile.base_steps <= 0:
        raise ValueError("the :scratch variant needs a profile with a base stage (base_steps > 0)")
    base = base_profile(profile)
    fields = ("max_steps", "lr", "warmup_steps", "lr_scheduler", "train_slice", "base_steps")
    return {k: getattr(base, k) for k in fields}


def _decoder_model(profile: Profile) -> dict[str, Any]:
    from ntl.models import MODEL_SIZES

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


# ---------------------------------------------------------------------- tokenizer
def load_prepared_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Load a tokenizer saved by :func:`prepare_tokenizer` (or a ``final/`` model folder)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def prepare_tokenizer(
    profile: Profile,
    data_paths: Mapping[str, Path] | None,
    save_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """The experiment's one tokenizer: ``profile.tokenizer`` made digit-level
    (``split_digits``) and, with ``restrict_vocab``, restricted to the pieces of the data.

    If ``save_dir`` already holds a tokenizer prepared with the same recipe, it is loaded;
    otherwise the new one is saved there (with ``ntl_tokenizer.json`` describing the recipe).
    A ``profile.tokenizer`` that is a folder with ``ntl_tokenizer.json`` is used as it is.
    """
    from ntl import lab_tokenizers
    from ntl.numbers import as_generic_fast, split_digits

    given = Path(profile.tokenizer)
    if (given / TOKENIZER_RECIPE).is_file():
        return load_prepared_tokenizer(given)
    recipe = {
        "base": profile.tokenizer,
        "split_digits": profile.split_digits,
        "restrict_vocab": profile.restrict_vocab,
        "data": _data_identity(data_paths) if profile.restrict_vocab else None,
    }
    if save_dir is not None and (Path(save_dir) / TOKENIZER_RECIPE).is_file():
        stored = json.loads((Path(save_dir) / TOKENIZER_RECIPE).read_text())
        if stored.get("recipe") == recipe:
            return load_prepared_tokenizer(save_dir)
    tok = lab_tokenizers.load(profile.tokenizer)
    if profile.split_digits:
        tok = split_digits(tok)
    tok = as_generic_fast(tok)
    if profile.restrict_vocab:
        if not data_paths:
            raise ValueError("restrict_vocab needs the data splits to read the used pieces from")
        from ntl.data.collate import restrict_tokenizer
        from ntl.data.mathematics import load_split

        texts: list[str] = []
        for path in data_paths.values():
            if Path(path).is_file():
                for r in load_split(path):
                    texts.append(str(r["question"]))
                    texts.append(str(r["answer"]))
        tok = restrict_tokenizer(tok, texts)
    if save_dir is not None:
        save_dir = Path(save_dir)
        tmp = save_dir.with_name(save_dir.name + f".tmp-{os.getpid()}")
        tok.save_pretrained(str(tmp))
        (tmp / TOKENIZER_RECIPE).write_text(
            json.dumps({"recipe": recipe, "vocab_size": len(tok)}, indent=2) + "\n"
        )
        if save_dir.exists():
            import shutil

            shutil.rmtree(save_dir)
        os.replace(tmp, save_dir)
    return tok


def _data_identity(data_paths: Mapping[str, Path] | None) -> str | None:
    if not data_paths:
        return None
    first = Path(next(iter(data_paths.values())))
    return first.parent.name


# ---------------------------------------------------------------------- helpers
def resolve_data(profile: Profile, data_dir: str | os.PathLike[str] | None, data_root: str) -> dict:
    """Split paths: from ``data_dir`` (a folder with ``<split>.jsonl``) or generated from the
    profile's :class:`DataSpec` under ``data_root`` (cached)."""
    if data_dir is not None:
        d = Path(data_dir)
        paths = {p.stem: p for p in sorted(d.glob("*.jsonl"))}
        if "train" not in paths:
            raise FileNotFoundError(f"no train.jsonl in {d}")
        return paths
    from ntl.data.mathematics import generate

    return dict(generate(profile.data_spec(), data_root, progress=True))


def device_kind() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def last_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step that holds a trainer state."""
    best = None
    for p in Path(out_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir() and (p / "trainer_state.json").is_file():
            if best is None or int(m.group(1)) > best[0]:
                best = (int(m.group(1)), p)
    return best[1] if best else None


def is_trained(out_dir: str | os.PathLike[str]) -> bool:
    """True when ``out_dir`` holds a finished run (``train_summary.json`` and ``final/``)."""
    out = Path(out_dir)
    return (out / "train_summary.json").is_file() and (out / "final").is_dir()


def _training_arguments(profile: Profile, out_dir: Path, seed: int, progress: bool, has_eval: bool):
    from transformers import TrainingArguments

    cpu = device_kind() == "cpu"
    kwargs: dict[str, Any] = dict(
        output_dir=str(out_dir),
        max_steps=profile.max_steps,
        per_device_train_batch_size=profile.batch_size,
        per_device_eval_batch_size=profile.eval_batch_size,
        gradient_accumulation_steps=profile.grad_accum,
        learning_rate=profile.lr,
        weight_decay=profile.weight_decay,
        warmup_steps=profile.warmup_steps,
        lr_scheduler_type=profile.lr_scheduler,
        max_grad_norm=profile.max_grad_norm,
        optim="adamw_torch",
        logging_steps=profile.logging_steps,
        save_strategy="steps",
        save_steps=profile.save_steps,
        save_total_limit=profile.save_total_limit,
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="sequential",  # the order is fixed by the dataset (epoch_order)
        dataloader_num_workers=0,
        report_to="none",
        use_cpu=cpu,
        bf16=bool(profile.bf16) and not cpu,
        disable_tqdm=not progress,
        remove_unused_columns=False,
        prediction_loss_only=True,
    )
    if has_eval:
        kwargs.update(eval_strategy="steps", eval_steps=profile.eval_steps)
        if profile.lr_scheduler == "reduce_lr_on_plateau":
            kwargs.update(metric_for_best_model="loss", greater_is_better=False)
    return TrainingArguments(**kwargs)


def _history_rows(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    keys = ("step", "loss", "ce", "ntl", "learning_rate", "epoch", "grad_norm")
    rows = []
    for entry in log_history:
        if "loss" in entry:
            rows.append({k: entry[k] for k in keys if k in entry})
        elif "eval_loss" in entry:
            rows.append({k: entry[k] for k in ("step", "eval_loss", "epoch") if k in entry})
    return rows


# ---------------------------------------------------------------------- training
def train_arm(
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
    callbacks: Sequence[Any] = (),
    init_from: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train ``arm`` with ``seed`` on ``data_paths["train"]`` (its ``profile.train_slice``) into
    ``out_dir``.

    Args:
        profile: the experiment profile (model, steps, optimizer, logging, checkpoints).
        arm: arm name (see :func:`parse_arm`).
        seed: seed of the weights and of the data order.
        out_dir: the arm's run folder, ``runs/<name>/<arm>/seed<k>``.
        data_paths: ``{split: jsonl path}``; ``train`` is required, ``valid`` is used for
            in-training evaluation when ``profile.eval_steps > 0``.
        tokenizer: a prepared tokenizer (object or folder); ``None`` prepares one into
            ``out_dir/tokenizer``. All arms of an experiment should get the same one.
        resume: continue from the last checkpoint in ``out_dir`` (if any).
        overwrite: allow starting over in a folder that already has checkpoints.
        progress: show the Trainer's progress bar.
        callbacks: extra ``transformers.TrainerCallback`` objects.
        init_from: a saved model folder (a base's ``final/``) to start from instead of the
            seed's random initialisation; it must use the same tokenizer.

    Returns:
        The content of ``train_summary.json``.
    """
    import torch
    import transformers

    from ntl.data.collate import Collator, EncodedDataset, encode, epoch_order, pad_id
    from ntl.data.mathematics import load_split, module_slice
    from ntl.encodings import is_encoding_arm
    from ntl.integrations.hf import NTLTrainer
    from ntl.losses.modules import CrossEntropyWithNTL
    from ntl.models import build_model, count_parameters, model_spec, model_vocab_size
    from ntl.numbers import NumberVocab
    from ntl.progress import quiet_transformers, status_callback

    if is_encoding_arm(arm):  # xVal, RT, regression head: their own models and loop (issue 4)
        from ntl.encodings.train import train_profile_arm

        return train_profile_arm(profile, arm, seed, out_dir, data_paths=data_paths,
                                 tokenizer=tokenizer, resume=resume, overwrite=overwrite,
                                 progress=progress)
    out = Path(out_dir)
    spec = parse_arm(arm, profile.lam)
    profile = spec.apply(profile)
    if not progress:
        transformers.utils.logging.disable_progress_bar()  # no weight-loading / saving bars
    if spec.own_tokenizer:
        if init_from is not None:
            raise ValueError(
                f"arm {arm!r} uses its own tokenizer and cannot fine-tune a base trained with the "
                "experiment's tokenizer; run it in a profile without a base stage (base_steps=0)"
            )
        tokenizer = None  # prepared from the variant's profile into out_dir/tokenizer
    if is_trained(out) and not overwrite:
        return json.loads((out / "train_summary.json").read_text())
    checkpoint = last_checkpoint(out)
    if checkpoint is not None and not (resume or overwrite):
        raise FileExistsError(
            f"{out} already has checkpoints (last: {checkpoint.name}); pass --resume to continue "
            "the run or --overwrite to start over"
        )
    if overwrite and not resume:
        checkpoint = None
    out.mkdir(parents=True, exist_ok=True)
    if profile.threads:
        torch.set_num_threads(int(profile.threads))
    transformers.logging.set_verbosity_error()

    # tokenizer, shared by all arms
    if tokenizer is None:
        tokenizer = prepare_tokenizer(profile, data_paths, out / "tokenizer")
        tokenizer_path = out / "tokenizer"
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer_path = Path(tokenizer)
        tokenizer = load_prepared_tokenizer(tokenizer_path)
    else:
        tokenizer_path = None

    # model (same weights for every arm with this seed)
    mspec = model_spec(profile.model, dropout=profile.dropout)
    causal = not mspec.is_encoder_decoder
    vocab_size = model_vocab_size(tokenizer)
    transformers.set_seed(seed)
    if init_from is not None:
        from ntl.evaluate import load_model

        model = load_model(init_from, causal=causal)
        model.train()
        if model.config.vocab_size != vocab_size:
            raise ValueError(
                f"{init_from} has {model.config.vocab_size} logits but the tokenizer needs "
                f"{vocab_size}: the base was trained with another tokenizer"
            )
    else:
        model = build_model(mspec, vocab_size, tokenizer=tokenizer, seed=seed)

    # data: a fixed, seed-determined order of examples, read sequentially
    records = module_slice(load_split(data_paths["train"]), *profile.train_slice)
    enc_kwargs = dict(
        max_source_length=profile.max_source_length, max_target_length=profile.max_target_length
    )
    features = encode(records, tokenizer, causal=causal, **enc_kwargs)
    vocab = NumberVocab.from_tokenizer(tokenizer, mode=profile.number_mode, vocab_size=vocab_size)
    if profile.ntl_label_tokens:
        vocab = vocab.restricted({t for f in features for t in f["labels"] if t >= 0})
    loss = CrossEntropyWithNTL(vocab, ntl=spec.ntl, lam=spec.lam, **dict(spec.options))
    total = profile.max_steps * profile.batch_size * profile.grad_accum
    train_ds = EncodedDataset(features, epoch_order(len(features), total, seed))
    eval_ds = None
    if profile.eval_steps and "valid" in data_paths:
        valid = load_split(data_paths["valid"])[: profile.eval_max_examples or None]
        eval_ds = EncodedDataset(encode(valid, tokenizer, causal=causal, **enc_kwargs))

    config = {
        "arm": spec.name,
        "variant": spec.variant,
        "number_mode": profile.number_mode,
        "ntl": spec.ntl,
        "lam": spec.lam,
        "ntl_options": dict(spec.options),
        "init_from": str(Path(init_from).resolve()) if init_from is not None else None,
        "seed": seed,
        "profile": profile.to_dict(),
        "data": {k: str(Path(v).resolve()) for k, v in data_paths.items()},
        "tokenizer": str(tokenizer_path.resolve()) if tokenizer_path else None,
        "tokenizer_size": len(tokenizer),
        "model": profile.model,
        "model_spec": mspec.__dict__,
        "model_vocab_size": vocab_size,
        "causal": causal,
        "parameters": count_parameters(model),
        "number_tokens": vocab.number_tokens,
        "n_train_records": len(records),
        "n_train_examples_seen": total,
        "device": device_kind(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")

    args = _training_arguments(profile, out, seed, progress, eval_ds is not None)
    trainer = NTLTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=Collator(pad_id(tokenizer)),
        processing_class=tokenizer,
        ntl_loss=loss,
        causal=causal,
        callbacks=[*callbacks, status_callback(out, f"{spec.name}/seed{seed}")],
    )
    if not progress:
        quiet_transformers(trainer)  # train.log and status.json carry the logs
    start = time.time()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    elapsed = time.time() - start

    final = out / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    history = _history_rows(trainer.state.log_history)
    (out / "log_history.json").write_text(json.dumps(history, indent=1) + "\n")
    steps_run = trainer.state.global_step - (_step_of(checkpoint) if checkpoint else 0)
    summary = {
        "arm": spec.name,
        "seed": seed,
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint.name if checkpoint else None,
        "steps_this_session": steps_run,
        "runtime_s_this_session": round(elapsed, 2),
        "steps_per_second": round(steps_run / elapsed, 3) if elapsed > 0 else None,
        "train_loss": result.training_loss,
        "final_log": history[-1] if history else None,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


#: Profile fields that do not change what a base model learns (selection, evaluation, threads).
_NOT_BASE_FIELDS = frozenset({
    "name", "description", "arms", "seeds", "threads", "jobs", "eval_splits", "eval_max_examples",
    "eval_batch_size", "num_beams", "max_new_tokens", "n_boot",
})


def base_dir(
    profile: Profile, seed: int, runs_root: str | os.PathLike[str], data_paths: Mapping[str, Path]
) -> Path:
    """Where the CE base of ``profile`` (a :func:`ntl.config.base_profile`) for ``seed`` lives:
    ``<runs_root>/bases/<hash>/seed<k>``, the hash covering every field that shapes the base and
    the data it reads, so every experiment with the same base reuses it."""
    import hashlib

    fields = {k: v for k, v in profile.to_dict().items() if k not in _NOT_BASE_FIELDS}
    fields["data"] = _data_identity(data_paths)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return Path(runs_root) / "bases" / digest / f"seed{seed}"


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


# ---------------------------------------------------------------------- CLI
def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    """``--profile`` and ``--set``, shared by train, eval and experiment."""
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES), help=profile_help())
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile field (repeatable; lists comma-separated, 'none' for None), e.g. "
        "--set max_steps=500 --set modules=arithmetic__add_or_sub,arithmetic__mul. Fields: "
        + ", ".join(f.name for f in dataclasses.fields(Profile) if f.name not in ("name", "description")),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntl train``."""
    parser.add_argument("--out", required=True, help="the arm's run folder, runs/<name>/<arm>/seed<k>")
    parser.add_argument(
        "--arm", default="ce+ntl-was",
        help="ce | ce+ntl-<loss>[@lam][:variant] with loss in was/mse/mae/huber/number-level and "
        "variant multidigit (T5's own multi-digit tokens, numbers mode) or decoder (decoder-only "
        "model); or a baseline: xval, xval-linear, rt, rt+ntl, regression-head",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and data order")
    add_profile_arguments(parser)
    parser.add_argument(
        "--model", default=None, help="model size (profile field `model`), e.g. t5-tiny, llama-tiny"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer: a name under ../shared/tokenizers (made digit-level), a folder, or a "
        "prepared tokenizer folder (with ntl_tokenizer.json) used as is; default: the profile's",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (profile `max_steps`)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="batch size per step (profile `batch_size`)"
    )
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (profile `lr`)")
    parser.add_argument("--lam", type=float, default=None, help="NTL weight λ (profile `lam`)")
    parser.add_argument(
        "--data-dir", default=None, help="folder with <split>.jsonl; default: generate the profile's data"
    )
    parser.add_argument("--data-root", default="data", help="cache folder for generated data")
    parser.add_argument(
        "--init-from", default=None,
        help="a saved model folder (e.g. a base's final/) to fine-tune instead of a random init; "
        "it must use the same tokenizer (pass --tokenizer with the base's tokenizer folder)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="start over even if --out has checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The profile with ``--set`` and the explicit flags applied (flags win)."""
    values: dict[str, Any] = parse_sets(getattr(args, "sets", []))
    for flag, key in (
        ("model", "model"),
        ("tokenizer", "tokenizer"),
        ("max_steps", "max_steps"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("lam", "lam"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            values[key] = value
    return resolve(get_profile(args.profile), values)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ntl train``."""
    profile = profile_from_args(args)
    data_paths = resolve_data(profile, args.data_dir, args.data_root)
    summary = train_arm(
        profile,
        args.arm,
        args.seed,
        args.out,
        data_paths=data_paths,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        init_from=args.init_from,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
