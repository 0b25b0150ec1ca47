"""The lab's tokenizers: where a tokenizer named in a profile is found, and the experiment's one
tokenizer prepared from it.

**Named tokenizers.** The library takes a tokenizer object or anything
`ntl.numbers.load_tokenizer` accepts (a path, a cached hub name); it never looks anywhere else.
The lab's profiles and benchmark shapes name tokenizers by short folder names
(``tokenizer="t5-small"``), resolved here and nowhere else, in this order:

1. the name as a path, when it exists;
2. ``$NTL_TOKENIZERS/<name>`` (a folder of tokenizer folders);
3. ``<checkout>/../shared/tokenizers/<name>`` when ntl runs from a source checkout;
4. the name itself, for `load_tokenizer`'s local Hugging Face cache lookup (``"t5-small"``).

**The prepared tokenizer.** The base tokenizer made digit-level and restricted to the pieces of
the data, prepared once into a folder (``runs/NAME/tokenizer``) that every arm reads. A folder
prepared here holds the tokenizer files plus ``ntl_tokenizer.json`` (the recipe it was made
with), so preparing it again with the same recipe loads it instead of rebuilding it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ntl.lab.config import Profile

TOKENIZERS_ENV = "NTL_TOKENIZERS"
"""The environment variable naming a folder of tokenizer folders."""
_SRC_ROOT = Path(__file__).resolve().parents[3]  # <checkout>/ when running from src/
TOKENIZER_RECIPE = "ntl_tokenizer.json"
"""The file in a prepared tokenizer folder that records the recipe it was made with."""


# ---------------------------------------------------------------------- named tokenizers
def tokenizer_dirs() -> list[Path]:
    """Folders that hold named tokenizer folders, in lookup order (existing ones only)."""
    dirs = []
    if os.environ.get(TOKENIZERS_ENV):
        dirs.append(Path(os.environ[TOKENIZERS_ENV]).expanduser())
    if (_SRC_ROOT / "pyproject.toml").is_file() and (_SRC_ROOT / "src" / "ntl").is_dir():
        dirs.append(_SRC_ROOT.parent / "shared" / "tokenizers")
    return [d for d in dirs if d.is_dir()]


def resolve_tokenizer(name: str | os.PathLike[str]) -> str:
    """The path (or cached hub name) the lab loads for the tokenizer called ``name``."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    for folder in tokenizer_dirs():
        if (folder / str(name)).exists():
            return str(folder / str(name))
    return str(name)


def load_named_tokenizer(name: str | os.PathLike[str]) -> Any:
    """`ntl.numbers.load_tokenizer` of `resolve_tokenizer(name)`; the error says how to point
    the lab at the folder."""
    from ntl.numbers import TokenizerNotFound, load_tokenizer

    try:
        return load_tokenizer(resolve_tokenizer(name))
    except TokenizerNotFound as err:
        raise TokenizerNotFound(
            f"{err}. The lab looks for tokenizer folders in ${TOKENIZERS_ENV}: set "
            f"{TOKENIZERS_ENV}=DIR with DIR/{name}/, or pass a path (ntl experiment --set "
            "tokenizer=PATH)"
        ) from None


# ---------------------------------------------------------------------- the prepared tokenizer
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
    from ntl.numbers import as_generic_fast, split_digits

    given = Path(profile.tokenizer)
    if (given / TOKENIZER_RECIPE).is_file():
        return load_prepared_tokenizer(given)
    recipe = {
        "base": profile.tokenizer,
        "split_digits": profile.split_digits,
        "restrict_vocab": profile.restrict_vocab,
        "data": data_identity(data_paths) if profile.restrict_vocab else None,
    }
    if save_dir is not None and (Path(save_dir) / TOKENIZER_RECIPE).is_file():
        stored = json.loads((Path(save_dir) / TOKENIZER_RECIPE).read_text())
        if stored.get("recipe") == recipe:
            return load_prepared_tokenizer(save_dir)
    tok = load_named_tokenizer(profile.tokenizer)
    if profile.split_digits:
        tok = split_digits(tok)
    tok = as_generic_fast(tok)
    if profile.restrict_vocab:
        if not data_paths:
            raise ValueError("restrict_vocab needs the data splits to read the used pieces from")
        from ntl.lab.data.collate import restrict_tokenizer
        from ntl.lab.data.mathematics import load_split

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


def data_identity(data_paths: Mapping[str, Path] | None) -> str | None:
    """The names of the data cache folders the splits live in (each names a data set), joined
    with ``+`` in first-seen order (one folder: its name), or None."""
    if not data_paths:
        return None
    return "+".join(dict.fromkeys(Path(p).parent.name for p in data_paths.values()))
