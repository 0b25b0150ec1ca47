"""Where the lab finds the tokenizers its profiles name (``tokenizer="t5-small"``, bench shapes).

The library takes a tokenizer object or anything `ntl.numbers.load_tokenizer` accepts (a path, a
cached hub name); it never looks anywhere else. The lab's profiles name tokenizers by short
folder names, resolved here and nowhere else, in this order:

1. the name as a path, when it exists;
2. ``$NTL_TOKENIZERS/<name>`` (a folder of tokenizer folders);
3. ``<checkout>/../shared/tokenizers/<name>`` when ntl runs from a source checkout;
4. the name itself, for `load_tokenizer`'s local Hugging Face cache lookup (``"t5-small"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV_VAR = "NTL_TOKENIZERS"
_SRC_ROOT = Path(__file__).resolve().parents[3]  # <checkout>/ when running from src/


def tokenizer_dirs() -> list[Path]:
    """Folders that hold named tokenizer folders, in lookup order (existing ones only)."""
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser())
    if (_SRC_ROOT / "pyproject.toml").is_file() and (_SRC_ROOT / "src" / "ntl").is_dir():
        dirs.append(_SRC_ROOT.parent / "shared" / "tokenizers")
    return [d for d in dirs if d.is_dir()]


def resolve(name: str | os.PathLike[str]) -> str:
    """The path (or cached hub name) the lab loads for the tokenizer called ``name``."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    for folder in tokenizer_dirs():
        if (folder / str(name)).exists():
            return str(folder / str(name))
    return str(name)


def load(name: str | os.PathLike[str]) -> Any:
    """`ntl.numbers.load_tokenizer` of `resolve(name)`; the error says how to point the lab at it."""
    from ntl.numbers import TokenizerNotFound, load_tokenizer

    try:
        return load_tokenizer(resolve(name))
    except TokenizerNotFound as err:
        raise TokenizerNotFound(
            f"{err}. The lab looks for tokenizer folders in ${ENV_VAR}: set {ENV_VAR}=DIR with "
            f"DIR/{name}/, or pass a path (ntl experiment --set tokenizer=PATH)"
        ) from None
