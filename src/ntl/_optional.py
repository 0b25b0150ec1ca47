"""Optional dependencies: which extra provides a module, and a one-line error when it is missing.

The library itself needs torch and numpy only. Everything else belongs to an extra of the
``number-token-loss`` distribution:

- ``[hf]``: ``transformers`` + ``tokenizers`` (+ ``sentencepiece``): number vocabularies from
  tokenizers, the ``Trainer`` glue;
- ``[trl]``: ``trl`` for `ntl.integrations.trl`;
- ``[lab]``: data generation, training, evaluation, reports and benchmarks.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from ntl.errors import UserError

DISTRIBUTION = "number-token-loss"

# Top-level module -> the extra that installs it.
EXTRA_OF: dict[str, str] = {
    "transformers": "hf",
    "tokenizers": "hf",
    "sentencepiece": "hf",
    "google": "hf",  # protobuf, read by SentencePiece-based tokenizers
    "trl": "trl",
    "datasets": "trl",
    "accelerate": "lab",
    "safetensors": "lab",
    "mathematics_dataset": "lab",
    "sympy": "lab",
    "matplotlib": "lab",
    "tqdm": "lab",
    "scipy": "lab",
    "plotnine": "lab",  # only for the diamonds CSV it ships
    "sklearn": "lab",
    "rich": "lab",
    "ntloss": "dev",
}

# Extra -> every module it installs (pyproject.toml's [project.optional-dependencies], with the
# extras it includes spelled out), for commands that check all of them before they start.
_HF_MODULES = ("transformers", "tokenizers", "sentencepiece", "google.protobuf", "accelerate")
MODULES_OF_EXTRA: dict[str, tuple[str, ...]] = {
    "hf": _HF_MODULES,
    "trl": (*_HF_MODULES, "trl", "datasets"),
    "lab": (*_HF_MODULES, "safetensors", "mathematics_dataset", "sympy", "matplotlib", "tqdm",
            "rich", "scipy", "plotnine", "sklearn"),
}


class MissingDependency(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def install_hint(module: str) -> str:
    """``pip install 'number-token-loss[EXTRA]'`` for ``module``, or a plain pip line."""
    extra = EXTRA_OF.get(module.split(".")[0])
    return f"pip install '{DISTRIBUTION}[{extra}]'" if extra else f"pip install {module.split('.')[0]}"


def missing_message(module: str, feature: str) -> str:
    """One line: what needs ``module``, and the command that installs it."""
    return f"{feature} needs {module.split('.')[0]}, which is not installed: {install_hint(module)}"


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise `MissingDependency` naming ``feature`` and the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = err.name or module
        if missing.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but one of *its* imports is broken: a real bug
        raise MissingDependency(missing_message(module, feature)) from None


def as_missing_dependency(err: ModuleNotFoundError, feature: str) -> MissingDependency | None:
    """A `MissingDependency` for ``err`` when it is about an optional dependency, else None."""
    name = (err.name or "").split(".")[0]
    if name not in EXTRA_OF:
        return None
    return MissingDependency(missing_message(name, feature))


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` (`MODULES_OF_EXTRA`) that cannot be found; none is imported."""
    return [module for module in MODULES_OF_EXTRA[extra] if not _findable(module)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package ("google"), or no spec
        return False


def require_extra(extra: str, feature: str) -> None:
    """Raise `MissingDependency` naming every missing module of ``extra`` and the install line.

    For commands that would otherwise fail part-way, after writing files, on the first module
    they import.
    """
    missing = [m.split(".")[0] if m != "google.protobuf" else "protobuf" for m in missing_modules(extra)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise MissingDependency(f"{feature} needs {', '.join(missing)}, which {verb} not installed: "
                                f"pip install '{DISTRIBUTION}[{extra}]'")
