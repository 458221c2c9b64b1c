"""Network-wide blocked activations on CPUs: float convs in NCHW[fi]c, the layout carried between them.

NeoCPU (Liu et al., USENIX ATC 2019) keeps activations in NCHW[x]c from one conv to the next:
a conv then reads and writes whole channel vectors, and nothing transposes between layers.
TVM's Relax `ConvertLayout` does the propagation: given the layout each conv2d should take, it
rewrites the element-wise ops, pooling, concat and reductions between them to follow, and
inserts a `layout_transform` only where an op cannot (the model's inputs and outputs, a
reshape, a conv left in NCHW). This module decides which convs take the blocked layout.

A conv is blocked when it is float32 with a constant weight and its channels divide into
vectors of the target's width: a regular conv with both channel counts multiples of fi, or a
depthwise conv with a multiple of fi channels. The rest (a 3-channel stem, grouped convs,
transposed convs, integer convs) stay NCHW; their neighbours convert at the boundary.
"""

from __future__ import annotations

import numpy as np

from slimcc.targets.relax_rewrite import rewrite_calls
from slimcc.targets.relax_values import UNSET_DTYPES, constant_array, static_shape, tensor_dtype
from slimcc.targets.schedules.isa import CpuVector
from slimcc.targets.tvm_import import ensure_tvm

CONV2D = "relax.nn.conv2d"
BINARY_OPS = ("add", "subtract", "multiply", "divide", "maximum", "minimum", "power")


def blocked_layout(fi: int) -> tuple[str, str]:
    """(activation layout, weight layout) of a conv on fi-channel blocks: NCHW{fi}c, OIHW{fi}o."""
    return f"NCHW{fi}c", f"OIHW{fi}o"


def use_blocked_layout(mod, vector: CpuVector):
    """`mod` with every eligible conv2d (see module doc) in NCHW{lanes}c and the layout propagated."""
    ensure_tvm()
    from tvm import relax

    fi = vector.lanes

    def choose(call):
        if call.op.name != CONV2D:
            return {}
        return {CONV2D: list(conv_layouts(call, fi))}

    return relax.transform.ConvertLayout({}, choose)(layout_friendly(mod))


def layout_friendly(mod):
    """The same computation in the forms ConvertLayout carries a blocked layout through correctly.

    - Single-element constant operands of element-wise binary ops become rank-0 scalars, and
      clip becomes maximum/minimum with scalar bounds: ONNX Clip imports as clip or as
      maximum/minimum kernels with [1]-shaped bounds, which ConvertLayout sends back to NCHW
      (and it fails on a [1, 1, 1, 1] operand). Broadcasting one element gives the same values
      and, when the other operand's rank is at least the constant's, the same shape.
    - A channel split at equally spaced indices becomes a split into equal sections, and one at
      other indices one strided_slice per part, which ConvertLayout keeps NCHW: TVM 0.27 keeps
      split indices as they are in NCHW{fi}c, counting blocks as channels (C2f's split came out
      with 0 channels).
    """
    ensure_tvm()
    from tvm.relax.dpl import is_const, is_op, wildcard

    binary = [f"relax.{name}" for name in BINARY_OPS]
    pattern = (is_op("relax.clip")(wildcard(), wildcard(), wildcard()) | is_op("relax.call_tir")(wildcard(), wildcard())
               | is_op("relax.split")(wildcard()))
    for name in binary:
        pattern = pattern | is_op(name)(wildcard(), is_const()) | is_op(name)(is_const(), wildcard())

    rewrites = {"relax.call_tir": _clip_kernel_as_op, "relax.split": _channel_split, "relax.clip": _clip_as_min_max}

    def make_replace(_builder):
        return lambda call, _matches: rewrites.get(call.op.name, _scalar_operand)(call)

    return rewrite_calls(mod, pattern, make_replace, "SlimccLayoutFriendly")


