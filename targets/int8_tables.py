"""Element-wise float chains between a DQ and a Q become 256-entry lookup tables.

After `targets/int8.py` the activations of a QDQ network are u8/s8 tensors, but an activation
between two quantized tensors still runs in float per element:

    xd  = R.dequantize(x_q, sx, zx)          x_q: u8/s8, scalar constant sx/zx
    y   = f(xd)                              element-wise float ops on xd and scalar constants
    y_q = R.quantize(y, sy, zy)              scalar constant sy/zy, u8/s8 out

(HardSwish x * clip(x + 3, 0, 6) / 6, HardSigmoid, Sigmoid, SiLU x * sigmoid(x), Tanh, Clip,
LeakyRelu, ...). y_q depends on one input byte only, so the chain is replaced by a gather
`table[x_q (+128 for s8)]` from a constant [256] table. Constants that differ per channel
([C, 1, 1] or [1, C, 1, 1], e.g. the Muls equalize-activation-ranges leaves around a HardSwish)
make it a function of the byte and its channel: a [C, 256] table, `table[c, x_q]`, looked up one
NCHW channel plane at a time (so it is never moved into NCHW16c: int8_blocked leaves it NCHW).
The table is computed at compile time by TVM itself: the matched chain, on tensors of its own
shape holding every input code, goes through slimcc's fake-quantized build
(`prepare_for_build(..., int8_mode="fake")` and the same compile pipeline) for the same target and runs, so each entry is the value `--int8-mode fake`
computes, rounding included. A target this machine cannot run (a cross build) is evaluated with
the host's llvm target instead; float rounding there can differ in the last bit at a
quantization boundary.

The gather reads one byte per element. TVM's op-pattern analysis (AnnotateTIROpPattern) calls
any data-dependent load opaque, so the compile pipeline runs `mark_lookups_elementwise` after it
(targets/build.py `fusion_passes`): FuseOps then fuses the lookup into the producing conv's
requantize epilogue, and a residual add after it too.
"""

from __future__ import annotations

import platform

import numpy as np

from slimcc.targets.relax_values import constant_array, static_shape, tensor_dtype
from slimcc.targets.schedules.byte_lookup import VBMI_FEATURE, vector_channel_lookup_func, vector_lookup_func
from slimcc.targets.schedules.isa import target_has_feature
from slimcc.targets.te_kernels import call_prim_func, call_te_kernel
from slimcc.targets.tvm_import import ensure_tvm

CODE_DTYPES = ("uint8", "int8")
# Relax ops that compute each output element from the same element of their operands
ELEMENTWISE_OPS = frozenset(f"relax.{name}" for name in (
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "power", "clip", "negative", "abs",
    "sqrt", "rsqrt", "exp", "log", "sigmoid", "tanh", "erf", "floor", "ceil", "round", "sign", "where",
    "isnan", "nn.relu", "nn.leakyrelu", "nn.gelu", "nn.gelu_tanh", "nn.silu", "nn.softplus", "nn.elu",
    "nn.selu", "nn.prelu"))
# TIR kernels the ONNX frontend emits for element-wise ops (Clip with min/max attributes)
ELEMENTWISE_KERNELS = ("maximum", "minimum")
LOOKUP_BLOCK = "qtable"  # the lookup's TE block (FuseTIR may add a suffix)
LOOKUP_ATTR = "slimcc.lookup"  # marks the lookup kernels for `mark_lookups_elementwise`
ELEMWISE_PATTERN = 0  # Relax's OpPatternKind kElemWise
OP_PATTERN_ATTR = "slimcc.op_pattern"  # a kernel's own OpPatternKind, set by `mark_lookups_elementwise`


class _NotTable(Exception):
    """The expression is not an element-wise chain of one dequantized tensor."""


def lower_tables(mod, target=None):
    """Replace every Q(f(DQ(x_q))) with a table lookup on x_q; returns (module, chains replaced)."""
    tvm = ensure_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, wildcard

    chains = [chain for _, func in mod.functions.items() if isinstance(func, relax.Function)
              for chain in find_chains(func)]
    if not chains:
        return mod, 0
    tables = evaluate_tables(mod, chains, target)
    vector = has_vector_lookup(target)
    quantize = is_op("relax.quantize")(wildcard(), is_const(), is_const())

    @tvm.transform.module_pass(opt_level=0, name="SlimccInt8Tables")
    def replace(mod, _ctx):
        builder = relax.BlockBuilder(mod)
        def lookup(orig, _matches):
            for chain, table in zip(chains, tables):
                if table is not None and orig.same_as(chain.quantize):
                    return lookup_call(builder, chain.x_q, table, chain.out_dtype, vector)
            return orig

        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                builder.update_func(gvar, relax.dpl.rewrite_call(quantize, lookup, func))
        return builder.get()

    passes = [replace, relax.transform.Normalize(), relax.transform.DeadCodeElimination()]
    return tvm.transform.Sequential(passes)(mod), sum(table is not None for table in tables)


