"""Tucker-2 decomposition of a conv kernel (modes Cout and Cin) by HOSVD + HOOI in float64.

W[Cout, Cin, KH, KW] ~= core[R4, R3, KH, KW] x_0 U_out[Cout, R4] x_1 U_in[Cin, R3], which
is the three-conv chain Cin -1x1(U_in^T)-> R3 -KxK(core)-> R4 -1x1(U_out)-> Cout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimcc.passes.lowrank.ranks import unfold


@dataclass
class TuckerFactors:
    """The three factors of a Tucker-2 decomposition (float64)."""

    u_in: np.ndarray   # [Cin, R3]
    core: np.ndarray   # [R4, R3, KH, KW]
    u_out: np.ndarray  # [Cout, R4]

    def reconstruct(self) -> np.ndarray:
        """The approximated kernel W_hat[Cout, Cin, KH, KW]."""
        return np.einsum("or,rshw,is->oihw", self.u_out, self.core, self.u_in, optimize=True)


def leading_left_vectors(matrix: np.ndarray, rank: int) -> np.ndarray:
    """The `rank` leading left singular vectors of `matrix` (as columns), orthonormal.

    Wide matrices (the usual case: Cin x Cout*K) go through the eigenvectors of the small
    Gram matrix M M^T, which is several times cheaper than an SVD of M.
    """
    if matrix.shape[1] > 2 * matrix.shape[0]:
        values, vectors = np.linalg.eigh(matrix @ matrix.T)
        return vectors[:, np.argsort(values)[::-1][:rank]]
    u, _, _ = np.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank]


def project_core(weight: np.ndarray, u_in: np.ndarray, u_out: np.ndarray) -> np.ndarray:
    """core = W x_0 U_out^T x_1 U_in^T (the optimal core for orthonormal factors)."""
    return np.einsum("oihw,or,is->rshw", weight, u_out, u_in, optimize=True)


def tucker2(weight: np.ndarray, r3: int, r4: int, iters: int = 3) -> TuckerFactors:
    """Tucker-2 of a conv kernel: HOSVD initialisation, then `iters` HOOI sweeps.

    HOOI alternates: U_in from the mode-1 unfolding of W projected on U_out, then U_out from
    the mode-0 unfolding of W projected on U_in; each sweep cannot increase the error.
    """
    w = np.asarray(weight, dtype=np.float64)
    cout, cin = w.shape[:2]
    if not (1 <= r3 <= cin and 1 <= r4 <= cout):
        raise ValueError(f"Tucker ranks ({r3}, {r4}) out of range for a {cout}x{cin} kernel")
    u_out = leading_left_vectors(unfold(w, 0), r4)
    u_in = leading_left_vectors(unfold(w, 1), r3)
    for _ in range(iters):
        u_in = leading_left_vectors(unfold(np.einsum("oihw,or->rihw", w, u_out, optimize=True), 1), r3)
        u_out = leading_left_vectors(unfold(np.einsum("oihw,is->oshw", w, u_in, optimize=True), 0), r4)
    return TuckerFactors(u_in=u_in, core=project_core(w, u_in, u_out), u_out=u_out)


def relative_error(weight: np.ndarray, approx: np.ndarray) -> float:
    """||W - W_hat|| / ||W|| (Frobenius, float64); 0 for an all-zero W reproduced exactly."""
    w = np.asarray(weight, dtype=np.float64)
    norm = float(np.linalg.norm(w))
    diff = float(np.linalg.norm(w - approx))
    return diff / norm if norm > 0 else diff
