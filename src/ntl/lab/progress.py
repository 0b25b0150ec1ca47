"""What a run tells the person watching it: a per-run log file, a status file, one live line.

Every training run writes two files into its folder (``runs/<name>/<arm>/seed<k>/``):

- ``train.log``: one line per logging step (step, loss, CE, NTL, learning rate, speed), the full
  record of the run, appended across resumes;
- ``status.json``: the latest state (phase, step/total, loss, ce, ntl, steps/s, ETA), rewritten
  atomically, read by the console.

``ntl experiment`` reads the status files of its runs (so worker processes need no channel to the
parent) and shows one line per run: live with ``rich`` on a terminal, or as plain lines at every
tenth of a run when the output is a file or ``--no-progress`` is given. At the end it prints a
summary table. The Trainer's raw log dicts and the model-saving progress bars are switched off.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
LOG_FILE = "train.log"


def quiet_transformers(trainer: Any) -> None:
    """Stop ``trainer`` printing raw log dicts and transformers/hub progress bars (saving,
    loading); ``train.log`` and the console line replace them."""
    from transformers import PrinterCallback, ProgressCallback
    from transformers.utils import logging as hf_logging

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    hf_logging.disable_progress_bar()


def write_status(run_dir: Path, **status: Any) -> None:
    """Atomically replace ``run_dir/status.json`` with ``status`` (plus the time written)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATUS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({**status, "time": time.time()}))
    os.replace(tmp, run_dir / STATUS_FILE)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The last status of the run in ``run_dir``; ``None`` if there is none (yet)."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _fmt_num(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _fmt_eta(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "–"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def status_line(key: str, st: Mapping[str, Any] | None) -> str:
    """One human line for run ``key`` (``arm/seed<k>``): phase, step/total, losses, speed, ETA."""
    if not st:
        return f"{key:<34} waiting"
    phase = st.get("phase", "?")
    if phase in ("queued", "eval", "done"):
        extra = f"  {st['note']}" if st.get("note") else ""
        return f"{key:<34} {phase}{extra}"
    step, total = st.get("step", 0), st.get("total", 0)
    return (f"{key:<34} {phase} {step:>6}/{total:<6} loss {_fmt_num(st.get('loss'))}  "
            f"ce {_fmt_num(st.get('ce'))}  ntl {_fmt_num(st.get('ntl'))}  "
            f"{_fmt_num(st.get('steps_per_s'), 3)} steps/s  ETA {_fmt_eta(st.get('eta_s'))}")


def status_callback(run_dir: Path, key: str) -> Any:
    """A ``transformers.TrainerCallback`` that appends each log to ``train.log`` and keeps
    ``status.json`` current for the run ``key`` training in ``run_dir``."""
    from transformers import TrainerCallback

    class RunStatus(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.time()
            self.step0 = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0 = time.time(), state.global_step
            with (run_dir / LOG_FILE).open("a", encoding="utf-8") as f:
                f.write(f"# {key}: training from step {state.global_step} to {state.max_steps}\n")
            write_status(run_dir, key=key, phase="train", step=state.global_step, total=state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            done = state.global_step - self.step0
            elapsed = max(time.time() - self.t0, 1e-9)
            speed = done / elapsed if done > 0 else math.nan
            left = state.max_steps - state.global_step
            eta = left / speed if done > 0 else math.nan
            fields = {k: logs[k] for k in ("loss", "ce", "ntl", "learning_rate", "grad_norm") if k in logs}
            with (run_dir / LOG_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs,
                                    "steps_per_s": round(speed, 3) if done else None}) + "\n")
            if "loss" in logs:
                write_status(run_dir, key=key, phase="train", step=state.global_step,
                             total=state.max_steps, steps_per_s=speed, eta_s=eta, **fields)

    return RunStatus()


class Console:
    """One line per run of an ``ntl experiment`` invocation, refreshed from the status files.

    ``runs`` maps a display key (``arm/seed<k>``) to the run folder. On a terminal (and with
    ``live=True``) a ``rich`` live table redraws every second; otherwise a plain line is printed
    for a run whenever it moves on by a tenth of its steps or changes phase.
    """

    def __init__(self, runs: Mapping[str, Path], *, live: bool = True, interval: float = 1.0) -> None:
        self.runs = dict(runs)
        self.interval = interval
        self.live = live
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._printed: dict[str, tuple[str, int]] = {}

    def lines(self) -> list[str]:
        return [status_line(key, read_status(path)) for key, path in self.runs.items()]

    def _plain_tick(self) -> None:
        for key, path in self.runs.items():
            st = read_status(path)
            if not st:
                continue
            total = max(int(st.get("total") or 0), 1)
            mark = (st.get("phase", ""), int(10 * int(st.get("step") or 0) / total))
            if self._printed.get(key) != mark:
                self._printed[key] = mark
                print(f"[ntl experiment] {status_line(key, st)}", flush=True)

    def _run(self) -> None:
        if self.live:
            from rich.live import Live
            from rich.text import Text

            with Live(Text("\n".join(self.lines())), refresh_per_second=2, transient=True) as live:
                while not self._stop.wait(self.interval):
                    live.update(Text("\n".join(self.lines())))
        else:
            while not self._stop.wait(self.interval):
                self._plain_tick()
            self._plain_tick()

    def __enter__(self) -> Console:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of finished runs: arm, seed, steps, time, final loss / CE / NTL, valid
    exact match and paper accuracy (rendered by ``rich``)."""
    from io import StringIO

    from rich.console import Console as RichConsole
    from rich.table import Table

    table = Table(title="ntl experiment: runs", show_lines=False)
    for col in ("arm", "seed", "steps", "train time", "loss", "ce", "ntl", "valid EM", "valid paper acc"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for r in rows:
        table.add_row(str(r["arm"]), str(r["seed"]), str(r.get("steps", "–")), _fmt_eta(r.get("train_s")),
                      _fmt_num(r.get("loss")), _fmt_num(r.get("ce")), _fmt_num(r.get("ntl")),
                      _fmt_num(r.get("valid_em"), 3), _fmt_num(r.get("valid_paper_acc"), 3))
    out = StringIO()
    RichConsole(file=out, width=160, color_system=None).print(table)
    return out.getvalue()


def run_summary(arm: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """One row of :func:`summary_table` read from a run folder's files."""
    row: dict[str, Any] = {"arm": arm, "seed": seed}
    try:
        summary = json.loads((run_dir / "train_summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    final = summary.get("final_log") or {}
    row.update(steps=summary.get("global_step"), loss=final.get("loss"), ce=final.get("ce"),
               ntl=final.get("ntl"), train_s=summary.get("runtime_s_this_session"))
    try:
        valid = json.loads((run_dir / "eval" / "metrics.json").read_text())["valid"]["overall"]
        em, paper = valid["exact_match"]["value"], (valid.get("paper_accuracy") or {}).get("value")
        row.update(valid_em=math.nan if em is None else em,
                   valid_paper_acc=math.nan if paper is None else paper)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return row
