"""Which axis of an operator's output holds its channels (features).

Per-channel statistics (bias correction, channel maps, pruning spaces, requantization) must run
along this axis. Convolution-style ops write NC... tensors (channels on axis 1); MatMul, Gemm and
the ops that work on feature rows write [..., C] tensors (channels last), e.g. the [N, T, C]
activations of attention blocks.
"""

from __future__ import annotations

LAST_AXIS_OPS = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"})


def channel_axis(op: str, rank: int, attrs: dict | None = None) -> int:
    """The non-negative channel axis of a rank-`rank` output of `op`.

    The last axis for MatMul/Gemm (and their integer forms); the first normalized axis for
    LayerNormalization (its `axis` attribute, -1 by default); axis 1 for everything else
    (Conv, BatchNormalization, pooling: NC... layouts); axis 0 for tensors of rank <= 1."""
    if rank <= 1:
        return 0
    if op in LAST_AXIS_OPS:
        return rank - 1
    if op == "LayerNormalization":
        return int((attrs or {}).get("axis", -1)) % rank
    return 1
