"""The main job: data -> train every arm x seed -> evaluate -> report, resumable.

Usage: ``ntl experiment --profile quick --name NAME [--arms ce ce+ntl-was] [--seeds 0 1]
[--set key=value ...]``.

Stages, each skipped when its output is complete (so re-running after a kill resumes):

1. data: the profile's ``task`` (``ntl.lab.data.tasks.generate_data``: mathematics modules or a
   text-regression table; cached under ``--data-root``);
2. tokenizer: one digit-level tokenizer for all arms, in ``runs/NAME/tokenizer/``;
2b. base (profiles with ``base_steps > 0``, e.g. ``pretrained``): one CE base model per seed
   (pretrained on its own ``base_modules`` data, or trained on a slice of the arms' data),
   cached in ``RUNS_ROOT/bases/<hash>/seed<k>/`` and reused by every experiment that shares it;
3. train: every arm x seed (fine-tuning the seed's base when there is one) into
   ``runs/NAME/<arm>/seed<k>/`` (a killed arm resumes from its last
   checkpoint; arms are compared at equal optimizer steps on the same examples in the same order);
4. eval: ``eval/<split>.jsonl`` and ``eval/metrics.json`` per arm x seed, greedy; and for each
   of the profile's ``decodings`` (e.g. ``median-of-k``) ``eval-<decoding>/`` on its
   ``decoding_splits``;
5. report: ``results.json``, ``report.md``, ``curves.png``, ``accuracy.png``; the main table is
   printed.

``runs/NAME/experiment.json`` records the resolved profile, the command line, the machine and
the stage timings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ntl.errors import UserError
from ntl.lab.config import Profile, arm_profile, decodings_of, get_profile, parse_sets, resolve
from ntl.lab.train import add_profile_arguments, base_dir

# Fields that may differ between invocations on the same run folder (they select work, they
# do not change results).
_SELECTION_FIELDS = ("arms", "seeds", "threads", "jobs", "description", "eval_batch_size")


def _machine_record() -> dict[str, Any]:
    """:func:`ntl.lab.machine.machine_info` plus the device the runs train on."""
    import torch

    from ntl.lab.machine import machine_info

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {**machine_info(device), "device": device}


def _comparable(profile: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in profile.items() if k not in _SELECTION_FIELDS}


def _parent_watch(parent_pid: int) -> Any:
    """A Trainer callback for worker processes: exit (without finishing the run) as soon as the
    experiment process that started the worker is gone, so a killed experiment leaves no orphan
    training behind; the next ``ntl experiment`` resumes from the last checkpoint."""
    from transformers import TrainerCallback

    class ParentWatch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if os.getppid() != parent_pid:
                os._exit(1)

    return ParentWatch()


def _train_and_eval(
    profile: Profile,
    arm: str,
    seed: int,
    run_dir: Path,
    data_paths: dict[str, Path],
    tok_dir: Path,
    progress: bool,
    parent_pid: int | None = None,
    init_from: Path | None = None,
    arm_dir: Path | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train (or resume, or skip) and evaluate (or skip) one arm x seed; return stage timings.

    ``arm_dir`` defaults to ``run_dir/<arm>/seed<k>``; ``init_from`` is the base model to
    fine-tune (``None``: random initialisation); ``evaluate=False`` stops after training."""
    import torch

    from ntl.lab.evaluate import evaluate_run, is_evaluated
    from ntl.lab.train import is_trained, train_arm

    if profile.threads:
        torch.set_num_threads(int(profile.threads))
    arm_dir = arm_dir or run_dir / arm / f"seed{seed}"
    key = f"{arm}/seed{seed}" if evaluate else f"base/seed{seed}"
    stages: dict[str, Any] = {}
    from ntl.lab.progress import run_summary, write_status

    if not is_trained(arm_dir):
        from ntl.lab.arms import resolve_arm

        steps = resolve_arm(arm, profile.lam).apply(profile).max_steps  # variants change steps
        _log(f"train {key} ({steps} steps)")
        t0 = time.time()
        callbacks = [_parent_watch(parent_pid)] if parent_pid is not None else []
        summary = train_arm(
            profile,
            arm,
            seed,
            arm_dir,
            data_paths=data_paths,
            tokenizer=tok_dir,
            resume=True,
            progress=progress,
            callbacks=callbacks,
            init_from=init_from,
        )
        stages[f"train {key}_s"] = round(time.time() - t0, 1)
        stages[f"train {key} steps/s"] = summary.get("steps_per_second")
        _log(f"train {key}: done in {stages[f'train {key}_s']} s")
    else:
        _log(f"train {key}: done, skipped")
    if not evaluate:
        write_status(arm_dir, key=key, phase="done", note="base model, reused by the arms of its seed")
        return stages
    if profile.curve_splits:
        evaluate_checkpoints(arm_dir, profile.curve_splits, key, progress)
    if not is_evaluated(arm_dir, profile.eval_splits):
        _log(f"eval {key}")
        write_status(arm_dir, key=key, phase="eval")
        t0 = time.time()
        evaluate_run(arm_dir, splits=profile.eval_splits, progress=progress)
        stages[f"eval {key}_s"] = round(time.time() - t0, 1)
    else:
        _log(f"eval {key}: done, skipped")
    for decoding in decodings_of(profile):
        evaluate_decoding(arm_dir, arm, profile, decoding, key, progress)
    row = run_summary(arm, seed, arm_dir)
    em, paper = (row.get(k, math.nan) for k in ("valid_em", "valid_paper_acc"))
    write_status(arm_dir, key=key, phase="done", note=f"valid EM {em:.3f}, paper acc {paper:.3f}")
    return stages


