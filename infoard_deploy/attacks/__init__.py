"""Attacks: the training-time per-sample PGD (:mod:`.pgd`) and the evaluation suite (:mod:`.suite`).

:data:`ATTACKS` maps evaluation attack names (``clean``, ``fgsm``, ``pgd20``, ``cw``, ``aa`` ...) to
factories; it is filled by :mod:`.suite`.
"""
from ..registry import Registry
from .pgd import pgd, pgd_ce

ATTACKS: Registry = Registry("attack")

__all__ = ["ATTACKS", "pgd", "pgd_ce"]

from . import suite  # noqa: F401,E402  (fills ATTACKS)
