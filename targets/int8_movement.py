"""Data movement between quantized tensors in 8 bits: Concat, Split, MaxPool and nearest Resize.

A QDQ model keeps these ops in float between a DequantizeLinear and a QuantizeLinear (YOLOv8n:
13 Concat, 8 Split, 3 MaxPool, 2 Resize, each with its own dequantize and quantize kernels):

    Q(concat(DQ(a_1), .., DQ(a_n)), s, z)        Q(split(DQ(x))[i], s, z)
    Q(max_pool2d(DQ(x)), s, z)                   Q(resize2d(DQ(x), nearest), s, z)

When every DQ and the Q share one per-tensor scale and zero point, these only pick, copy or
compare quantized values (max is monotonic in the quantized value; a max pool's padding is the
dtype's lowest value, which never wins), so they are exactly the same op on the 8-bit tensors:

    concat(a_1, .., a_n)      split(x)[i]      max_pool2d(x)      resize2d(x, nearest)

and targets/int8_blocked.py can carry the NCHW16c layout of the int8 convs through them. Other
cases (different scales, a linear resize, an average pool) keep their float form.
"""

from __future__ import annotations

import numpy as np

from slimcc.targets.relax_rewrite import rewrite_calls
from slimcc.targets.relax_values import constant_array, tensor_dtype
from slimcc.targets.tvm_import import ensure_tvm

MAX_CONCAT_INPUTS = 8
NEAREST = "nearest_neighbor"


def move_int8_data(mod):
    """`mod` with every Concat/Split/MaxPool/nearest Resize between one-scale Q/DQ run in 8 bits."""
    ensure_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, is_tuple, is_tuple_get_item, wildcard

    def dq():
        return is_op("relax.dequantize")(wildcard(), is_const(), is_const())

    concats = []
    for n in range(2, MAX_CONCAT_INPUTS + 1):
        inputs = [dq() for _ in range(n)]
        concats.append((is_op("relax.concat")(is_tuple(inputs)), inputs))
    split_in, pool_in, resize_in = dq(), dq(), dq()
    split = is_op("relax.split")(split_in)
    part = is_tuple_get_item(split)
    pool = is_op("relax.nn.max_pool2d")(pool_in)
    resize = is_op("relax.image.resize2d")(resize_in, wildcard())
    moved = part | pool | resize
    for concat, _ in concats:
        moved = moved | concat
    quantize = is_op("relax.quantize")(moved, is_const(), is_const())

    def make_replace(_builder):
        def replace(call, matches):
            if part in matches:
                sp, index = matches[split], matches[part].index
                if not _same_quantization(matches[split_in], call):
                    return call
                return relax.TupleGetItem(relax.op.split(matches[split_in].args[0], sp.attrs.indices_or_sections,
                                                         int(sp.attrs.axis)), index)
            for concat, inputs in concats:
                if concat in matches:
                    dequantized = [matches[i] for i in inputs]
                    if not all(_same_quantization(d, call) for d in dequantized):
                        return call
                    return relax.op.concat([d.args[0] for d in dequantized], axis=int(matches[concat].attrs.axis))
            op, source = (matches[pool], matches[pool_in]) if pool in matches else (matches[resize], matches[resize_in])
            if not _same_quantization(source, call):
                return call
            if op.op.name == "relax.image.resize2d" and (str(op.attrs.method) != NEAREST
                                                         or op.attrs.out_dtype is not None):
                return call
            return relax.Call(op.op, [source.args[0], *op.args[1:]], op.attrs)

        return replace

    return rewrite_calls(mod, quantize, make_replace, "SlimccMoveInt8Data")


def _same_quantization(dequantize, quantize) -> bool:
    """Whether a per-tensor DQ and Q use one scale, one zero point and one 8-bit type."""
    ensure_tvm()
    from tvm import relax

    if not (isinstance(dequantize, relax.Call) and dequantize.op.name == "relax.dequantize"):
        return False
    params = [constant_array(a) for a in (*dequantize.args[1:3], *quantize.args[1:3])]
    if any(p.size != 1 for p in params):
        return False
    ds, dz, qs, qz = (np.asarray(p).reshape(()) for p in params)
    return (tensor_dtype(dequantize.args[0]) == str(quantize.attrs.out_dtype) and np.float32(ds) == np.float32(qs)
            and int(dz) == int(qz))
