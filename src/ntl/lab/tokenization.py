"""The experiment's one tokenizer: the base tokenizer made digit-level and restricted to the
pieces of the data, prepared once into a folder (``runs/NAME/tokenizer``) that every arm reads.

A folder prepared here holds the tokenizer files plus ``ntl_tokenizer.json`` (the recipe it was
made with), so preparing it again with the same recipe loads it instead of rebuilding it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ntl.lab.config import Profile

TOKENIZER_RECIPE = "ntl_tokenizer.json"


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
    from ntl.lab import lab_tokenizers
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
    tok = lab_tokenizers.load(profile.tokenizer)
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