def conv_layouts(call, fi: int) -> tuple[str, ...]:
    """The (data, weight, output) layouts the NCHW/OIHW conv2d `call` takes.

    NCHW{fi}c out when it is float32 with a constant weight and static shapes, and its output
    channels (per group, for a grouped conv) are a multiple of fi; its input then NCHW{fi}c too
    when the input channels are (a 3-channel stem reads NCHW and writes blocked). Else NCHW.
    """
    tvm = ensure_tvm()

    plain = ("NCHW", "OIHW", "NCHW")
    data, weight = call.args
    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout) != ("NCHW", "OIHW") or not isinstance(weight, tvm.ir.expr.Constant):
        return plain
    in_shape, weight_shape = static_shape(data), static_shape(weight)
    if in_shape is None or weight_shape is None or len(in_shape) != 4:
        return plain
    if {tensor_dtype(data), tensor_dtype(weight)} != {"float32"} or str(attrs.out_dtype) not in (*UNSET_DTYPES,
                                                                                                  "float32"):
        return plain
    out_channels, groups = weight_shape[0], int(attrs.groups)
    if (out_channels // groups) % fi and not (groups == in_shape[1] == out_channels):
        return plain
    if out_channels % fi:
        return plain
    activations, kernel = blocked_layout(fi)
    return (activations if in_shape[1] % fi == 0 else "NCHW", kernel, activations)


def _clip_as_min_max(call):
    """A float clip as maximum/minimum with rank-0 bounds."""
    ensure_tvm()
    from tvm import relax

    x, low, high = call.args
    if tensor_dtype(x) != "float32":
        return call
    bound = [relax.const(np.float32(float(v.value)), "float32") for v in (low, high)]
    return relax.op.minimum(relax.op.maximum(x, bound[0]), bound[1])


def _scalar_operand(call):
    """An element-wise binary op with its one-element constant operand as a rank-0 scalar."""
    ensure_tvm()
    from tvm import relax

    a, b = call.args
    ranks = [len(static_shape(e)) if static_shape(e) is not None else None for e in (a, b)]
    # an operand already of rank 0 stays (rewrite_call repeats until nothing changes)
    new_b = _scalar(b, ranks[0]) if ranks[1] != 0 else None
    if new_b is not None:
        return relax.Call(call.op, [a, new_b], call.attrs)
    new_a = _scalar(a, ranks[1]) if ranks[0] != 0 else None
    if new_a is not None:
        return relax.Call(call.op, [new_a, b], call.attrs)
    return call


def _scalar(expr, other_rank: int | None):
    """`expr` as a rank-0 constant when it is a one-element constant of rank <= `other_rank`, else None."""
    tvm = ensure_tvm()
    from tvm import relax

    if not isinstance(expr, tvm.ir.expr.Constant) or other_rank is None:
        return None
    value = constant_array(expr)
    if value.size != 1 or value.ndim > other_rank:
        return None
    return relax.const(np.asarray(value).reshape(()), str(value.dtype))


def _clip_kernel_as_op(call):
    """TVM's ONNX frontend emits Clip as call_tir of TOPI `maximum`/`minimum` kernels with a
    one-element bound; those become the Relax ops (with a scalar bound). Other calls stay."""
    ensure_tvm()
    from tvm import relax

    kernel, args = call.args[0], call.args[1]
    op = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}.get(kernel.name_hint.rstrip("0123456789"))
    fields = getattr(args, "fields", None)
    if op is None or fields is None or len(fields) != 2 or static_shape(fields[0]) is None:
        return call
    bound = _scalar(fields[1], len(static_shape(fields[0])))
    return call if bound is None else op(fields[0], bound)


def _channel_split(call):
    """A 4-D split along channels at equally spaced indices as a split into equal sections; at
    other indices, one strided_slice per part (see layout_friendly)."""
    ensure_tvm()
    from tvm import relax

    data = call.args[0]
    shape = static_shape(data)
    sections = call.attrs.indices_or_sections
    if shape is None or len(shape) != 4 or int(call.attrs.axis) % 4 != 1 or not hasattr(sections, "__len__"):
        return call
    bounds = [0, *(int(i) for i in sections), shape[1]]
    sizes = {b - a for a, b in zip(bounds, bounds[1:])}
    if len(sizes) == 1 and sizes != {0}:
        return relax.op.split(data, len(bounds) - 1, axis=1)
    return relax.Tuple([relax.op.strided_slice(data, axes=[1], begin=[a], end=[b]) for a, b in zip(bounds, bounds[1:])])
