"""Cache folders of generated data: built in a temporary sibling folder and renamed into place, so
an interrupted run never leaves a folder that looks complete, and a finished one is reused."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def publish(final: Path, is_complete: Callable[[Path], bool], write: Callable[[Path], None]) -> Path:
    """Make ``final`` a complete cache folder, reusing it when ``is_complete(final)``.

    Otherwise ``write(tmp)`` fills an empty temporary sibling folder, which then replaces
    ``final``. If another process completed ``final`` in the meantime, its folder is kept.

    Args:
        final: the cache folder (its parent is created if missing).
        is_complete: whether a folder holds finished data (it should check the marker file that
            ``write`` writes last).
        write: fills the folder it is given.

    Returns:
        ``final``.
    """
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        if final.exists():
            if is_complete(final):  # another process finished first: keep theirs.
                shutil.rmtree(tmp)
                return final
            stale = final.parent / f".{final.name}.stale-{os.getpid()}"
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
