"""Before legalization: a float matmul with a constant weight -> slimcc's GEMM on a packed weight.

    x[*batch, M, K] @ W[*wbatch, K, N]   (W constant; x's batch dims complete, W's broadcast)
    -> reshape x to [G, R, K], W to [G, K, N] packed as Wp[G, N / fi, K, fi]
       out[g, r, n] = sum_k x[g, r, k] * Wp[g, n // fi, k, n % fi]      (block `slimcc_matmul`)
    -> reshape back to [*batch, M, N]

G is the product of W's leading batch dims (a bidirectional LSTM's two directions), R every other
row of x (time steps, tokens, the batch). Vectors run along N, contiguous in the output, so the
tile needs no transposed write-back. A [1, K] @ [K, N] matmul (a classifier) is the R = 1 case.
"""

from __future__ import annotations

import numpy as np

from slimcc.targets.relax_values import constant_array, static_shape, tensor_dtype
from slimcc.targets.schedules.isa import CpuVector
from slimcc.targets.te_kernels import call_te_kernel
from slimcc.targets.tvm_import import ensure_tvm

MATMUL_BLOCK = "slimcc_matmul"


def packed_matmul_call(call, builder, vector: CpuVector):
    """The rewritten call (see module doc), or `call` itself when its shapes are not of that form."""
    ensure_tvm()
    from tvm import relax, te

    data, weight = call.args
    x_shape, w_shape, out_shape = static_shape(data), static_shape(weight), static_shape(call)
    if (x_shape is None or w_shape is None or out_shape is None or len(x_shape) < 2 or len(w_shape) < 2
            or {tensor_dtype(data), tensor_dtype(weight), tensor_dtype(call)} != {"float32"}):
        return call
    groups = _weight_groups(x_shape, w_shape)
    if groups is None:
        return call
    k, n = w_shape[-2:]
    rows = int(np.prod(x_shape[:-1])) // groups
    fi = vector.vector_width_dividing(n)
    matrix = constant_array(weight).reshape(groups, k, n // fi, fi).transpose(0, 2, 1, 3)

    x_t = te.placeholder((groups, rows, k), "float32", "data")
    w_t = te.placeholder((groups, n // fi, k, fi), "float32", "weight")
    rk = te.reduce_axis((0, k), "rk")
    out = te.compute((groups, rows, n), lambda g, r, j: te.sum(x_t[g, r, rk] * w_t[g, j // fi, rk, j % fi], axis=rk),
                     name=MATMUL_BLOCK)
    product = call_te_kernel(builder, MATMUL_BLOCK, [x_t, w_t, out],
                             [relax.op.reshape(data, [groups, rows, k]), relax.const(np.ascontiguousarray(matrix))])
    return relax.op.reshape(product, list(out_shape))


def _weight_groups(x_shape, w_shape) -> int | None:
    """How many separate weight matrices the rows of x split into, or None when the broadcast
    is not "W's non-1 batch dims lead, x's batch dims are complete"."""
    x_batch, w_batch = list(x_shape[:-2]), list(w_shape[:-2])
    if len(w_batch) > len(x_batch):
        return None
    w_batch = [1] * (len(x_batch) - len(w_batch)) + w_batch
    leading = 0
    while leading < len(w_batch) and w_batch[leading] != 1:
        leading += 1
    if any(d != 1 for d in w_batch[leading:]) or w_batch[:leading] != x_batch[:leading]:
        return None
    return int(np.prod(w_batch[:leading], dtype=np.int64))
