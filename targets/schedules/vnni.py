"""The integer dot products (x86 VNNI vpdpbusd, aarch64 sdot) as TIR tensor intrinsics slimcc registers itself.

One instruction multiplies LANES x 4 8-bit activations with signed 8-bit weights and adds each
group of 4 products to one of LANES int32 accumulators:

    C[i] += sum_k int32(A[k]) * int32(B[i, k])          A: [4] (broadcast), B: s8[LANES, 4], C: s32[LANES]

- VNNI (`llvm.x86.avx512.vpdpbusd.512`): 16 lanes, A unsigned (u8 x s8).
- sdot (`llvm.aarch64.neon.sdot`, +dotprod): 4 lanes, A signed (s8 x s8: targets/int8.py shifts
  u8 activations by -128 for it).

TVM 0.27 ships the VNNI intrinsic as `dot_16x4_vnni`, but its operands are int32 vectors and the
LLVM 22 bundled with TVM declares `llvm.x86.avx512.vpdpbusd.512` on <64 x i8>: the build fails
with "Call parameter type does not match function signature". slimcc's version passes the
broadcast activation quadruple and the weight block as byte vectors, the types LLVM 22 expects.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimcc.targets.tvm_import import ensure_tvm

GROUP = 4  # products summed into each accumulator


@dataclass(frozen=True)
class DotProduct:
    """One integer dot-product instruction: its intrinsic name in TIR and LLVM, lanes and activation type."""

    name: str
    llvm: str
    lanes: int
    activation: str  # "uint8" or "int8"


VNNI = DotProduct("slimcc_dot_u8s8_16x4_vnni", "llvm.x86.avx512.vpdpbusd.512", 16, "uint8")
SDOT = DotProduct("slimcc_dot_s8s8_4x4_sdot", "llvm.aarch64.neon.sdot.v4i32.v16i8", 4, "int8")
LANES = VNNI.lanes  # the x86 kernels' channel block
VNNI_INTRIN = VNNI.name
_registered: set[str] = set()


def vnni_intrin() -> str:
    """The name of the registered VNNI tensor intrinsic (registered on first use)."""
    return dot_intrin(VNNI)


def dot_product_for(activation: str) -> DotProduct:
    """The dot product whose activations have this dtype (u8: VNNI, s8: sdot)."""
    return VNNI if activation == VNNI.activation else SDOT


def dot_intrin(dot: DotProduct) -> str:
    """The name of the registered tensor intrinsic of `dot` (registered on first use)."""
    if dot.name not in _registered:
        ensure_tvm()
        from tvm import s_tir

        desc, impl = _functions(dot)
        s_tir.TensorIntrin.register(dot.name, desc, impl, override=True)
        _registered.add(dot.name)
    return dot.name


def _functions(dot: DotProduct):
    """(description, implementation) PrimFuncs of the LANES x 4 dot product."""
    ensure_tvm()
    from tvm.script import tirx as T

    lanes, activation, llvm = dot.lanes, dot.activation, dot.llvm
    acc_type, byte_type = f"int32x{lanes}", f"int8x{lanes * GROUP}"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), activation, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), activation, offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # (accumulators, broadcast activations, weights): vpdpbusd's first byte operand is the
            # unsigned one; sdot's operands are both signed
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm),
                C.vload([0], dtype=acc_type),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], f"{activation}x4"), dtype="int32"), lanes),
                              dtype=byte_type),
                B.vload([0, 0], dtype=byte_type),
                dtype=acc_type)

    return desc, impl
