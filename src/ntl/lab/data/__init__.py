"""Data for the experiments: DeepMind mathematics question/answer pairs, generated offline, split
into train / valid / interpolate / extrapolate and cached as jsonl (see
:mod:`ntl.lab.data.mathematics`; command line: ``ntl data``). Importing this package is cheap; the
generator is imported only when data is generated."""

from ntl.lab.data.mathematics import (
    EXTRAPOLATE_MODULES,
    EXTRAPOLATE_OF,
    SPLITS,
    TRAIN_MODULES,
    DataSpec,
    generate,
    load_split,
)

__all__ = [
    "EXTRAPOLATE_MODULES",
    "EXTRAPOLATE_OF",
    "SPLITS",
    "TRAIN_MODULES",
    "DataSpec",
    "generate",
    "load_split",
]
