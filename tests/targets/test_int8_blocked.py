"""NCHW16c bytes between VNNI int8 convs (targets/int8_blocked.py): the layout is carried through
requantize, residual adds and dequantize, transforms cancel between layers, results are unchanged."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from slimcc.passes.quant.qdq_insert import QDQInsert

from slimcc.targets.build import compile_pipeline
from slimcc.targets.relax_import import prepare_for_build, to_relax
from slimcc.targets.tvm_import import ensure_tvm

from test_int8_tuning import HOST, needs_vnni

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes" / "quant"))
from quant_helpers import calib_context, canonical_zoo  # noqa: E402

pytestmark = needs_vnni


def _quantized_zoo(name: str):
    """A zoo model with Q/DQ layers from qdq-insert, and held-out inputs."""
    model = canonical_zoo(name)
    ctx, held_out = calib_context()
    QDQInsert().run(model, ctx)
    return model, held_out


def _build(model):
    """(main's TVMScript after slimcc's Relax rewrites, a function running the compiled model)."""
    tvm = ensure_tvm()
    from tvm import relax

    target = HOST.to_tvm()
    facts: dict = {}
    mod = prepare_for_build(to_relax(model), target, facts)
    script = mod["main"].script(show_meta=False)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=compile_pipeline(target, None, facts)),
                              tvm.cpu())
    return script, facts, lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("name", ["resnet-basic", "c2f"])
def test_int8_layers_stay_blocked_and_match_the_nchw_build(monkeypatch, name):
    import slimcc.targets.schedules.int8_pack as int8_pack

    model, held_out = _quantized_zoo(name)
    script, facts, run = _build(model)
    qconvs = [line for line in script.splitlines() if re.search(r"R.call_tir\(slimcc_(qconv|amx)", line)]
    assert len(qconvs) == facts["int8_lowered"] >= 6  # every integer layer is a conv here
    assert all(re.search(r'out_ty=R.Tensor\(\(1, \d+, \d+, \d+, 16\), dtype="int32"\)', line) for line in qconvs)
    # the float stem's output, the int8 region's end and nothing between the int8 layers
    assert script.count("R.layout_transform(") <= 3, script
    assert facts["unscheduled_kernels"] == []
    if name == "resnet-basic":
        assert "qadd" in script
    else:  # C2f's split and concat move 8-bit blocks (targets/int8_movement.py)
        assert re.search(r'R.Tensor\(\(1, \d+, \d+, \d+, 16\), dtype="uint8"\) = R.concat\(', script)
        assert re.search(r'R.Tuple\(R.Tensor\(\(1, \d+, \d+, \d+, 16\), dtype="uint8"\).*= R.split\(', script)

    monkeypatch.setattr(int8_pack._IntConv, "blockable", lambda self: False)
    nchw_script, _, run_nchw = _build(model)
    assert "R.call_tir(slimcc_qconv" in nchw_script
    for feeds in held_out[:2]:
        x = feeds["x"]
        np.testing.assert_array_equal(run(x), run_nchw(x))


def test_layout_pairs_cancel_and_sink_through_epilogue_kernels():
    tvm = ensure_tvm()
    from tvm import relax

    from slimcc.targets.int8 import _Kernels
    from slimcc.targets.int8_blocked import (cancel_layout_pairs, from_blocked, is_from_blocked, is_to_blocked,
                                             sink_blocked_layout, to_blocked)

    x = relax.Var("x", relax.TensorType([1, 2, 4, 4, 16], "int32"))
    r = relax.Var("r", relax.TensorType([1, 32, 4, 4], "uint8"))
    builder = relax.BlockBuilder()
    kernels = _Kernels(builder)
    with builder.function("main", [x, r]):
        with builder.dataflow():
            acc = builder.emit(from_blocked(x))
            y = builder.emit(kernels.requantize(acc, [1, 32, 4, 4], 1, np.arange(32), np.full(32, 1 << 30),
                                                np.full(32, 36), 3, 0, 255, "uint8"))
            s = builder.emit(kernels.add(y, r, [1, 32, 4, 4], "uint8", "uint8", 3, 0, 1 << 20, 1 << 20, 21, 0,
                                         0, 255, "uint8"))
            out = builder.emit_output(builder.emit(to_blocked(s)))
        builder.emit_func_output(out)
    mod = cancel_layout_pairs(sink_blocked_layout(builder.get()))
    main = mod["main"]
    transforms = []
    relax.analysis.post_order_visit(main, lambda e: transforms.append(e) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.layout_transform"
                                    else None)
    # requantize and add now run on NCHW16c; the residual input is converted once; the final pair cancelled
    assert len(transforms) == 1 and is_to_blocked(transforms[0]) and transforms[0].args[0].same_as(r)
    assert not any(is_from_blocked(t) for t in transforms)
    script = main.script(show_meta=False)
    assert script.count("(1, 2, 4, 4, 16)") >= 3


def _elementwise_chain_module(per_channel_operand):
    """from_blocked(x) -> * per-channel constant -> HardSwish -> + `per_channel_operand` -> Q -> to_blocked."""
    ensure_tvm()
    from tvm import relax

    from slimcc.targets.int8_blocked import from_blocked, to_blocked

    rng = np.random.default_rng(0)
    x = relax.Var("x", relax.TensorType([1, 2, 4, 4, 16], "float32"))
    params = [x] if per_channel_operand is None else [x, per_channel_operand]
    scale = relax.const(rng.uniform(0.5, 2.0, (1, 32, 1, 1)).astype("float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", params):
        with builder.dataflow():
            y = builder.emit(relax.op.multiply(builder.emit(from_blocked(x)), scale))
            gate = relax.op.minimum(relax.op.maximum(relax.op.add(y, relax.const(3.0)), relax.const(0.0)),
                                    relax.const(6.0))
            y = builder.emit(relax.op.multiply(y, relax.op.multiply(gate, relax.const(1 / 6, "float32"))))
            if per_channel_operand is not None:
                y = builder.emit(relax.op.add(y, per_channel_operand))
            q = builder.emit(relax.op.quantize(y, relax.const(0.05, "float32"), relax.const(7, "uint8"), axis=1,
                                               out_dtype="uint8"))
            out = builder.emit_output(builder.emit(to_blocked(q)))
        builder.emit_func_output(out)
    return builder.get()


def _layout_transforms(func) -> int:
    return func.script(show_meta=False).count("R.layout_transform(")


def test_float_chains_with_per_channel_constants_run_blocked_and_match():
    tvm = ensure_tvm()
    from tvm import relax

    from slimcc.targets.int8_blocked import cancel_layout_pairs, sink_blocked_layout

    mod = _elementwise_chain_module(None)
    sunk = cancel_layout_pairs(sink_blocked_layout(mod))
    assert _layout_transforms(mod["main"]) == 2
    assert _layout_transforms(sunk["main"]) == 0  # the whole chain runs on NCHW16c
    x = np.random.default_rng(1).normal(0, 4, (1, 2, 4, 4, 16)).astype("float32")
    results = []
    for module in (mod, sunk):
        module = relax.transform.LegalizeOps()(module)
        vm = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(results[0], results[1])
    assert len(np.unique(results[0])) > 10  # the chain is not degenerate


def test_float_chains_with_a_tensor_operand_stay_nchw():
    ensure_tvm()
    from tvm import relax

    from slimcc.targets.int8_blocked import cancel_layout_pairs, sink_blocked_layout

    residual = relax.Var("r", relax.TensorType([1, 32, 4, 4], "float32"))
    sunk = cancel_layout_pairs(sink_blocked_layout(_elementwise_chain_module(residual)))
    # sunk up to the add of a non-constant NCHW tensor, which is not converted: one transform each way
    assert _layout_transforms(sunk["main"]) == 2
    script = sunk["main"].script(show_meta=False)
    assert re.search(r'R.Tensor\(\(1, 2, 4, 4, 16\), dtype="float32"\) = R.multiply\(', script)
    assert re.search(r'R.Tensor\(\(1, 32, 4, 4\), dtype="float32"\) = R.add\(', script)
