"""Rounding methods, registered by name in :data:`ALGORITHMS` (see :mod:`lowbit.algorithms.registry`).

Round-to-nearest needs nothing; the learned-rounding methods are each one file on top of the reconstruction
engine (:mod:`lowbit.algorithms.reconstruct`), saying through its hooks (:mod:`lowbit.algorithms.method`) what
makes them that method.
"""

from lowbit.algorithms import adaround, brecq, eptq, nearest, qdrop  # noqa: F401 - each registers itself
from lowbit.algorithms.registry import ALGORITHMS, Algorithm, get_algorithm, make_options

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm", "make_options"]
