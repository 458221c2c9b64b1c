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
  channel of an element read from the blocked index), followed by one `from_blocked`; repeated
  until nothing moves, so a whole epilogue chain ends up blocked;
- `cancel_layout_pairs`: `to_blocked(from_blocked(t))` is `t`.

What remains are transforms at the edges of the integer region (a float layer, pooling, a
depthwise conv), each one kernel moving bytes.
"""

from __future__ import annotations

from slimcc.targets.relax_values import constant_array, static_shape, tensor_dtype
from slimcc.targets.tvm_import import ensure_tvm

BLOCK = 16  # channels per block: one VNNI accumulator's lanes
_PROBE = (0, 37, 2, 3)  # an NCHW index whose channel is neither block-aligned nor below one block


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
    """Move `from_blocked` below the int8 epilogue kernels that consume it (see the module doc)."""
    tvm = ensure_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    from slimcc.targets.int8 import kernel_scalars, rebuild_kernel
    from slimcc.targets.int8_tables import LOOKUP_ATTR, lookup_call

    pattern = is_op("relax.call_tir")(wildcard(), wildcard())

    @tvm.transform.module_pass(opt_level=0, name="SlimccSinkBlockedLayout")
    def sink(mod, _ctx):
        for _ in range(max_sweeps):
            builder = relax.BlockBuilder(mod)
            moved = []

            for gvar, func in list(mod.functions.items()):
                if not isinstance(func, relax.Function):
                    continue
                bindings = relax.analysis.get_var2val(func)

                def producer(expr):
                    return bindings.get(expr, expr) if isinstance(expr, relax.Var) else expr

                def replace(call, _matches):
                    callee = builder.get()[call.args[0]] if isinstance(call.args[0], relax.GlobalVar) else None
                    if not isinstance(callee, tvm.tirx.PrimFunc) or not static_shape(call):
                        return call
                    args = list(call.args[1].fields)
                    scalars = kernel_scalars(callee)
                    lookup = callee.attrs is not None and bool(callee.attrs.get(LOOKUP_ATTR, False))
                    data = 2 if scalars is not None and scalars["kind"] == "qadd" else 1
                    if (scalars is None and not lookup) or (scalars is not None and scalars["kind"] == "requantize"
                                                            and int(scalars["channel_axis"]) != 1):
                        return call
                    sources = [producer(a) for a in args[:data]]
                    if not any(is_from_blocked(s) for s in sources) or not can_block(static_shape(call)):
                        return call
                    if not all(is_from_blocked(s) or can_block(static_shape(a)) for s, a in zip(sources, args)):
                        return call
                    blocked = [s.args[0] if is_from_blocked(s) else to_blocked(a)
                               for s, a in zip(sources, args[:data])]
                    shape = blocked_shape(static_shape(call))
                    if lookup:
                        out = lookup_call(builder, blocked[0], constant_array(args[1]),
                                          tensor_dtype(call))
                    else:
                        out = rebuild_kernel(builder, scalars, blocked + args[data:], shape, blocked_channel)
                    moved.append(call)
                    return from_blocked(out)

                builder.update_func(gvar, rewrite_call(pattern, replace, func))
            mod = relax.transform.DeadCodeElimination()(builder.get())
            if not moved:
                break
        return mod

    return sink(mod)


def dequantize_blocked(mod):
    """`dequantize(from_blocked(t))` -> `from_blocked(dequantize(t))` for a per-tensor dequantize: it
    then fuses into the int8 epilogue producing `t`, and the transform moves float32 values on its
    own (zoo ResNet int8: the last residual block's fused transform + dequantize took 140 us)."""
    ensure_tvm()
    from tvm.relax.dpl import is_const, is_op, wildcard

    from slimcc.targets.int8_layout import per_tensor, requalify
    from slimcc.targets.relax_rewrite import rewrite_calls

    transform = is_op("relax.layout_transform")(wildcard())
    dequantize = is_op("relax.dequantize")(transform, is_const(), is_const())

    def make_replace(_builder):
        def replace(call, matches):
            back = matches[transform]
            if not (is_from_blocked(back) and per_tensor(call)):
                return call
            return from_blocked(requalify(call, back.args[0]))

        return replace

    return rewrite_calls(mod, dequantize, make_replace, "SlimccDequantizeBlocked")


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
