"""x86 code generation for int8 kernels: what LLVM emits for the integer conv2d the int8 rewrite produces."""

from __future__ import annotations

from slimcc.targets.target import make_target
from targets_helpers import assembly
from slimcc.targets.tvm_import import ensure_tvm


def test_znver_target_keeps_strided_u8_convs_free_of_sse4a_insertq():
    # LLVM packs the stride-2 u8 loads of a depthwise conv with SSE4a `insertq` on znver CPUs;
    # on the reference machine that kernel runs ~80x slower, so x86 targets for AMD CPUs drop SSE4a
    tvm = ensure_tvm()
    from tvm import relax
    from tvm.script import relax as R

    @tvm.script.ir_module
    class Depthwise:
        @R.function
        def main(x: R.Tensor((1, 96, 34, 34), "uint8"), w: R.Tensor((96, 1, 3, 3), "int8")):
            with R.dataflow():
                y = R.nn.conv2d(x, w, strides=[2, 2], groups=96, out_dtype="int32")
                R.output(y)
            return y

    def depthwise_assembly(target) -> str:
        return assembly(tvm.compile(relax.transform.LegalizeOps()(Depthwise), target=target))

    spec = make_target("x86", mcpu="znver3", num_cores=1)
    assert spec.tvm["mattr"] == ["-sse4a"] and "mattr" not in make_target("x86", mcpu="skylake").tvm
    assert "insertq" in depthwise_assembly(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))  # the trap is real
    assert "insertq" not in depthwise_assembly(spec.to_tvm())