def evaluate_decoding(arm_dir: Path, arm: str, profile: Profile, decoding: Any, key: str,
                      progress: bool) -> None:
    """Evaluate ``arm_dir``'s final model with ``decoding`` on ``profile.decoding_splits`` (into
    ``eval-<decoding>/``), unless done; arms that decode only greedily are skipped, their greedy
    answers in ``eval/`` stand for every decoding."""
    from ntl.lab.arms import resolve_arm
    from ntl.lab.evaluate import evaluate_run, is_evaluated
    from ntl.lab.progress import write_status

    if resolve_arm(arm, profile.lam).greedy_only:
        return
    if is_evaluated(arm_dir, profile.decoding_splits, decoding=decoding):
        _log(f"eval {key} ({decoding.name}): done, skipped")
        return
    _log(f"eval {key} ({decoding.name})")
    write_status(arm_dir, key=key, phase="eval")
    evaluate_run(arm_dir, splits=profile.decoding_splits, decoding=decoding, progress=progress)


def evaluate_checkpoints(arm_dir: Path, splits: Sequence[str], key: str, progress: bool) -> None:
    """Evaluate every checkpoint kept in ``arm_dir`` before its final step on ``splits`` (into
    ``eval-checkpoint-<step>/``), skipping those already evaluated: the points along training."""
    from ntl.lab.evaluate import evaluate_run, is_evaluated
    from ntl.lab.progress import write_status
    from ntl.lab.train import checkpoint_folders

    final_step = json.loads((arm_dir / "train_summary.json").read_text())["global_step"]
    for folder in checkpoint_folders(arm_dir):
        if int(folder.name.rsplit("-", 1)[1]) >= final_step:
            continue  # the end is scored by the main evaluation
        if is_evaluated(arm_dir, splits, checkpoint=folder.name):
            continue
        _log(f"eval {key} at {folder.name}")
        write_status(arm_dir, key=key, phase="eval")
        evaluate_run(arm_dir, splits=splits, checkpoint=folder.name, progress=progress)


def _commands(info: dict[str, Any], command: str | None) -> list[str]:
    """The commands recorded in an earlier ``experiment.json`` plus ``command`` (no repeats)."""
    old = info.get("commands") or ([info["command"]] if info.get("command") else [])
    return list(dict.fromkeys([*old, *([command] if command else [])]))


class ProfileMismatchError(UserError, ValueError):
    """A run folder's ``experiment.json`` was written with another profile."""


