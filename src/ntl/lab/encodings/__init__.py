"""The paper's other ways of teaching numbers to a language model, as experiment arms.

Arms (names as ``ntl experiment --arms`` takes them):

- ``xval`` / ``xval-linear``: one ``[NUM]`` token per number, embedding scaled by the value
  (signed-log / linear), a number head regresses the value (:mod:`ntl.lab.encodings.xval`);
- ``rt``: Regression-Transformer place-value tokens ``_d_p_`` with a fixed numeric encoding
  (:mod:`ntl.lab.encodings.rt`), trained with CE (NTL-MSE is logged with λ = 0);
- ``rt+ntl`` (= ``rt+ntl-mse``, the paper's RT + NTL-MSE), ``rt+ntl-<loss>[@lam]``: the same
  plus λ·NTL on the digit values of the place-value tokens;
- ``regression-head``: T5 encoder + scalar head trained with MSE on the signed-log answer
  (:mod:`ntl.lab.encodings.regression_head`).

Each is a Hugging Face model class whose ``forward`` returns its loss; their recipes in
:mod:`ntl.lab.arms` (tokens, features, collator, decoding) let :func:`ntl.lab.train.train_arm` train them
with the same Trainer call as the token arms. This module only parses arm names, so
``import ntl.lab.encodings`` is cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ENCODING_ARMS", "EncodingArm", "is_encoding_arm", "parse_encoding_arm"]

#: The arm names in their default form.
ENCODING_ARMS: tuple[str, ...] = ("xval", "rt", "rt+ntl", "regression-head")
#: NTL variants the RT arm accepts (the number-level loss needs a decimal-point token RT lacks).
RT_NTL_LOSSES: tuple[str, ...] = ("mse", "was", "mae", "huber")
_RT_RE = re.compile(r"^rt(?:\+ntl(?:-(?P<loss>[a-z]+))?(?:@(?P<lam>[0-9.eE+-]+))?)?$")


@dataclass(frozen=True)
class EncodingArm:
    """A parsed encoding arm.

    Attributes:
        name: the arm name as given.
        kind: ``"xval"``, ``"rt"`` or ``"regression-head"``.
        ntl: RT only: the NTL variant computed (``"mse"`` by default, the paper's).
        lam: RT only: its weight (0 for ``rt``: logged, not trained on).
        scaling: xVal only: ``"signed-log"`` or ``"linear"``.
    """

    name: str
    kind: str
    ntl: str | None = None
    lam: float = 0.0
    scaling: str | None = None


def parse_encoding_arm(name: str, default_lam: float = 0.3) -> EncodingArm:
    """Parse an encoding arm name; ``ValueError`` naming the accepted forms otherwise."""
    text = name.strip()
    if text == "xval":
        return EncodingArm(name, "xval", scaling="signed-log")
    if text == "xval-linear":
        return EncodingArm(name, "xval", scaling="linear")
    if text == "regression-head":
        return EncodingArm(name, "regression-head")
    m = _RT_RE.match(text)
    if m is not None:
        if text == "rt":
            return EncodingArm(name, "rt", ntl="mse", lam=0.0)
        loss = m.group("loss") or "mse"
        if loss not in RT_NTL_LOSSES:
            raise ValueError(f"arm {name!r}: RT takes NTL {RT_NTL_LOSSES}, got {loss!r}")
        lam = float(m.group("lam")) if m.group("lam") is not None else float(default_lam)
        if lam < 0:
            raise ValueError(f"arm {name!r}: λ must be >= 0")
        return EncodingArm(name, "rt", ntl=loss, lam=lam)
    raise ValueError(
        f"{name!r} is not an encoding arm; use xval, xval-linear, rt, rt+ntl, "
        f"rt+ntl-<loss>[@lam] (loss in {RT_NTL_LOSSES}) or regression-head"
    )


def is_encoding_arm(name: str) -> bool:
    """True for the baseline arm names (xVal, RT, regression head), not the token arms."""
    try:
        parse_encoding_arm(name)
    except ValueError:
        return False
    return True
