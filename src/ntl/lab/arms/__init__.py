"""The arms of an experiment, by name: a registry of recipes (:class:`ArmRecipe`), one per kind.

============================  ==========================  =========================================
name                          recipe                      model / trainer
============================  ==========================  =========================================
``ce``, ``ce+ntl-<loss>...``  :mod:`ntl.lab.arms.token`       T5 / decoder-only LM, ``NTLTrainer``
``xval``, ``xval-linear``     :mod:`ntl.lab.arms.xval`        ``XValT5`` (CE + MSE), ``PartsTrainer``
``rt``, ``rt+ntl...``         :mod:`ntl.lab.arms.rt`          ``RTT5`` (CE), ``NTLTrainer`` (+λ·NTL)
``regression-head``           :mod:`ntl.lab.arms.regression_head`  ``RegressionT5`` (MSE), ``PartsTrainer``
============================  ==========================  =========================================

Every recipe is trained by the same :func:`ntl.lab.train.train_arm` and evaluated by the same
:func:`ntl.lab.evaluate.evaluate_run`; adding an arm kind is adding an entry to :data:`BASELINES`
(or a variant to :data:`ntl.lab.arms.token.ARM_VARIANTS`). Importing this package is cheap (no
torch, no transformers).
"""

from __future__ import annotations

from collections.abc import Callable

from ntl.lab.arms.base import ArmRecipe
from ntl.lab.encodings import EncodingArm, is_encoding_arm, parse_encoding_arm

__all__ = ["ArmRecipe", "BASELINES", "resolve_arm"]


def _xval(arm: EncodingArm) -> ArmRecipe:
    from ntl.lab.arms.xval import XValRecipe

    return XValRecipe(arm)


def _rt(arm: EncodingArm) -> ArmRecipe:
    from ntl.lab.arms.rt import RTRecipe

    return RTRecipe(arm)


def _regression_head(arm: EncodingArm) -> ArmRecipe:
    from ntl.lab.arms.regression_head import RegressionRecipe

    return RegressionRecipe(arm)


#: Baseline kind (``ntl.lab.encodings.EncodingArm.kind``) -> its recipe.
BASELINES: dict[str, Callable[[EncodingArm], ArmRecipe]] = {
    "xval": _xval,
    "rt": _rt,
    "regression-head": _regression_head,
}


def resolve_arm(name: str, default_lam: float = 0.3) -> ArmRecipe:
    """The recipe of arm ``name``; ``default_lam`` is λ for NTL arms without ``@λ``.

    Raises:
        ValueError: ``name`` is neither a token arm (``ce``, ``ce+ntl-<loss>[@λ][:variant]``) nor a
            baseline (``xval``, ``xval-linear``, ``rt``, ``rt+ntl[-<loss>][@λ]``,
            ``regression-head``); the message names it and the accepted forms.
    """
    if is_encoding_arm(name):
        spec = parse_encoding_arm(name, default_lam)
        return BASELINES[spec.kind](spec)
    from ntl.lab.arms.token import TokenRecipe, parse_arm

    try:
        return TokenRecipe(parse_arm(name, default_lam))
    except ValueError as exc:
        raise ValueError(
            f"{exc}; baselines: xval, xval-linear, rt, rt+ntl[-<loss>][@lam], regression-head"
        ) from None
