"""Train one arm of an experiment with the Hugging Face Trainer: every arm, the same call.

Usage: ``ntl train --out runs/NAME/ARM/seedK --arm ce+ntl-was --seed K [--profile quick]
[--set key=value ...] [--resume]``.

The arm's recipe (:mod:`ntl.lab.arms`: token arms ``ce``, ``ce+ntl-<loss>[@λ][:variant]``; baselines
``xval``, ``rt``, ``rt+ntl``, ``regression-head``) gives the tokenizer, the model, the features,
the collator and the Trainer; this module does the rest the same way for all of them. Every arm
with the same seed sees the same examples in the same order (the order is a function of the seed
only), and every arm of a kind starts from the same weights.

Writes into ``--out`` (layout in docs/architecture.md): ``train_config.json`` (written first),
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
from pathlib import Path
from typing import Any

from ntl.lab.arms.token import ARM_VARIANTS, SIGMA_LOSSES, Arm, parse_arm
from ntl.lab.config import PROFILES, Profile, get_profile, parse_sets, profile_help, resolve
from ntl.lab.tokenization import TOKENIZER_RECIPE, data_identity, load_prepared_tokenizer, prepare_tokenizer

#: Re-exported: the token-arm names are parsed in :mod:`ntl.lab.arms.token`, the tokenizer is
#: prepared in :mod:`ntl.lab.tokenization`.
__all__ = [
    "ARM_VARIANTS", "Arm", "SIGMA_LOSSES", "TOKENIZER_RECIPE", "is_trained", "last_checkpoint",
    "load_prepared_tokenizer", "parse_arm", "prepare_tokenizer", "train_arm",
]

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
    from ntl.lab.data.tasks import generate_data

    return generate_data(profile.data_spec(), data_root, progress=True)


def device_kind() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_folders(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Every ``checkpoint-<step>`` folder in ``out_dir``, complete or not, by step."""
    found = []
    for p in Path(out_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def last_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step that holds a trainer state."""
    done = [p for p in checkpoint_folders(out_dir) if (p / "trainer_state.json").is_file()]
    return done[-1] if done else None


def check_resumable(out_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint a resumed run continues from: the last ``checkpoint-<step>`` folder, after
    checking that it is complete (``trainer_state.json``, an untruncated ``model.safetensors``).

    Raises:
        ntl.lab.file_checks.CorruptFileError: naming the file and the fix (delete the folder and
            ``--resume`` from the previous checkpoint, or ``--overwrite``).
    """
    from ntl.lab.file_checks import check_checkpoint

    folders = checkpoint_folders(out_dir)
    if not folders:
        return None
    check_checkpoint(folders[-1], folders[-2] if len(folders) > 1 else None)
    return folders[-1]


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
    keys = ("step", "loss", "ce", "ntl", "mse", "learning_rate", "epoch", "grad_norm")
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
    ``out_dir``: the same Trainer call for every arm, token arms and baselines alike.

    Args:
        profile: the experiment profile (model, steps, optimizer, logging, checkpoints).
        arm: arm name (see :func:`ntl.lab.arms.resolve_arm`).
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

    Raises:
        FileExistsError: ``out_dir`` has checkpoints and neither ``resume`` nor ``overwrite``.
        ntl.lab.file_checks.CorruptFileError: the checkpoint to resume from (or a data file) is
            truncated or incomplete; the message names the file and the fix.
    """
    import torch
    import transformers

    from ntl.lab.arms import resolve_arm
    from ntl.lab.data.collate import EncodedDataset, epoch_order
    from ntl.lab.data.mathematics import load_split, module_slice
    from ntl.lab.models import count_parameters, model_spec
    from ntl.lab.progress import quiet_transformers, status_callback

    out = Path(out_dir)
    recipe = resolve_arm(arm, profile.lam)
    profile = recipe.apply(profile)
    if not progress:
        transformers.utils.logging.disable_progress_bar()  # no weight-loading / saving bars
    if init_from is not None and not recipe.fine_tunes_base:
        raise ValueError(f"arm {arm!r} has its own model and cannot start from a base ({init_from})")
    if recipe.own_tokenizer:
        if init_from is not None:
            raise ValueError(
                f"arm {arm!r} uses its own tokenizer and cannot fine-tune a base trained with the "
                "experiment's tokenizer; run it in a profile without a base stage (base_steps=0)"
            )
        tokenizer = None  # prepared from the variant's profile into out_dir/tokenizer
    if is_trained(out) and not overwrite:
        return json.loads((out / "train_summary.json").read_text())
    folders = checkpoint_folders(out)
    checkpoint = folders[-1] if folders else None
    if checkpoint is not None and not (resume or overwrite):
        raise FileExistsError(
            f"{out} already has checkpoints (last: {checkpoint.name}); pass --resume to continue "
            "the run or --overwrite to start over"
        )
    if overwrite and not resume:
        checkpoint = None
    if checkpoint is not None:
        checkpoint = check_resumable(out)
    # the training records first: a corrupt data file stops the run before anything is written
    records = module_slice(load_split(data_paths["train"]), *profile.train_slice)
    out.mkdir(parents=True, exist_ok=True)
    if profile.threads:
        torch.set_num_threads(int(profile.threads))
    transformers.logging.set_verbosity_error()

    # tokenizer: the experiment's, shared by all arms (a baseline adds its tokens to a copy)
    if tokenizer is None:
        tokenizer = prepare_tokenizer(profile, data_paths, out / "tokenizer")
        tokenizer_path = out / "tokenizer"
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer_path = Path(tokenizer)
        tokenizer = load_prepared_tokenizer(tokenizer_path)
    else:
        tokenizer_path = None
    shared_size = len(tokenizer)
    tokenizer = recipe.tokenizer(tokenizer)

    # model: the same weights for every arm of a kind with this seed
    transformers.set_seed(seed)
    model = recipe.build_model(profile, tokenizer, seed, init_from)

    # data: a fixed, seed-determined order of examples, read sequentially
    features = recipe.features(records, tokenizer, profile, with_targets=True)
    if not features:
        raise ValueError(f"arm {arm!r}: no usable training records in {data_paths['train']}")
    total = profile.max_steps * profile.batch_size * profile.grad_accum
    train_ds = EncodedDataset(features, epoch_order(len(features), total, seed))
    eval_ds = None
    if profile.eval_steps and "valid" in data_paths:
        valid = load_split(data_paths["valid"])[: profile.eval_max_examples or None]
        eval_ds = EncodedDataset(recipe.features(valid, tokenizer, profile, with_targets=True))

    args = _training_arguments(profile, out, seed, progress, eval_ds is not None)
    trainer = recipe.trainer(
        model=model, args=args, tokenizer=tokenizer, train_dataset=train_ds, eval_dataset=eval_ds,
        features=features, profile=profile,
        callbacks=[*callbacks, status_callback(out, f"{recipe.name}/seed{seed}")],
    )
    if not progress:
        quiet_transformers(trainer)  # train.log and status.json carry the logs
    mspec = model_spec(profile.model, dropout=profile.dropout)
    config = {
        "arm": recipe.name,
        "kind": recipe.kind,
        "variant": None,
        "init_from": str(Path(init_from).resolve()) if init_from is not None else None,
        "seed": seed,
        "profile": profile.to_dict(),
        "data": {k: str(Path(v).resolve()) for k, v in data_paths.items()},
        "tokenizer": str(tokenizer_path.resolve()) if tokenizer_path else None,
        "tokenizer_size": shared_size,
        "arm_tokenizer_size": len(tokenizer),
        "model": profile.model,
        "model_class": type(model).__name__,
        "model_spec": mspec.__dict__,
        "model_vocab_size": int(model.config.vocab_size),
        "causal": not mspec.is_encoder_decoder,
        "parameters": count_parameters(model),
        "n_train_records": len(records),
        "n_train_features": len(features),
        "n_train_examples_seen": total,
        "device": device_kind(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        **recipe.describe(),
    }
    (out / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")

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
        "arm": recipe.name,
        "seed": seed,
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint.name if checkpoint else None,
        "steps_this_session": steps_run,
        "runtime_s_this_session": round(elapsed, 2),
        "steps_per_second": round(steps_run / elapsed, 3) if elapsed > 0 else None,
        "train_loss": result.training_loss,
        "final_log": history[-1] if history else None,
        **recipe.summary(),
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
    """Where the CE base of ``profile`` (a :func:`ntl.lab.config.base_profile`) for ``seed`` lives:
    ``<runs_root>/bases/<hash>/seed<k>``, the hash covering every field that shapes the base and
    the data it reads, so every experiment with the same base reuses it."""
    import hashlib

    fields = {k: v for k, v in profile.to_dict().items() if k not in _NOT_BASE_FIELDS}
    fields["data"] = data_identity(data_paths)
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
    from ntl.lab.file_checks import CorruptFileError

    profile = profile_from_args(args)
    try:
        data_paths = resolve_data(profile, args.data_dir, args.data_root)
        summary = _train_from_args(args, profile, data_paths)
    except (CorruptFileError, FileExistsError) as exc:
        print(f"ntl train: {exc}", file=sys.stderr)  # names the file and the fix
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _train_from_args(args: argparse.Namespace, profile: Profile, data_paths: dict) -> dict[str, Any]:
    return train_arm(
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


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
