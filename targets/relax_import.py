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


def prepare_for_build(mod, target=None, facts: dict | None = None):
    """Rewrites every target needs before legalization: real int8 compute, then BatchNorm/LayerNorm decomposition.

    Compile and tuning both call this, so they see the same kernels. On CPU targets float conv2d
    layers with constant weights become slimcc's packed conv (targets/schedules/pack_weights.py). Q/DQ layers become integer
    conv2d/matmul (targets/int8.py) in the operand types `target` multiplies best (u8 x s8 when
    `target` is None or x86); SLIMCC_TVM_INT8=fake keeps TVM's float Q/DQ instead. `facts`, when
    given, receives `int8_lowered` (integer conv2d/matmul count) and `int8_mode`.
    """
    ensure_tvm()
    from tvm import relax

    from slimcc.targets.int8 import count_integer_ops, flavour_for, int8_mode, lower_int8
    from slimcc.targets.schedules.isa import cpu_vector_for
    from slimcc.targets.schedules.pack_weights import pack_conv_weights

    mode = int8_mode()
    if mode == "real":
        try:
            mod = lower_int8(mod, flavour_for(target))
        except SlimccError:
            raise
        except Exception as exc:  # a TVM error inside the rewrite
            raise SlimccError(f"lowering Q/DQ layers to int8 compute failed: {first_line(exc)}; "
                              "set SLIMCC_TVM_INT8=fake to build with float Q/DQ instead") from None
    if facts is not None:
        facts["int8_mode"] = mode
        facts["int8_lowered"] = count_integer_ops(mod)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    vector = cpu_vector_for(target) if target is not None else None
    if vector is not None:
        mod = pack_conv_weights(relax.transform.FoldConstant()(mod), vector)
    return mod


def describe_import_error(exc: BaseException) -> str:
    """One line naming the ONNX op TVM could not handle, with what to do about it."""
    message = first_line(exc)
    op = re.search(r"(?:operator|op)[\s:]+['\"]?([A-Z][A-Za-z0-9]+)", str(exc))
    hint = ("run `slimcc optimize --pipeline canonicalize` with static --input-shape first "
            "so shape sub-graphs are folded")
    if op:
        return f"{message} (ONNX op {op.group(1)}); {hint}"
    return f"{message}; {hint}"