def read_experiment(path: Path, profile: Profile) -> dict[str, Any]:
    """The content of an existing ``experiment.json`` (``{}`` if there is none), checked to be
    from an experiment with ``profile`` (up to the arm/seed selection).

    Raises:
        ProfileMismatchError: it was written with another profile (the message names the
            differing fields).
        ntl.lab.file_checks.CorruptFileError: it is not valid JSON.
    """
    from ntl.lab.file_checks import CorruptFileError

    if not path.is_file():
        return {}
    fix = f"rerun with --overwrite to start {path.parent} over, or choose another --name"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(info, dict):
        raise CorruptFileError(f"{path} is not a JSON object; {fix}")
    old = info.get("profile", {})
    new = profile.to_dict()
    if _comparable(old) != _comparable(new):
        diff = sorted(k for k in set(old) | set(new)
                      if k not in _SELECTION_FIELDS and old.get(k) != new.get(k))
        raise ProfileMismatchError(
            f"{path} is from an experiment with a different profile (fields: {diff}); {fix}"
        )
    return info


def _log(msg: str) -> None:
    print(f"[ntl experiment] {msg}", flush=True)


def run_experiment(
    profile: Profile,
    name: str,
    *,
    runs_root: str | os.PathLike[str] = "runs",
    data_root: str | os.PathLike[str] = "data",
    command: Sequence[str] | None = None,
    progress: bool = True,
    report: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the experiment ``name`` with ``profile``; return ``experiment.json``.

    ``overwrite`` deletes ``runs_root/name`` first and starts the experiment over (cached data
    and shared bases are kept).

    Raises:
        ProfileMismatchError: ``runs_root/name`` holds an experiment run with a different
            profile (other than the arm/seed selection); the message names the fields,
            ``--overwrite`` and ``--name``. Nothing in the folder is touched.
        ntl.lab.file_checks.CorruptFileError: its ``experiment.json`` is not readable.
    """
    import torch

    from ntl.lab.data.tasks import generate_data
    from ntl.lab.tokenization import prepare_tokenizer

    run_dir = Path(runs_root) / name
    exp_path = run_dir / "experiment.json"
    if overwrite and run_dir.exists():
        import shutil

        _log(f"--overwrite: deleting {run_dir}")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = read_experiment(exp_path, profile)
    if profile.threads:
        torch.set_num_threads(int(profile.threads))
    stages: dict[str, Any] = dict(info.get("stages", {}))
    arms_done = list(dict.fromkeys([*info.get("profile", {}).get("arms", []), *profile.arms]))
    seeds_done = sorted(set(info.get("profile", {}).get("seeds", [])) | set(profile.seeds))
    command_line = shlex.join(command) if command else None
    record = {
        "name": name,
        "profile": {**profile.to_dict(), "arms": arms_done, "seeds": seeds_done},
        "command": command_line,
        # every invocation that added arms/seeds to this folder, oldest first
        "commands": _commands(info, command_line),
        "machine": _machine_record(),
        "stages": stages,
    }

    def save() -> None:
        exp_path.write_text(json.dumps(record, indent=2) + "\n")

    log = _log
    if len(profile.seeds) < 3:
        log(
            f"note: {len(profile.seeds)} seed(s) per arm cannot decide between arms (seed-to-seed "
            "spread is as large as the differences); use >= 3 seeds, e.g. --profile small"
        )

    # 1. data (and a pretrained base's own data)
    def data_stage(spec: Any, key: str) -> dict[str, Path]:
        t0 = time.time()
        paths = generate_data(spec, data_root, progress=progress)
        record[key] = {k: str(v) for k, v in paths.items()}
        stages[f"{key}_s"] = round(time.time() - t0, 1)
        log(f"{key.replace('_', ' ')} ready in {paths['train'].parent} ({stages[f'{key}_s']} s)")
        save()
        return paths

    data_paths = data_stage(profile.data_spec(), "data")
    base_spec = profile.base_data_spec()
    base_paths = data_stage(base_spec, "base_data") if base_spec is not None else {}
    # every file the tokenizer must cover: the arms' data and the base's
    all_paths = {**data_paths, **{f"base_{k}": v for k, v in base_paths.items()}}

    # 2. tokenizer (one for all arms)
    tok_dir = run_dir / "tokenizer"
    tokenizer = prepare_tokenizer(profile, all_paths, tok_dir)
    record["tokenizer"] = {"path": str(tok_dir), "size": len(tokenizer)}
    save()

    # 2b. bases, 3. train, 4. eval: every arm x seed, `jobs` at a time
    bases: dict[int, Path] = {}
    base_tasks: list[dict[str, Any]] = []
    if profile.base_steps > 0:
        from ntl.lab.config import base_profile

        bprofile = base_profile(profile)
        for seed in profile.seeds:
            bases[seed] = base_dir(bprofile, seed, runs_root, all_paths)
            base_tasks.append(dict(profile=bprofile, arm="ce", seed=seed, arm_dir=bases[seed],
                                   evaluate=False, after_base=False,
                                   data_paths=base_paths or data_paths))
        record["bases"] = {str(k): str(v) for k, v in bases.items()}
        save()
    aprofile = arm_profile(profile)
    arm_tasks = []
    for arm in profile.arms:  # arm-major: if time runs out, the last arms go, not seeds
        scratch = arm.endswith(":scratch")
        for seed in profile.seeds:
            if arm == "ce:scratch" and not profile.base_modules:
                # CE from scratch with the base's recipe on the same data *is* the base
                _link(run_dir / arm / f"seed{seed}", bases[seed])
            arm_tasks.append(dict(
                profile=aprofile if profile.base_modules or not scratch else profile,
                arm=arm, seed=seed,
                init_from=bases[seed] / "final" if seed in bases and not scratch else None,
                after_base=(arm == "ce:scratch" and not profile.base_modules)
                or (seed in bases and not scratch),
            ))
    from ntl.lab.progress import Console, run_summary, summary_table, write_status

    watched = {("base" if not t.get("evaluate", True) else t["arm"]) + f"/seed{t['seed']}":
               t.get("arm_dir") or run_dir / t["arm"] / f"seed{t['seed']}" for t in base_tasks + arm_tasks}
    for key, folder in watched.items():
        if not (folder / "train_summary.json").is_file():
            write_status(folder, key=key, phase="queued")
    with Console(watched, live=progress and sys.stdout.isatty()):
        _run_tasks(base_tasks, arm_tasks, run_dir, data_paths, tok_dir, False, profile.jobs, stages, save)
    print(summary_table([run_summary(t["arm"], t["seed"], run_dir / t["arm"] / f"seed{t['seed']}")
                         for t in arm_tasks]))

    # 5. report
    if report:
        from ntl.lab.report import build_report

        t0 = time.time()
        table = build_report(run_dir)
        stages["report_s"] = round(time.time() - t0, 1)
        save()
        print(table)
        log(f"report: {run_dir / 'report.md'}")
    return record


def _run_tasks(
    base_tasks: list[dict[str, Any]],
    arm_tasks: list[dict[str, Any]],
    run_dir: Path,
    data_paths: dict[str, Path],
    tok_dir: Path,
    progress: bool,
    jobs: int,
    stages: dict[str, Any],
    save: Any,
) -> None:
    """Run :func:`_train_and_eval` for every task (keyword dicts), ``jobs`` at a time in worker
    processes (in this process when ``jobs`` is 1); record stage timings as they finish.

    Tasks start in order (bases first, then arms arm-major), each as soon as a slot is free and,
    for an arm that fine-tunes a base (``after_base``), that seed's base has finished: a slot
    never idles while a base trains if any other run can go.
    """
    order = list(base_tasks) + list(arm_tasks)
    bases_left = {t["seed"] for t in base_tasks}

    def next_ready() -> dict[str, Any] | None:
        for i, task in enumerate(order):
            if not (task.get("after_base") and task["seed"] in bases_left):
                return order.pop(i)
        return None

    def finished(task: dict[str, Any], timings: dict[str, Any]) -> None:
        stages.update(timings)
        save()
        if task in base_tasks:
            bases_left.discard(task["seed"])

    def kwargs(task: dict[str, Any]) -> dict[str, Any]:
        # a task's own data (a pretrained base's) replaces the experiment's
        return {"data_paths": data_paths, **{k: v for k, v in task.items() if k != "after_base"}}

    jobs = max(1, min(int(jobs), len(order)))
    if jobs == 1:
        while (task := next_ready()) is not None:
            finished(task, _train_and_eval(run_dir=run_dir, tok_dir=tok_dir, progress=progress,
                                           **kwargs(task)))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    _log(f"{len(order)} runs, {jobs} at a time")
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        pending: dict[Any, dict[str, Any]] = {}
        while order or pending:
            while len(pending) < jobs and (task := next_ready()) is not None:
                future = pool.submit(_train_and_eval, run_dir=run_dir, tok_dir=tok_dir,
                                     progress=False, parent_pid=os.getpid(), **kwargs(task))
                pending[future] = task
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finished(pending.pop(future), future.result())


def _link(path: Path, target: Path) -> None:
    """Make ``path`` a symbolic link to the folder ``target`` (kept if it already is one)."""
    if path.is_symlink() and path.resolve() == target.resolve():
        return
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} exists and is not a link to the base {target}; remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target.resolve(), target_is_directory=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntl experiment``."""
    add_profile_arguments(parser)
    parser.add_argument(
        "--name", default=None, help="run name: results go to RUNS_ROOT/NAME (default: the profile name)"
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        default=None,
        help="arms to run, separated by spaces or commas (default: the profile's), e.g. "
        "ce,ce+ntl-was,ce+ntl-mse,xval,rt,rt+ntl,regression-head; variants ce:multidigit "
        "(t5-small's own multi-digit tokenizer) and ce:decoder (decoder-only model)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="seeds to run (default: the profile's)"
    )
    parser.add_argument("--runs-root", default="runs", help="parent folder of run folders")
    parser.add_argument("--data-root", default="data", help="cache folder for generated data")
    parser.add_argument("--no-report", action="store_true", help="stop after evaluation")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="delete RUNS_ROOT/NAME and start the experiment over (e.g. after changing the profile)",
    )
    parser.add_argument(
        "--no-progress", action="store_true",
        help="plain progress lines (one per run per tenth of its steps) instead of the live display; "
        "for CI and log files (also the default when the output is not a terminal)",
    )


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The profile ``ntl experiment`` runs: ``--profile`` with ``--set``, ``--arms``, ``--seeds``.

    ``--arms`` items may hold several arms separated by commas (the profile's list syntax, as
    in ``--set arms=a,b``). Raises ``KeyError``/``ValueError`` naming a bad field, value or arm.
    """
    from ntl.lab.arms import resolve_arm

    values: dict[str, Any] = parse_sets(args.sets)
    if args.arms:
        values["arms"] = ",".join(args.arms)
    if args.seeds:
        values["seeds"] = list(args.seeds)
    profile = resolve(get_profile(args.profile), values)
    for arm in profile.arms:
        recipe = resolve_arm(arm, profile.lam)  # fail early on a bad arm or variant
        if profile.base_steps > 0 and not recipe.fine_tunes_base:
            raise ValueError(
                f"arm {arm!r} has its own model and cannot fine-tune the CE base of profile "
                f"{profile.name!r}; run it with a from-scratch profile (e.g. --profile small)"
            )
        recipe.apply(profile)
    from ntl.lab.data.tasks import is_regression_task

    is_regression_task(profile.task)  # fail early on an unknown task
    decodings_of(profile)  # ... and on an unknown decoding
    return profile


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ntl experiment``."""
    from ntl._optional import require_extra

    require_extra("lab", "ntl experiment")  # before anything is printed or written
    try:
        profile = profile_from_args(args)
    except (KeyError, ValueError) as exc:
        # a bad --arms / --set / --profile: one line naming the value, not a traceback
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"ntl experiment: {message}", file=sys.stderr)
        return 2
    from ntl.lab.file_checks import CorruptFileError

    try:
        return _run(args, profile)
    except (ProfileMismatchError, CorruptFileError, FileExistsError) as exc:
        print(f"ntl experiment: {exc}", file=sys.stderr)  # names the file and the fix
        return 2


def _run(args: argparse.Namespace, profile: Profile) -> int:
    run_experiment(
        profile,
        args.name or profile.name,
        runs_root=args.runs_root,
        data_root=args.data_root,
        command=["ntl", *sys.argv[1:]] if sys.argv and "ntl" in Path(sys.argv[0]).name else sys.argv,
        progress=not args.no_progress,
        report=not args.no_report,
        overwrite=args.overwrite,
    )
    return 0
