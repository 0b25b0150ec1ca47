"""Where a result was produced: CPU or GPU model, core count, Python, torch and package versions.

One record for every file the lab writes that quotes a measurement (``ntl bench``, the GPU
check, ``ntl report``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (a PyPI name such as ``liger-kernel``), or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str | None = None, packages: Iterable[str] = ()) -> dict[str, Any]:
    """The machine and library versions, for the record.

    Args:
        device: ``"cuda"`` adds the GPU's name (``gpu``) when torch sees one; anything else
            records the CPU only.
        packages: distribution names whose versions are added under their own name
            (None when not installed).

    Returns:
        ``platform``, ``cpu``, ``cpu_count``, ``python``, ``torch`` (version),
        ``torch_threads``, then ``gpu`` and one key per package where asked.
    """
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for name in packages:
        info[name] = package_version(name)
    return info
