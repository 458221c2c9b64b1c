"""The x86 VNNI dot product (vpdpbusd) as a TIR tensor intrinsic slimcc registers itself.

One instruction multiplies 16 x 4 unsigned 8-bit activations with signed 8-bit weights and adds
each group of 4 products to one of 16 int32 accumulators:

    C[i] += sum_k int32(A[k]) * int32(B[i, k])          A: u8[4] (broadcast), B: s8[16, 4], C: s32[16]

TVM 0.27 ships this intrinsic as `dot_16x4_vnni`, but its operands are int32 vectors and the
LLVM 22 bundled with TVM declares `llvm.x86.avx512.vpdpbusd.512` on <64 x i8>: the build fails
with "Call parameter type does not match function signature". slimcc's version passes the
broadcast activation quadruple and the weight block as int8x64, the types LLVM 22 expects.
"""

from __future__ import annotations

from slimcc.targets.tvm_import import ensure_tvm

VNNI_INTRIN = "slimcc_dot_u8s8_16x4_vnni"
LANES, GROUP = 16, 4  # int32 accumulators per instruction, u8 x s8 products summed into each
_registered: list[str] = []


def vnni_intrin() -> str:
    """The name of the registered VNNI tensor intrinsic (registered on first use)."""
    if not _registered:
        ensure_tvm()
        from tvm import s_tir

        desc, impl = _functions()
        s_tir.TensorIntrin.register(VNNI_INTRIN, desc, impl, override=True)
        _registered.append(VNNI_INTRIN)
    return VNNI_INTRIN


def _functions():
    """(description, implementation) PrimFuncs of the 16x4 dot product."""
    ensure_tvm()
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (16,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i, k in T.grid(16, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (16,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="int8x64"),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16")

    return desc, impl