class Chain:
    """One matched Q(f(DQ(x_q))): the quantize call, the quantized input and the float graph between."""

    def __init__(self, quantize, x_q, dequantized, bindings: dict, per_channel: bool = False):
        self.quantize = quantize
        self.x_q = x_q
        self.dequantized = dequantized  # the Var bound to R.dequantize(x_q, ...)
        self.bindings = bindings  # Var -> bound value, of the whole function
        self.out_dtype = str(quantize.attrs.out_dtype)
        self.in_dtype = tensor_dtype(x_q)
        self.shape = static_shape(x_q)
        self.per_channel = per_channel  # constants that differ along axis 1: a [C, 256] table

    def codes_per_pass(self) -> int:
        """Input codes one evaluation run covers: every element, or one channel plane of a per-channel chain."""
        size = int(np.prod(self.shape))
        return size // int(self.shape[1]) if self.per_channel else size


def find_chains(func) -> list[Chain]:
    """Every Q(f(DQ(x_q))) of a Relax function whose f is element-wise on one dequantized u8/s8 tensor."""
    ensure_tvm()
    from tvm import relax

    bindings: dict = {}
    quantizes = []
    for block in func.body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                bindings[binding.var] = binding.value
                if _is_call(binding.value, "relax.quantize"):
                    quantizes.append(binding.value)
    chains = []
    for q in quantizes:
        if str(q.attrs.out_dtype) not in CODE_DTYPES or not _scalar_params(q):
            continue
        try:
            leaves: set = set()
            channels: set = set()
            _classify(q.args[0], bindings, leaves, channels)
        except _NotTable:
            continue
        if len(leaves) != 1:
            continue
        dequantized = next(iter(leaves))
        x_q = bindings[dequantized].args[0]
        shape = static_shape(x_q)
        if shape is None or shape != static_shape(q):
            continue
        if channels and (len(shape) != 4 or channels != {int(shape[1])}):
            continue  # per-channel constants must run along the NCHW channel axis of the chain's tensor
        chains.append(Chain(q, x_q, dequantized, bindings, per_channel=bool(channels)))
    return chains


def _classify(expr, bindings: dict, leaves: set, channels: set) -> bool:
    """True when `expr` depends on a dequantized tensor (added to `leaves`), False when it is a constant:
    a scalar, or one value per channel ([C, 1, 1] or [1, C, 1, 1]: C added to `channels`).

    Raises _NotTable for anything else: a non-element-wise op, a tensor input, another broadcasting constant.
    """
    tvm = ensure_tvm()
    from tvm import relax

    if isinstance(expr, tvm.ir.GenericConst):  # a tensor constant (IntImm/FloatImm are tvm.ir.Constant too)
        value = constant_array(expr)
        if value.size != 1:
            if value.ndim not in (3, 4) or value.shape[-3] != value.size:
                raise _NotTable
            channels.add(int(value.size))
        return False
    if isinstance(expr, (tvm.ir.Constant, tvm.ir.StringImm, relax.ShapeExpr)):
        return False
    if isinstance(expr, relax.Tuple):
        return any([_classify(field, bindings, leaves, channels) for field in expr.fields])
    value = bindings.get(expr) if isinstance(expr, relax.Var) else expr
    if isinstance(value, tvm.ir.GenericConst):
        return _classify(value, bindings, leaves, channels)
    if not isinstance(value, relax.Call):
        raise _NotTable
    if _is_call(value, "relax.dequantize") and isinstance(expr, relax.Var):
        if tensor_dtype(value.args[0]) not in CODE_DTYPES or not _scalar_params(value):
            raise _NotTable
        data = bindings.get(value.args[0], value.args[0])
        if isinstance(data, tvm.ir.GenericConst):  # a quantized constant, e.g. the 3 of a QLinear HardSwish
            return _classify(data, bindings, leaves, channels)
        if _is_call(data, "relax.quantize") and _scalar_params(data):  # a Q -> DQ step inside the chain
            inner: set = set()
            inner_channels: set = set()
            try:
                _classify(data.args[0], bindings, inner, inner_channels)
                leaves.update(inner)
                channels.update(inner_channels)
                return True
            except _NotTable:
                pass  # the quantized tensor comes from elsewhere: it is the chain's input
        leaves.add(expr)
        return True
    if _is_call(value, "relax.quantize") and not _scalar_params(value):
        raise _NotTable
    if not (_elementwise(value) or _is_call(value, "relax.quantize")):
        raise _NotTable
    args = value.args[1:] if _is_call(value, "relax.call_tir") else value.args
    dependent = any([_classify(arg, bindings, leaves, channels) for arg in args])
    if not dependent:
        shape = static_shape(value)
        if shape is None or int(np.prod(shape)) != 1:
            raise _NotTable
    elif tensor_dtype(value) not in ("float32", "float16", "bool"):
        raise _NotTable
    return dependent


