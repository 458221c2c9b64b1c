"""TE computations as Relax calls: the one way slimcc's Relax rewrites add their own TIR kernels."""

from __future__ import annotations

from slimcc.targets.tvm_import import ensure_tvm


def call_te_kernel(builder, name: str, tensors, args, attrs: dict | None = None):
    """call_tir of the TE computation `tensors` (inputs..., output) on the Relax expressions `args`.

    The kernel is added to the builder's module once (identical kernels are shared); int64
    indices match legalized Relax ops so FuseTIR can merge their buffers. `attrs` are set on the
    PrimFunc (what later passes read: op patterns, int8 kernel parameters).
    """
    ensure_tvm()
    from tvm import te

    func = te.create_prim_func(tensors, index_dtype_override="int64").without_attr("global_symbol")
    if attrs:
        func = func.with_attrs(attrs)
    out = tensors[-1]
    return call_prim_func(builder, name, func, args, [int(d) for d in out.shape], out.dtype)


def call_prim_func(builder, name: str, func, args, shape, dtype: str):
    """call_tir of the PrimFunc `func` (added to the builder's module once) on the Relax expressions
    `args`, its output a tensor of `shape` and `dtype`."""
    ensure_tvm()
    from tvm import relax

    return relax.call_tir(builder.add_func(func, name), args, relax.TensorType(list(shape), dtype))
