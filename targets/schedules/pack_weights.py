"""Before legalization: float conv2d with a constant weight -> slimcc's conv with a packed weight.

TVM legalizes `R.nn.conv2d` into loops over the OIHW weight, which a vectorized kernel can only
read with gathers. This rewrite replaces each float32 NCHW/OIHW conv2d whose weight is a
constant by a `call_tir` of slimcc's own conv computation (TE), with the weight re-laid out by
numpy at compile time so the schedule's vectors load it contiguously:

    regular / grouped conv:  W[F, Cg, KH, KW] -> Wp[F / fi, Cg, KH, KW, fi]   (`slimcc_conv` / `slimcc_gconv`)
        out[n, f, y, x] = sum_{c, ry, rx} pad[n, g(f) * Cg + c, y*sh + ry*dh, x*sw + rx*dw]
                                          * Wp[f // fi, c, ry, rx, f % fi]
    depthwise (Cg == 1):     W[F, 1, KH, KW] -> W[F, KH, KW]                  (block `slimcc_dwconv`)
                             vectors along the output row, at stride 1 on wide rows
                        or   W[F, 1, KH, KW] -> Wp[F / fi, KH, KW, fi]         (block `slimcc_chdw`)
                             channel vectors, on a [N, C / fi, H + pads, W + pads, fi] copy of the input

fi is the widest vector width (lanes, lanes/2, lanes/4) dividing the channels of one group.
A conv that blocked_layout put in NCHW{fi}c (activations [N, C / fi, H, W, fi], weight already
[F / fi, Cg, KH, KW, fi]) writes whole channel vectors and reads a blocked input (or, for a
stem whose input channels are not a multiple of fi, an NCHW one): the same conv and depthwise
computations with blocked indexing, and a contiguous padded copy.
A constant-weight conv2d_transpose becomes the direct conv of its zero-inserted input
(`as_direct_conv`). Pure arithmetic reordering of the same products: outputs match the
legalized conv2d to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from slimcc.targets.relax_rewrite import rewrite_calls
from slimcc.targets.relax_values import UNSET_DTYPES, constant_array, static_shape, tensor_dtype
from slimcc.targets.schedules.blocked_layout import blocked_layout
from slimcc.targets.schedules.isa import CpuVector
from slimcc.targets.schedules.pack_matmul import packed_matmul_call
from slimcc.targets.schedules.winograd import winograd_conv, winograd_tile, winograd_weight
from slimcc.targets.te_kernels import call_te_kernel
from slimcc.targets.tvm_import import ensure_tvm

CONV_BLOCK = "slimcc_conv"
GROUPED_CONV_BLOCK = "slimcc_gconv"
DWCONV_BLOCK = "slimcc_dwconv"
CHANNEL_DWCONV_BLOCK = "slimcc_chdw"
PAD_BLOCK = "slimcc_pad"
CHANNEL_PAD_BLOCK = "slimcc_chpad"
WINOGRAD_KERNEL = "slimcc_wino"


def pack_conv_weights(mod, vector: CpuVector):
    """Rewrite every eligible conv2d of `mod` (see module doc); other calls are left as they are."""
    ensure_tvm()
    from tvm.relax.dpl import is_const, is_op, wildcard

    pattern = (is_op("relax.nn.conv2d")(wildcard(), is_const()) | is_op("relax.nn.conv2d_transpose")(wildcard(), is_const())
               | is_op("relax.matmul")(wildcard(), is_const()))

    def make_replace(builder):
        def replace(call, _matches):
            if call.op.name == "relax.matmul":
                return packed_matmul_call(call, builder, vector)
            conv = _ConvCall.read(call)
            return conv.packed_call(builder, vector) if conv is not None else call

        return replace

    return rewrite_calls(mod, pattern, make_replace, "SlimccPackConvWeights")


@dataclass(frozen=True)
class ConvGeometry:
    """A conv2d call's data (Relax expression), constant OIHW weight, shapes and attributes."""

    data: object
    weight: np.ndarray
    in_shape: tuple
    out_shape: tuple
    strides: tuple = (1, 1)
    dilation: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    block: int = 0  # fi when the output is NCHW{fi}c (blocked_layout), 0 for NCHW
    in_block: int = 0  # the same for the input

    def channel_vectors(self, vector: CpuVector) -> int:
        """Channel-vector width for a depthwise conv, or 1 to keep vectors along the output row.

        Rows vectorize well only at stride 1 on rows at least two vectors wide; strided or narrow
        depthwise convs (MobileNet's downsampling and 14x14/7x7 stages) run on channel vectors,
        reading a channel-blocked copy of the padded input.
        """
        out_channels, group_channels = self.weight.shape[:2]
        if group_channels != 1 or out_channels != self.in_shape[1]:
            return 1
        fi = vector.vector_width_dividing(out_channels)
        rows_vectorize = self.strides == (1, 1) and self.out_shape[3] >= 2 * vector.lanes
        return 1 if rows_vectorize or fi < vector.lanes // 2 else fi