def _elementwise(call) -> bool:
    """Whether a Relax call computes each element from the same element of its (broadcast scalar) operands."""
    tvm = ensure_tvm()

    if not isinstance(call.op, tvm.ir.Op):
        return False
    if call.op.name == "relax.call_tir":
        return str(getattr(call.args[0], "name_hint", "")).startswith(ELEMENTWISE_KERNELS)
    return call.op.name in ELEMENTWISE_OPS


def _is_call(expr, op_name: str) -> bool:
    """Whether `expr` is a call of the Relax operator `op_name`."""
    tvm = ensure_tvm()
    from tvm import relax

    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name


def _scalar_params(call) -> bool:
    """Whether a quantize/dequantize call has a constant one-element scale and zero point."""
    tvm = ensure_tvm()
    from tvm import relax

    return all(isinstance(a, tvm.ir.GenericConst) and constant_array(a).size == 1 for a in call.args[1:3])


def evaluate_tables(mod, chains: list[Chain], target=None) -> list[np.ndarray | None]:
    """The [256] output table of each chain ([C, 256] for a per-channel chain), computed by building
    and running the chains with TVM.

    Entry i is the output for input code i (u8) or i - 128 (s8). A chain whose output is not a
    function of the input code (and channel) alone (it cannot happen for an element-wise chain;
    checked anyway) gets None and stays in float.
    """
    tvm = ensure_tvm()
    from tvm import relax

    from slimcc.targets.build import compile_pipeline
    from slimcc.targets.relax_import import prepare_for_build

    evaluator = _runnable_target(target)
    tiny = chain_module(mod, chains)
    tiny = prepare_for_build(tiny, evaluator, int8_mode="fake")
    vm = relax.VirtualMachine(tvm.compile(tiny, target=evaluator, relax_pipeline=compile_pipeline(evaluator)),
                              tvm.cpu())
    tables = []
    for i, chain in enumerate(chains):
        size = chain.codes_per_pass()
        rows = int(chain.shape[1]) if chain.per_channel else 1
        codes = np.arange(256) - (128 if chain.in_dtype == "int8" else 0)
        table = np.zeros((rows, 256), np.int64)
        seen = np.zeros((rows, 256), bool)
        consistent = True
        for start in range(0, 256, size):
            index = (start + np.arange(size)) % 256  # the code at each position of a plane (or of the tensor)
            x = np.broadcast_to(codes[index].astype(chain.in_dtype), (rows, size)).reshape(chain.shape)
            y = vm[f"chain{i}"](tvm.runtime.tensor(np.ascontiguousarray(x))).numpy().reshape(rows, size)
            for k in range(256):  # every position holding code k must agree, per channel
                values = y[:, index == k].astype(np.int64)
                if values.shape[1] == 0:
                    continue
                if np.any(values != values[:, :1]) or np.any(seen[:, k] & (table[:, k] != values[:, 0])):
                    consistent = False
                table[:, k], seen[:, k] = values[:, 0], True
        table = table.astype(chain.out_dtype)
        tables.append((table if chain.per_channel else table[0]) if consistent and seen.all() else None)
    return tables


def _runnable_target(target):
    """`target` when this machine can run what it builds (host llvm), else the host's llvm target."""
    tvm = ensure_tvm()

    if target is not None and target.kind.name == "llvm":
        triple = str(target.attrs.get("mtriple", "") or "")
        host = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
        if not triple or triple.startswith(host):
            return target
    return tvm.target.Target("llvm")


def chain_module(mod, chains: list[Chain]):
    """An IRModule with one function `chain{i}(x_q) = Q(f(DQ(x_q)))` per chain, at the chain's own shape.

    The chain's bindings are copied (TIR kernels it calls included) onto a fresh input, so the
    fake-quantized build compiles the same ops the model's build fuses.
    """
    ensure_tvm()
    from tvm import relax

    builder = relax.BlockBuilder()
    kernels: dict = {}
    for i, chain in enumerate(chains):
        x = relax.Var("x_q", chain.x_q.ty)
        with builder.function(f"chain{i}", [x]):
            with builder.dataflow():
                dequantize = chain.bindings[chain.dequantized]
                memo = {chain.dequantized: builder.emit(_copy_call(builder, mod, dequantize,
                                                                   [x, *dequantize.args[1:]], kernels))}
                args = [_copy(builder, mod, arg, chain.bindings, memo, kernels) for arg in chain.quantize.args]
                out = builder.emit_output(_copy_call(builder, mod, chain.quantize, args, kernels))
            builder.emit_func_output(out)
    return builder.get()


