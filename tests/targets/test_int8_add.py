"""Real int8 in Relax, the residual Add and the fused epilogue: Q(DQ(a) + DQ(b)) in integers, one kernel per layer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.ir.model import load_model
from slimcc.passes.quant import intref
from slimcc.targets.build import backend_pipeline
from slimcc.targets.int8 import lower_int8
from slimcc.targets.relax_import import to_relax
from slimcc.targets.tvm_import import ensure_tvm

DTYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}


def _qadd_model(shape, a_dtype: str, b_dtype: str, y_dtype: str, scales, zeros, relu: bool):
    """DQ(a) + DQ(b) [-> Relu] -> Q(y): qdq-insert's form of a residual Add."""
    (sa, sb, sy), (za, zb, zy) = scales, zeros
    inits = {"as": np.float32(sa), "az": np.array(za, a_dtype), "bs": np.float32(sb), "bz": np.array(zb, b_dtype),
             "ys": np.float32(sy), "yz": np.array(zy, y_dtype)}
    nodes = [helper.make_node("DequantizeLinear", ["a", "as", "az"], ["ad"]),
             helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"]),
             helper.make_node("Add", ["ad", "bd"], ["sum"])]
    if relu:
        nodes.append(helper.make_node("Relu", ["sum"], ["act"]))
    nodes.append(helper.make_node("QuantizeLinear", ["act" if relu else "sum", "ys", "yz"], ["y"]))
    graph = helper.make_graph(nodes, "qadd", [helper.make_tensor_value_info("a", DTYPES[a_dtype], list(shape)),
                                              helper.make_tensor_value_info("b", DTYPES[b_dtype], list(shape))],
                              [helper.make_tensor_value_info("y", DTYPES[y_dtype], None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return load_model(onnx.shape_inference.infer_shapes(model))


def _run(mod, *inputs) -> np.ndarray:
    tvm = ensure_tvm()
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(x) for x in inputs)).numpy()


def _random(rng, dtype: str, shape) -> np.ndarray:
    lo, hi = intref.QRANGE[np.dtype(dtype)]
    return rng.integers(lo, hi + 1, shape).astype(dtype)


ADD_CASES = {  # a, b, y dtypes; scales (a, b, y); zero points; relu
    "u8-relu": ("uint8", "uint8", "uint8", (0.031, 0.017, 0.043), (131, 90, 17), True),
    "s8-u8-mixed": ("int8", "uint8", "int8", (0.02, 0.05, 0.061), (-3, 128, 5), False),
    "far-apart-scales": ("uint8", "uint8", "uint8", (0.9, 0.0011, 0.35), (10, 200, 128), False),
}


@pytest.mark.parametrize("case", list(ADD_CASES))
def test_residual_add_is_bit_exact_with_the_integer_reference(case):
    a_dtype, b_dtype, y_dtype, scales, zeros, relu = ADD_CASES[case]
    shape = (1, 6, 9, 11)
    rng = np.random.default_rng(5)
    a, b = _random(rng, a_dtype, shape), _random(rng, b_dtype, shape)
    mod = lower_int8(to_relax(_qadd_model(shape, a_dtype, b_dtype, y_dtype, scales, zeros, relu)))
    script = mod.script(show_meta=False)
    assert "R.quantize" not in script and "R.dequantize" not in script and "qadd" in script
    got = _run(mod, a, b)
    (sa, sb, sy), (za, zb, zy) = scales, zeros
    ra, rb = (float(np.float32(s)) / float(np.float32(sy)) for s in (sa, sb))
    want = intref.qlinear_add(a, za, b, zb, ra, rb, zy, y_dtype, relu)
    assert got.dtype == np.dtype(y_dtype)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 50
    # and the integer form is the float one (DQ, add, Q in float32) up to one step at rounding ties
    real = intref.dequantize(a, sa, za) + intref.dequantize(b, sb, zb)
    floating = intref.quantize(np.maximum(real, 0) if relu else real, sy, zy, y_dtype)
    assert np.abs(got.astype(np.int64) - floating).max() <= 1


def test_residual_add_rounds_ties_half_to_even_like_float_quantize():
    # power-of-two scales: every sum is exact in float32, and a quarter of them sit exactly on x.5
    shape = (1, 4, 16, 16)
    rng = np.random.default_rng(1)
    a, b = _random(rng, "uint8", shape), _random(rng, "uint8", shape)
    scales, zeros = (0.5, 0.25, 1.0), (128, 7, 100)
    got = _run(lower_int8(to_relax(_qadd_model(shape, "uint8", "uint8", "uint8", scales, zeros, False))), a, b)
    real = intref.dequantize(a, 0.5, 128) + intref.dequantize(b, 0.25, 7)
    assert np.count_nonzero(real - np.floor(real) == 0.5) > 100
    np.testing.assert_array_equal(got, intref.quantize(real, 1.0, 100))


@pytest.mark.parametrize("ra, rb", [(0.72, 0.4), (3.5, 0.001), (0.01, 0.03)])
def test_add_multipliers_share_one_shift_at_21_bit_precision(ra, rb):
    ma, mb, shift = intref.add_multipliers(ra, rb)
    assert 2**20 <= max(ma, mb) <= 2**21
    assert 255 * (ma + mb) + 2 ** (shift - 1) < 2**31  # the int32 sum and rounding term of targets/int8.py
    for real, m in ((ra, ma), (rb, mb)):
        assert abs(m / 2.0**shift - real) <= 2.0**-(shift + 1)


def test_broadcast_add_keeps_float_qdq():
    tvm = ensure_tvm()
    from tvm import relax
    from tvm.script import relax as R

    @tvm.script.ir_module
    class Broadcast:
        @R.function
        def main(a: R.Tensor((1, 4, 3, 3), "uint8"), b: R.Tensor((1, 4, 1, 1), "uint8")):
            with R.dataflow():
                ad = R.dequantize(a, R.const(0.1, "float32"), R.const(3, "uint8"), axis=1)
                bd = R.dequantize(b, R.const(0.2, "float32"), R.const(5, "uint8"), axis=1)
                y = R.quantize(R.add(ad, bd), R.const(0.3, "float32"), R.const(9, "uint8"), axis=1)
                R.output(y)
            return y

    mod = lower_int8(Broadcast)
    assert "R.quantize" in mod.script(show_meta=False)
    assert not any(isinstance(f, tvm.tirx.PrimFunc) for _, f in mod.functions.items())
    assert isinstance(mod["main"], relax.Function)


def _qdq_conv_add_model():
    """Conv (u8 in, 3x3 pad 1) -> Q, then Q(DQ(conv) + DQ(x)): a basic residual block in qdq-insert's form."""
    rng = np.random.default_rng(2)
    c, hw = 8, 10
    inits = {"xs": np.float32(0.02), "xz": np.uint8(30), "w": rng.integers(-127, 128, (c, c, 3, 3)).astype(np.int8),
             "ws": rng.uniform(0.002, 0.01, c).astype(np.float32), "wz": np.zeros(c, np.int8),
             "cs": np.float32(0.05), "cz": np.uint8(128), "ys": np.float32(0.06), "yz": np.uint8(120)}
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["conv", "cs", "cz"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "cs", "cz"], ["cd"]),
             helper.make_node("Add", ["cd", "xd"], ["sum"]),
             helper.make_node("QuantizeLinear", ["sum", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return load_model(onnx.shape_inference.infer_shapes(model))


def test_requantize_and_add_fuse_into_the_conv_as_one_epilogue():
    tvm = ensure_tvm()
    from tvm.target import Target

    target = Target("llvm")
    mod = lower_int8(to_relax(_qdq_conv_add_model()))
    legalize = list(backend_pipeline(target).legalize_passes(target))
    with target:
        fused = tvm.transform.Sequential(legalize)(mod)
    kernels = {gv.name_hint: f.script() for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    conv = [name for name, text in kernels.items() if "conv2d_nchw" in text]
    assert len(conv) == 1, kernels.keys()
    text = kernels[conv[0]]
    # conv2d, its requantize and the residual add are one kernel: the epilogue never leaves it ...
    assert 'T.sblock("requantize")' in text and 'T.sblock("qadd")' in text
    assert not any("requantize" in t or "qadd" in t for name, t in kernels.items() if name != conv[0])
    # ... and it writes no int64 tensor: int64 lives only in the per-element arithmetic
    assert '"int64")' not in "\n".join(l for l in text.splitlines() if "alloc_buffer" in l)

