"""Truncated SVD of a layer's weight matrix B = U S V^T, split into two (or three) factors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SvdFactors:
    """B[rows, cols] ~= left[rows, R] @ diag(s[R]) @ right[R, cols] (float64)."""

    left: np.ndarray
    s: np.ndarray
    right: np.ndarray

    def reconstruct(self) -> np.ndarray:
        return (self.left * self.s) @ self.right

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """Two factors with S split as sqrt(S) into each side (balanced magnitudes for float32)."""
        root = np.sqrt(self.s)
        return self.left * root, root[:, None] * self.right


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """Singular values of a matrix in float64, descending."""
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


def truncated_svd(matrix: np.ndarray, rank: int) -> SvdFactors:
    """The best rank-`rank` approximation of `matrix` (Eckart-Young), as U, S, V^T factors."""
    b = np.asarray(matrix, dtype=np.float64)
    if not 1 <= rank <= min(b.shape):
        raise ValueError(f"SVD rank {rank} out of range for a {b.shape[0]}x{b.shape[1]} matrix")
    u, s, vt = np.linalg.svd(b, full_matrices=False)
    return SvdFactors(left=u[:, :rank], s=s[:rank], right=vt[:rank])
