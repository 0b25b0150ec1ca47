"""Checks of the files the lab reads back: data splits (jsonl), weights (safetensors) and
checkpoint folders. Each failure is one :class:`CorruptFileError` that names the file and the fix;
nothing is deleted or rewritten here.

Pure standard library (no torch): a ``model.safetensors`` is checked by reading its header (an
8-byte little-endian length, then JSON with each tensor's byte range) and comparing the byte
ranges with the file's size, so a truncated file is caught before anything loads it.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from ntl.errors import UserError

__all__ = [
    "CorruptFileError",
    "check_checkpoint",
    "check_model_folder",
    "check_safetensors",
    "read_jsonl",
]

WEIGHTS_NAME = "model.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"


class CorruptFileError(UserError, RuntimeError):
    """A file the lab wrote earlier is truncated or corrupt. The message names the file and
    what to do (regenerate it, resume from the previous checkpoint, or start over)."""


def read_jsonl(path: str | os.PathLike[str], fix: str) -> list[dict[str, Any]]:
    """The records of a jsonl file, one JSON object per non-empty line.

    Raises:
        CorruptFileError: a line is not a JSON object, or the file does not end with a newline
            (the writer was stopped mid-line); the message names the file, the line and ``fix``.
    """
    path = Path(path)
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        raise CorruptFileError(f"{path} is truncated (its last line is incomplete); {fix}")
    out = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{path}: line {n} is not valid JSON ({exc.msg}); {fix}") from None
        if not isinstance(rec, dict):
            raise CorruptFileError(f"{path}: line {n} is not a JSON object; {fix}")
        out.append(rec)
    return out


def check_safetensors(path: str | os.PathLike[str], fix: str) -> None:
    """Raise :class:`CorruptFileError` unless ``path`` is a complete safetensors file.

    The header's tensor byte ranges must fit in the file and end exactly at its end.
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing; {fix}")
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a {size}-byte file")
            header = json.loads(f.read(n))
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({exc}); {fix}") from None
    if 8 + n + end != size:
        raise CorruptFileError(
            f"{path} is truncated or corrupt: its header describes {8 + n + end} bytes, the file "
            f"has {size}; {fix}"
        )


def check_model_folder(path: str | os.PathLike[str], fix: str | None = None) -> None:
    """A saved model folder (``final/`` or a checkpoint): ``config.json`` and a complete
    ``model.safetensors``. ``fix`` defaults to retraining advice for a run's ``final/``."""
    path = Path(path)
    if fix is None:
        run = path.parent
        fix = (
            f"delete {path} and {run / 'train_summary.json'} and run `ntl train --out {run} "
            "--resume` (it continues from the last checkpoint), or --overwrite to start over"
        )
    if not (path / "config.json").is_file():
        raise CorruptFileError(f"{path / 'config.json'} is missing; {fix}")
    check_safetensors(path / WEIGHTS_NAME, fix)


def check_checkpoint(path: str | os.PathLike[str], previous: str | os.PathLike[str] | None) -> None:
    """A ``checkpoint-<step>`` folder the Trainer can resume from: ``trainer_state.json`` (JSON)
    and a complete ``model.safetensors``. ``previous`` is the checkpoint before it (or None),
    named in the fix."""
    path = Path(path)
    if previous is not None:
        fix = (
            f"delete {path} and rerun with --resume to continue from {Path(previous).name}, or "
            "with --overwrite to start over"
        )
    else:
        fix = f"delete {path} and rerun with --resume (it starts from step 0), or with --overwrite"
    state = path / TRAINER_STATE_NAME
    if not state.is_file():
        raise CorruptFileError(
            f"{state} is missing (the save of {path.name} was interrupted); {fix}"
        )
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{state} is not valid JSON ({exc}); {fix}") from None
    check_model_folder(path, fix)
