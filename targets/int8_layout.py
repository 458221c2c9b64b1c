"""Per-tensor Q/DQ on the 8-bit side of a layout change: a layout transform between a float and an
integer layer moves bytes, not float32 values.

With blocked float activations (schedules/blocked_layout.py), the boundary between a float conv
and the integer layers after it reads

    y = layout_transform(conv_out, NCHW16c -> NCHW)      float32, its own kernel
    q = quantize(y, s, z)                                 float32 -> u8, another kernel

Quantizing with one scale and zero point treats every element alike, so it commutes with any
permutation of the elements:

    q = layout_transform(quantize(conv_out, s, z), NCHW16c -> NCHW)

and the quantize then fuses into the float conv's epilogue (an element-wise consumer), while the
transform copies a quarter of the bytes (zoo ResNet int8: 15 -> 14 kernels, 0.95x the latency).
The mirror image, dequantize(layout_transform(q)) -> layout_transform(dequantize(q)), is done only
for the NCHW16c -> NCHW transforms after int8 layers (targets/int8_blocked.py), where the dequantize
then joins the int8 epilogue; after float layers FuseOps already fuses it into the transform, and
swapped they were two kernels (YOLOv8n 1.03x). Transforms that pad (a channel count that is not a multiple of the
block) are left alone: the padding value would change meaning.
"""

from __future__ import annotations

import numpy as np

from slimcc.targets.relax_rewrite import rewrite_calls
from slimcc.targets.relax_values import constant_array, static_shape
from slimcc.targets.tvm_import import ensure_tvm


def quantize_on_byte_side(mod):
    """`mod` with every per-tensor quantize of a non-padding layout_transform moved before the
    transform, so that the transform moves the 8-bit tensor (see the module doc)."""
    return move_before_layout_transforms(mod, "relax.quantize", _permutes, "SlimccQuantizeBeforeLayoutTransform")


def move_before_layout_transforms(mod, op_name: str, accepts, name: str):
    """`op(layout_transform(x))` -> `layout_transform(op(x))` for every per-tensor quantize or
    dequantize `op_name` whose transform `accepts(transform)`."""
    ensure_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, wildcard

    transform = is_op("relax.layout_transform")(wildcard())
    pattern = is_op(op_name)(transform, is_const(), is_const())

    def make_replace(builder):
        def replace(call, matches):
            inner = matches[transform]
            if not (_per_tensor(call) and accepts(inner)):
                return call
            moved = builder.normalize(_requalify(call, inner.args[0]))
            return relax.op.layout_transform(moved, inner.attrs.index_map)

        return replace

    return rewrite_calls(mod, pattern, make_replace, name)


def _requalify(call, data):
    """The per-tensor quantize/dequantize `call` applied to `data` (of another rank) instead."""
    ensure_tvm()
    from tvm import relax

    op = relax.op.quantize if call.op.name == "relax.quantize" else relax.op.dequantize
    rank = len(static_shape(data) or (0,))
    return op(data, call.args[1], call.args[2], axis=min(int(call.attrs.axis) % rank, rank - 1),
              out_dtype=str(call.attrs.out_dtype))


def _per_tensor(call) -> bool:
    """Whether a quantize/dequantize has one scale and one zero point for the whole tensor."""
    return all(constant_array(a).size == 1 for a in call.args[1:3])


def _permutes(transform) -> bool:
    """Whether a layout_transform only permutes elements (no padding) between static shapes."""
    before, after = static_shape(transform.args[0]), static_shape(transform)
    return (before is not None and after is not None and transform.attrs.pad_value is None
            and int(np.prod(before)) == int(np.prod(after)))
