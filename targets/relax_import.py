"""IR -> Relax: import a canonicalized, statically shaped slimcc model with TVM's ONNX frontend.

Import problems are fixed in slimcc's canonicalization, not here; this module only
checks the preconditions and turns frontend failures into actionable SlimccErrors.
"""

from __future__ import annotations

import re

from slimcc.errors import SlimccError
from slimcc.ir.model import Model, first_line
from slimcc.targets.tvm_import import ensure_tvm


def require_static(model: Model) -> None:
    """Refuse a model whose tensor shapes are not all static (TVM's import would fail or be slow)."""
    if not model.is_static():
        dynamic = [t.name for t in model.graph.tensors().values()
                   if getattr(t, "shape", 0) is None or any(not isinstance(d, int) or d < 0 for d in (t.shape or []))]
        inputs = [f"{t.name}{list(t.shape) if t.shape is not None else '?'}" for t in model.graph.inputs]
        raise SlimccError(
            f"the model has {len(dynamic)} tensor(s) with dynamic or unknown shapes (e.g. {dynamic[:3]}); "
            f"fix the input shapes with --input-shape NAME=D0,D1,... (inputs: {', '.join(inputs)}) "
            "and run the canonicalize pass before compiling")


def to_relax(model: Model):
    """The model as a Relax IRModule with weights embedded as constants (function `main`)."""
    require_static(model)
    proto = model.to_proto()
    ensure_tvm()
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(proto, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises anything from KeyError to TVMError
        raise SlimccError(f"TVM's ONNX importer failed: {describe_import_error(exc)}") from None
    return mod


def prepare_for_build(mod, target=None, facts: dict | None = None, int8_mode: str | None = None):
    """Rewrites every target needs before legalization: real int8 compute, then BatchNorm/LayerNorm decomposition.

    Compile and tuning both call this, so they see the same kernels. On CPU targets float convs
    take the blocked NCHW{lanes}c layout where their channels allow, carried between them
    (targets/schedules/blocked_layout.py); float conv2d
    layers with constant weights become slimcc's packed conv (targets/schedules/pack_weights.py),
    integer ones on x86 slimcc's int8 conv (targets/schedules/int8_pack.py, VNNI where the target has it),
    and sigmoid/tanh/exp use a vectorizable exp (targets/schedules/fast_math.py). Q/DQ layers become integer
    conv2d/matmul (targets/int8.py) in the operand types `target` multiplies best (u8 x s8 when
    `target` is None or x86); `int8_mode="fake"` keeps TVM's float Q/DQ instead (None: the
    deprecated SLIMCC_TVM_INT8 variable, else "real"; see targets/int8.py `int8_mode`). `facts`, when
    given, receives `int8_lowered` (integer conv2d/matmul count) and `int8_mode`, and `int8_tables` when
    element-wise float chains between a DQ and a Q became 256-entry lookups (targets/int8_tables.py).
    """
    ensure_tvm()
    from tvm import relax

    from slimcc.targets.int8 import count_integer_ops, flavour_for, lower_int8
    from slimcc.targets.int8 import int8_mode as resolve_int8_mode
    from slimcc.targets.int8_movement import move_int8_data
    from slimcc.targets.int8_tables import lower_tables
    from slimcc.targets.schedules.int8_pack import pack_int8_convs
    from slimcc.targets.schedules.isa import cpu_vector_for, target_has_feature
    from slimcc.targets.schedules.fast_math import use_fast_exp, use_reciprocal_multiply
    from slimcc.targets.schedules.blocked_layout import use_blocked_layout
    from slimcc.targets.schedules.pack_weights import pack_conv_weights
    from slimcc.targets.schedules.vnni import SDOT, VNNI

    mode = resolve_int8_mode(int8_mode)
    if mode == "real":
        try:
            mod = lower_int8(mod, flavour_for(target))
            mod, tables = lower_tables(mod, target)  # DQ -> element-wise float -> Q chains: [256] lookups
            mod = move_int8_data(mod)  # concat/split/max pool/nearest resize between one-scale Q/DQ: in 8 bits
        except SlimccError:
            raise
        except Exception as exc:  # a TVM error inside the rewrite
            raise SlimccError(f"lowering Q/DQ layers to int8 compute failed: {first_line(exc)}; "
                              "compile with --int8-mode fake to build with float Q/DQ instead") from None
    if facts is not None:
        facts["int8_mode"] = mode
        facts["int8_lowered"] = count_integer_ops(mod)
        if mode == "real" and tables:
            facts["int8_tables"] = tables
    mod = relax.transform.DecomposeOpsForInference()(mod)
    vector = cpu_vector_for(target) if target is not None else None
    if vector is not None:
        mod = relax.transform.FoldConstant()(use_reciprocal_multiply(mod))
        mod = relax.transform.FoldConstant()(use_blocked_layout(mod, vector))
        if flavour_for(target) == "u8s8":
            mod = pack_int8_convs(mod, vector, VNNI if target_has_feature(target, "avx512vnni") else None,
                                  amx=target_has_feature(target, "amx-int8") and target_has_feature(target, "amx-tile"))
        elif vector.name == "neon" and target_has_feature(target, "dotprod"):  # s8 x s8 convs on sdot
            mod = pack_int8_convs(mod, vector, SDOT)
        mod = use_fast_exp(pack_conv_weights(mod, vector))
    return mod


def describe_import_error(exc: BaseException, model: Model | None = None) -> str:
    """One line naming the ONNX op(s) TVM could not handle, with what to do about it.

    When the frontend rejects ops it does not implement, every one is named: LSTM/GRU are
    what slimcc's lower-recurrent pass rewrites (given `model`, the reason it left each one),
    any other op cannot be compiled with TVM and the model still runs on onnxruntime.
    Other failures get the canonicalize hint.
    """
    message = first_line(exc)
    unsupported = re.search(r"not supported for frontend ONNX:\s*(.+)", message)
    if unsupported:
        ops = sorted({op.strip() for op in unsupported.group(1).split(",") if op.strip()})
        return _unsupported_ops_hint(ops, model)
    op = re.search(r"(?:operator|op)[\s:]+['\"]?([A-Z][A-Za-z0-9]+)", str(exc))
    hint = ("run `slimcc optimize --pipeline canonicalize` with static --input-shape first "
            "so shape sub-graphs are folded")
    if op:
        return f"{message} (ONNX op {op.group(1)}); {hint}"
    return f"{message}; {hint}"


def _unsupported_ops_hint(ops: list[str], model: Model | None) -> str:
    """What slimcc can and cannot do about ONNX ops TVM's frontend does not implement."""
    from slimcc.passes.canonicalize._recurrent import RECURRENT_OPS
    from slimcc.passes.canonicalize.lower_recurrent import recurrent_refusals

    recurrent = [op for op in ops if op in RECURRENT_OPS]
    others = [op for op in ops if op not in RECURRENT_OPS]
    parts = [f"TVM's ONNX frontend has no converter for {', '.join(ops)}"]
    if recurrent:
        reasons = recurrent_refusals(model.graph) if model is not None else {}
        why = ("; ".join(f"{name!r}: {reason}" for name, reason in list(reasons.items())[:3]) if reasons else
               "it needs a static sequence length, sequence_lens absent or equal to it everywhere, the default "
               "activations, no clip and input_forget=0 (`slimcc optimize MODEL -p canonicalize -o OUT.onnx "
               "--json` names the reason under lower-recurrent)")
        parts.append(f"{'/'.join(recurrent)}: slimcc's lower-recurrent pass (part of canonicalize and "
                     f"`slimcc compile`) unrolls these into MatMul/Sigmoid/Tanh steps but refused them here, {why}")
    if others:
        parts.append(f"{', '.join(others)}: slimcc has no rewrite for {'it' if len(others) == 1 else 'them'}, "
                     "so this model cannot be compiled with TVM; it can still run on onnxruntime")
    return "; ".join(parts)