def _copy(builder, mod, expr, bindings: dict, memo: dict, kernels: dict):
    """`expr` of the model's function re-emitted in the builder's current function (bindings followed)."""
    ensure_tvm()
    from tvm import relax

    if isinstance(expr, relax.Var):
        if expr not in memo:
            value = bindings[expr]
            if not isinstance(value, relax.Call):
                return value
            args = [_copy(builder, mod, a, bindings, memo, kernels) for a in value.args]
            memo[expr] = builder.emit(_copy_call(builder, mod, value, args, kernels))
        return memo[expr]
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_copy(builder, mod, f, bindings, memo, kernels) for f in expr.fields])
    return expr


def _copy_call(builder, mod, call, args, kernels: dict):
    """`call` with new arguments; a call_tir's kernel is added to the builder's module (once)."""
    tvm = ensure_tvm()
    from tvm import relax

    if isinstance(args[0], tvm.ir.GlobalVar) if args else False:
        name = args[0].name_hint
        if name not in kernels:
            kernels[name] = builder.add_func(mod[args[0]], name)
        args = [kernels[name], *args[1:]]
    return relax.Call(call.op, args, call.attrs, call.ty_args)


def has_vector_lookup(target) -> bool:
    """Whether lookups on `target` run as their own VBMI permute kernels (schedules/byte_lookup.py)."""
    return target is not None and target.kind.name == "llvm" and target_has_feature(target, VBMI_FEATURE)


def lookup_call(builder, x_q, table: np.ndarray, out_dtype: str, vector: bool = False):
    """call_tir of `table[x_q (+128 for s8)]` from a constant [256] table (or `table[c, x_q]` from a
    [C, 256] one, C along axis 1 of NCHW `x_q`): an element-wise gather that fuses into the
    producer's epilogue, or with `vector` (`has_vector_lookup`) a kernel of its own that looks up
    64 bytes per two permutes (schedules/byte_lookup.py; per channel, one plane at a time)."""
    ensure_tvm()
    from tvm import relax, te

    shape, in_dtype = static_shape(x_q), tensor_dtype(x_q)
    if vector:
        func = (vector_channel_lookup_func if table.ndim == 2 else vector_lookup_func)(shape, in_dtype, out_dtype)
        return call_prim_func(builder, LOOKUP_BLOCK, func, [x_q, relax.const(table.astype(out_dtype))], shape,
                              out_dtype)
    x_t = te.placeholder(shape, in_dtype, "x_q")
    table_t = te.placeholder(table.shape, "int32", "table")
    offset = 128 if in_dtype == "int8" else 0

    def compute(*index):
        code = x_t[index].astype("int32") + offset
        return (table_t[index[1], code] if table.ndim == 2 else table_t[code]).astype(out_dtype)

    out = te.compute(shape, compute, name=LOOKUP_BLOCK)
    return call_te_kernel(builder, LOOKUP_BLOCK, [x_t, table_t, out],
                          [x_q, relax.const(table.astype(np.int32), "int32")], {LOOKUP_ATTR: True})


def mark_lookups_elementwise():
    """A pass giving the lookup kernels the element-wise op pattern; it runs after AnnotateTIROpPattern.

    TVM's pattern analysis calls the gather opaque (a data-dependent load), so FuseOps would leave
    it a kernel of its own. It is element-wise in its input (the table is a constant parameter, like
    a requantize's per-channel bias): marked so, FuseOps fuses it into the producing conv's
    requantize epilogue. Kernels carrying OP_PATTERN_ATTR get that pattern (the NCHW16c VNNI
    conv, whose computed input indices the analysis does not see as a conv's). It must run after the analysis: AnnotateTIROpPattern overwrites an
    op_pattern of 0 (kElemWise) set earlier.
    """
    tvm = ensure_tvm()

    @tvm.transform.module_pass(opt_level=0, name="SlimccMarkLookupsElementwise")
    def mark(mod, _ctx):
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs is None:
                continue
            if func.attrs.get(LOOKUP_ATTR):
                mod[gvar] = func.with_attr("op_pattern", ELEMWISE_PATTERN)
            elif OP_PATTERN_ATTR in func.attrs:
                mod[gvar] = func.with_attr("op_pattern", int(func.attrs[OP_PATTERN_ATTR]))
        return mod

    return mark