@dataclass(frozen=True)
class _ConvCall(ConvGeometry):
    """The facts of one float conv2d call this rewrite can replace exactly."""

    zero_insert: tuple = (1, 1)  # transposed conv: input strides become zeros between input pixels

    def as_direct_conv(self, output_padding) -> _ConvCall | None:
        """A transposed conv as the stride-1 conv of its zero-inserted, padded input with the flipped weight.

        W[C, F, KH, KW] (IOHW) becomes W'[F, C, KH, KW] flipped in space; the input gets
        stride - 1 zeros between pixels and d*(K-1) - pad (+ output_padding) around. None when
        a padding exceeds d*(K-1) (it would crop) or the conv is grouped.
        """
        if self.groups != 1:
            return None
        kh, kw = self.weight.shape[2:]
        (dh, dw), (top, left, bottom, right) = self.dilation, self.pads
        extra_h, extra_w = output_padding
        pads = (dh * (kh - 1) - top, dw * (kw - 1) - left, dh * (kh - 1) - bottom + extra_h,
                dw * (kw - 1) - right + extra_w)
        if min(pads) < 0:
            return None
        return replace(self, zero_insert=self.strides, strides=(1, 1), pads=pads,
                       weight=np.ascontiguousarray(self.weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]))

    @classmethod
    def read(cls, call) -> _ConvCall | None:
        """The conv facts, or None when the call is not a float32 NCHW/OIHW (or blocked NCHW{fi}c/OIHW{fi}o)
        conv with static shapes. Shapes and the weight are kept in their NCHW/OIHW meaning."""
        attrs = call.attrs
        transposed = call.op.name == "relax.nn.conv2d_transpose"
        kernel_layout = "IOHW" if transposed else "OIHW"
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)
        in_block, block = (0, 0) if transposed else _blocks_of(layouts)
        if layouts != ("NCHW", kernel_layout, "NCHW") and not block:
            return None
        data, weight = call.args
        in_shape, out_shape = static_shape(data), static_shape(call)
        out_dtype = str(attrs.out_dtype)
        dtypes = {tensor_dtype(data), tensor_dtype(weight), "float32" if out_dtype in UNSET_DTYPES else out_dtype}
        if in_shape is None or out_shape is None or dtypes != {"float32"} or len(in_shape) != (5 if in_block else 4):
            return None
        weight_value = constant_array(weight)
        if block:
            in_shape, out_shape = _unblocked(in_shape) if in_block else in_shape, _unblocked(out_shape)
            blocks, group_channels, kh, kw, fi = weight_value.shape
            weight_value = weight_value.transpose(0, 4, 1, 2, 3).reshape(blocks * fi, group_channels, kh, kw)
        conv = cls(data, weight_value, in_shape, out_shape, strides=_ints(attrs.strides),
                   dilation=_ints(attrs.dilation), pads=_ints(attrs.padding), groups=int(attrs.groups), block=block,
                   in_block=in_block)
        return conv.as_direct_conv(_ints(attrs.output_padding)) if transposed else conv

    def packed_call(self, builder, vector: CpuVector):
        """The call_tir of slimcc's conv on the packed constant weight."""
        ensure_tvm()
        from tvm import relax, te

        out_channels, group_channels, kh, kw = self.weight.shape
        x = te.placeholder(blocked_shape(self.in_shape, self.in_block) if self.in_block else self.in_shape,
                           "float32", "data")
        depthwise = group_channels == 1 and self.groups == out_channels == self.in_shape[1]
        channel_fi = (self.block if depthwise else 0) if self.block else self.channel_vectors(vector)
        if channel_fi > 1:
            w_t = te.placeholder((out_channels // channel_fi, kh, kw, channel_fi), "float32", "weight")
            out = channel_depthwise(self, x, w_t, channel_fi, 0.0)
            packed = pack_depthwise_weight(self.weight, channel_fi)
            name = CHANNEL_DWCONV_BLOCK
        elif group_channels == 1 and not self.block:
            w_t = te.placeholder((out_channels, kh, kw), "float32", "weight")
            out = row_depthwise(self, self._pad(x), w_t)
            packed = self.weight.reshape(out_channels, kh, kw)
            name = DWCONV_BLOCK
        elif m := winograd_tile(self):
            fi = self.block
            w_t = te.placeholder((m + 2, m + 2, out_channels // fi, group_channels, fi), "float32", "weight")
            out = winograd_conv(self, self._pad(x), w_t, fi, m)
            packed = winograd_weight(self.weight, fi, m)
            name = WINOGRAD_KERNEL
        else:
            fi = self.block or vector.vector_width_dividing(out_channels // self.groups)
            w_t = te.placeholder((out_channels // fi, group_channels, kh, kw, fi), "float32", "weight")
            conv, data = self._input_plane(x)
            out = packed_conv(conv, data, w_t, fi)
            packed = pack_conv_weight(self.weight, fi)
            name = CONV_BLOCK if self.groups == 1 else GROUPED_CONV_BLOCK
        return call_te_kernel(builder, name, [x, w_t, out], [self.data, relax.const(np.ascontiguousarray(packed))])

    def _pad(self, x):
        ensure_tvm()
        from tvm import te, tirx

        top, left, bottom, right = self.pads
        zh, zw = self.zero_insert
        if not any(self.pads) and (zh, zw) == (1, 1):
            return x
        n, c, h, w = self.in_shape
        height, width = (h - 1) * zh + 1, (w - 1) * zw + 1

        def value(b, ch, i, j, *lane):
            i, j = i - top, j - left
            inside = tirx.all(i >= 0, i < height, j >= 0, j < width, i % zh == 0, j % zw == 0)
            return tirx.if_then_else(inside, x[(b, ch, i // zh, j // zw, *lane)], tirx.const(0.0, "float32"))

        shape = (n, c, height + top + bottom, width + left + right)
        return te.compute(blocked_shape(shape, self.in_block) if self.in_block else shape, value, name=PAD_BLOCK)

    def _input_plane(self, x):
        """(conv, the tensor it reads): the padded input, or for an unpadded strided 1x1 conv the
        stride-1 conv on a copy of the pixels it reads (every sh-th row, sw-th column), so that
        it runs as a plain matrix product over the plane (`conv.schedule_pointwise`)."""
        ensure_tvm()
        from tvm import te

        kh, kw = self.weight.shape[2:]
        if ((kh, kw) != (1, 1) or self.strides == (1, 1) or any(self.pads) or self.zero_insert != (1, 1)
                or self.block):
            return self, self._pad(x)
        (n, c), (out_h, out_w), (sh, sw) = self.in_shape[:2], self.out_shape[2:], self.strides
        subsampled = te.compute((n, c, out_h, out_w), lambda b, ch, i, j: x[b, ch, i * sh, j * sw], name=PAD_BLOCK)
        return replace(self, strides=(1, 1)), subsampled



def _cast(value, dtype: str | None):
    """`value` cast to `dtype` (operands of integer products), or as it is."""
    return value.astype(dtype) if dtype else value


def row_depthwise(conv, padded, w_t, product_dtype: str | None = None):
    """The TE depthwise conv of `conv`'s geometry (channel multiplier allowed) on the [F, KH, KW]
    weight, for vectors along the output row; `product_dtype` casts the operands (int32 for int8)."""
    ensure_tvm()
    from tvm import te

    out_channels, _, kh, kw = conv.weight.shape
    multiplier = out_channels // conv.in_shape[1]
    (sh, sw), (dh, dw) = conv.strides, conv.dilation
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    return te.compute(conv.out_shape, lambda n, f, y, x: te.sum(
        _cast(padded[n, f // multiplier, y * sh + ry * dh, x * sw + rx * dw], product_dtype)
        * _cast(w_t[f, ry, rx], product_dtype), axis=[ry, rx]), name=DWCONV_BLOCK)


def channel_depthwise(conv, x, w_t, fi: int, pad_value, product_dtype: str | None = None,
                      copy_dtype: str | None = None):
    """The TE depthwise conv of `conv`'s geometry on channel vectors: a [N, C/fi, H+pads, W+pads, fi]
    copy of the input padded with `pad_value` (in `copy_dtype`, default the input's), taps read as fi-vectors.

    With `conv.block` the input and output are NCHW{fi}c (the copy only pads), else NCHW.
    `product_dtype` casts both operands before multiplying (int32 for int8_pack's u8 inputs).
    """
    ensure_tvm()
    from tvm import te, tirx

    n, channels, h, w = conv.in_shape
    top, left, bottom, right = conv.pads
    _, _, kh, kw = conv.weight.shape
    (sh, sw), (dh, dw) = conv.strides, conv.dilation

    def value(b, cb, i, j, ci):
        inside = tirx.all(i >= top, i < h + top, j >= left, j < w + left)
        pixel = x[b, cb, i - top, j - left, ci] if conv.block else x[b, cb * fi + ci, i - top, j - left]
        value = tirx.if_then_else(inside, pixel, tirx.const(pad_value, x.dtype))
        return value.astype(copy_dtype) if copy_dtype and copy_dtype != x.dtype else value

    blocked = te.compute((n, channels // fi, h + top + bottom, w + left + right, fi), value, name=CHANNEL_PAD_BLOCK)
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def tap(b, cb, y, x_, ci):
        return te.sum(_cast(blocked[b, cb, y * sh + ry * dh, x_ * sw + rx * dw, ci], product_dtype)
                      * _cast(w_t[cb, ry, rx, ci], product_dtype), axis=[ry, rx])

    if conv.block:
        return te.compute(blocked_shape(conv.out_shape, fi), tap, name=CHANNEL_DWCONV_BLOCK)
    return te.compute(conv.out_shape, lambda b, f, y, x_: tap(b, f // fi, y, x_, f % fi), name=CHANNEL_DWCONV_BLOCK)


def packed_conv(conv, padded, w_t, fi: int, product_dtype: str | None = None):
    """The TE conv (regular or grouped) of `conv`'s geometry on the packed [F/fi, Cg, KH, KW, fi] weight.

    `conv` has weight, groups, strides, dilation, out_shape, and block / in_block (NCHW{fi}c
    output / input when set); `product_dtype` casts both operands before multiplying (int32 for the integer
    convs of int8_pack).
    """
    ensure_tvm()
    from tvm import te

    out_channels, group_channels, kh, kw = conv.weight.shape
    per_group = out_channels // conv.groups
    (sh, sw), (dh, dw) = conv.strides, conv.dilation
    rc = te.reduce_axis((0, group_channels), "rc")
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def channel(f):
        return rc if conv.groups == 1 else f // per_group * group_channels + rc

    def pixel(n, f, y, x):
        c, i, j = channel(f), y * sh + ry * dh, x * sw + rx * dw
        return padded[n, c // conv.in_block, i, j, c % conv.in_block] if conv.in_block else padded[n, c, i, j]

    def product(n, f, y, x):
        return te.sum(_cast(pixel(n, f, y, x), product_dtype) * _cast(w_t[f // fi, rc, ry, rx, f % fi], product_dtype),
                      axis=[rc, ry, rx])

    name = CONV_BLOCK if conv.groups == 1 else GROUPED_CONV_BLOCK
    if conv.block:
        return te.compute(blocked_shape(conv.out_shape, fi), lambda n, fo, y, x, f: product(n, fo * fi + f, y, x),
                          name=name)
    return te.compute(conv.out_shape, product, name=name)


def pack_conv_weight(weight: np.ndarray, fi: int) -> np.ndarray:
    """OIHW [F, Cg, KH, KW] -> [F/fi, Cg, KH, KW, fi]: fi consecutive output channels contiguous."""
    out_channels, group_channels, kh, kw = weight.shape
    return weight.reshape(out_channels // fi, fi, group_channels, kh, kw).transpose(0, 2, 3, 4, 1)


def pack_depthwise_weight(weight: np.ndarray, fi: int) -> np.ndarray:
    """Depthwise [C, 1, KH, KW] -> [C/fi, KH, KW, fi]: the taps of fi consecutive channels contiguous."""
    channels, _, kh, kw = weight.shape
    return weight.reshape(channels // fi, fi, kh, kw).transpose(0, 2, 3, 1)


def blocked_shape(shape: tuple, fi: int) -> tuple:
    """NCHW shape -> its NCHW{fi}c shape [N, C/fi, H, W, fi]."""
    n, c, h, w = shape
    return (n, c // fi, h, w, fi)


def _unblocked(shape: tuple) -> tuple:
    """NCHW{fi}c shape -> the NCHW shape it holds."""
    n, blocks, h, w, fi = shape
    return (n, blocks * fi, h, w)


def _blocks_of(layouts: tuple) -> tuple[int, int]:
    """(input fi, output fi) of a conv's (data, kernel, out) layouts: blocked_layout(fi)'s kernel
    and output, the data NCHW{fi}c or NCHW; (0, 0) for anything else."""
    data, kernel, out = (str(layout) for layout in layouts)
    digits = out[4:-1]
    if not (out.startswith("NCHW") and out.endswith("c") and digits.isdigit()):
        return 0, 0
    fi = int(digits)
    if blocked_layout(fi) != (out, kernel) or data not in (out, "NCHW"):
        return 0, 0
    return (fi if data == out else 0), fi


def _ints(values) -> tuple[int, ...]:
    """A TVM array attribute as a tuple of Python ints."""
    return tuple(int(v) for v in values)
