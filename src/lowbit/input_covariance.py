"""``InputCovariance``: the covariance of what a weight layer multiplies its weights with.

A layer's output error from a weight error ``dw`` (one output channel's row) is ``dw . p`` for every input patch
``p`` it sees, so its mean square over the calibration inputs is ``dw^T E[p p^T] dw``. With that matrix, a weight
range can be chosen for the error it causes in the layer's output rather than in the weights themselves: two
weights with the same rounding error matter very differently when one multiplies a large, correlated input.
The mean of ``p`` is removed because bias correction takes out the mean part of the output error. How it is
measured: :mod:`lowbit.input_patches`.
"""

from __future__ import annotations

import torch


class InputCovariance:
    """The covariance of a layer's input patches, per group, in whichever form is cheaper to multiply by: the
    ``(groups, d, d)`` matrix, or, for long rows, a ``(groups, n, d)`` factor ``F`` with ``F^T F`` the covariance
    (the centred sampled patches over ``sqrt(n)``), which costs ``n`` instead of ``d`` per weight."""

    def __init__(self, matrix: torch.Tensor | None = None, factor: torch.Tensor | None = None) -> None:
        if (matrix is None) == (factor is None):
            raise ValueError("give the matrix or its factor")
        self.matrix, self.factor = matrix, factor

    @property
    def groups(self) -> int:
        return (self.matrix if self.matrix is not None else self.factor).shape[0]  # type: ignore[union-attr]

    def to(self, like: torch.Tensor) -> "InputCovariance":
        if self.matrix is not None:
            return InputCovariance(matrix=self.matrix.to(like))
        return InputCovariance(factor=self.factor.to(like))  # type: ignore[union-attr]

    def _grouped(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.reshape(*rows.shape[:-2], self.groups, -1, rows.shape[-1])

    def _ungrouped(self, values: torch.Tensor) -> torch.Tensor:
        return values.reshape(*values.shape[:-2], -1)

    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a_c^T C b_c`` for every row ``c`` of ``(..., channels, d)`` weight-shaped tensors (rows in group order)."""
        a, b = self._grouped(a), self._grouped(b)
        if self.matrix is not None:
            return self._ungrouped(((a @ self.matrix) * b).sum(dim=-1))
        ft = self.factor.transpose(-1, -2)  # type: ignore[union-attr]
        return self._ungrouped(((a @ ft) * (b @ ft)).sum(dim=-1))

    def quadratic(self, a: torch.Tensor) -> torch.Tensor:
        """``a_c^T C a_c`` per row: the mean squared output change that a weight change ``a`` causes."""
        if self.matrix is not None:
            return self.inner(a, a)
        return self._ungrouped((self._grouped(a) @ self.factor.transpose(-1, -2)).square().sum(dim=-1))  # type: ignore[union-attr]
