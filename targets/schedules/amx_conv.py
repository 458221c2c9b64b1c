"""The AMX int8 conv (`slimcc_amx`) on x86 CPUs with AMX-INT8: stride-1 and -2 convs on NCHW16c u8 activations.

One `tdpbusd` multiplies a 16 x K u8 tile by a K x 16 s8 tile into 16 x 16 int32 (K = 64 bytes:
16384 MACs, 64 vpdpbusd); the tile registers hold 2 x 2 output tiles (32 pixels x 32 channels),
two input and two weight tiles. The conv is an implicit GEMM over the padded plane split into
its s x s stride phases (one phase at stride 1), each Wv = ceil(Wp / s) pixels wide:

    apack[n, g, (py, px), p, k] = padded input pixel (s * (p // Wv) + py, s * (p % Wv) + px), channel g * kc + k
                          (`slimcc_amx_pack`: one pass over the input, zero point in the border)
    acc[n, fo, q, fi]   = sum_{g, ry, rx, k} apack[n, g, (ry % s, rx % s), q + (ry // s) * Wv + rx // s, k]
                                            * Wa[fo, g, ry, rx, k // 4, fi, k % 4]
                          for q over out_h rows of Wv columns (`slimcc_amx`: AMX tiles, 32 q per step)
    out[n, fo, y, x, fi] = acc[n, fo, y * Wv + x, fi]                           (`slimcc_amx_crop`)

Along q, consecutive outputs read consecutive pixels of one phase, so an input tile is 16 rows of
kc bytes at a fixed stride for every tap, across row ends too; the columns past each row's end
are computed and dropped (2 of 58 on a 56-wide 3x3 conv, 1 of 29 on a 56-wide stride-2 one).
The requantize epilogue fuses after the crop.

Linux lends AMX state to a process only on request (arch_prctl ARCH_REQ_XCOMP_PERM), so the
kernel asks first: one syscall per call, and a library that runs anywhere without set-up.
"""

from __future__ import annotations

import numpy as np

from slimcc.targets.schedules.elementwise import schedule_flat
from slimcc.targets.schedules.epilogue import find_block, inline_epilogue
from slimcc.targets.schedules.isa import CpuVector, loop_volume, parallel_pays
from slimcc.targets.tvm_import import ensure_tvm

AMX_BLOCK = "slimcc_amx"
AMX_PACK_BLOCK = "slimcc_amx_pack"
AMX_CROP_BLOCK = "slimcc_amx_crop"
TILE_ROWS = 16  # pixels per input tile, rows of every tile
ROW_BYTES = 64  # the widest tile row: 64 input channels of a pixel, or 16 int32 accumulators
PIXEL_TILES = 2  # input tiles per step: 32 output pixels
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
# MACs per output value (C x KH x KW) from which AMX beats VNNI. The AMX form writes its int32
# accumulators to memory and requantizes them in a second pass, where VNNI requantizes each tile
# from registers; the tiles must save more than that costs. Measured per kernel (one thread) on
# YOLOv8n at 320 and the zoo ResNet at 112: 3x3 convs with 576-1152 MACs per output ran 1.2-1.4x
# faster on AMX, 1x1 convs with 64-384 and 3x3 ones with 144-288 on 40x40 and 80x80 planes ran
# 1.2-1.8x slower; on the 112x112 plane, ResNet's 288-MAC 3x3 convs ran 1.5-1.7x faster.
MIN_REDUCTION = 512
MIN_REDUCTION_LARGE_PLANE = 256
LARGE_PLANE = 8192  # output pixels


def channel_group(channels: int) -> int:
    """Input channels per tile row: 64 where they divide, else 32 or 16 (rows of 32 or 16 bytes)."""
    return next(kc for kc in (64, 32, 16) if channels % kc == 0)


def amx_eligible(conv) -> bool:
    """Whether the conv (a ConvGeometry) takes the AMX form: regular, stride 1 or 2 (the same along
    both axes), undilated, channels in blocks of 16, and enough MACs per output for AMX to pay
    (MIN_REDUCTION, or MIN_REDUCTION_LARGE_PLANE on a large output plane)."""
    out_channels, channels, kh, kw = conv.weight.shape
    reduction, plane = channels * kh * kw, conv.out_shape[2] * conv.out_shape[3]
    return (conv.groups == 1 and tuple(conv.strides) in ((1, 1), (2, 2)) and tuple(conv.dilation) == (1, 1)
            and channels % 16 == 0 and out_channels % 16 == 0
            and (reduction >= MIN_REDUCTION or (reduction >= MIN_REDUCTION_LARGE_PLANE and plane >= LARGE_PLANE)))


def pack_amx_weight(weight: np.ndarray) -> np.ndarray:
    """W[F, C, KH, KW] (s8) -> Wa[F/16, C/kc, KH, KW, kc/4, 16, 4]: one weight tile per (fo, g, ry, rx),
    kc/4 rows of 16 output channels x 4 consecutive input channels."""
    out_channels, channels, kh, kw = weight.shape
    kc = channel_group(channels)
    tiled = weight.reshape(out_channels // 16, 16, channels // kc, kc // 4, 4, kh, kw)
    return np.ascontiguousarray(tiled.transpose(0, 2, 5, 6, 3, 1, 4))


def fb_for(out_blocks: int) -> int:
    """Weight tiles (16-channel blocks) per step: 2 where the blocks pair up, else 1."""
    return 2 if out_blocks % 2 == 0 else 1


def tile_config(kc: int, fb: int) -> np.ndarray:
    """The 64-byte `ldtilecfg` operand: palette 1; tiles 0..2*fb-1 accumulators (16 x 64 B),
    then PIXEL_TILES input tiles (16 x kc B) and fb weight tiles (kc/4 x 64 B)."""
    config = np.zeros(64, np.uint8)
    config[0] = 1
    shapes = [(TILE_ROWS, ROW_BYTES)] * (PIXEL_TILES * fb) + [(TILE_ROWS, kc)] * PIXEL_TILES + [(kc // 4, ROW_BYTES)] * fb
    for tile, (rows, row_bytes) in enumerate(shapes):
        config[16 + 2 * tile:18 + 2 * tile] = np.frombuffer(np.uint16(row_bytes).tobytes(), np.uint8)
        config[48 + tile] = rows
    return config


def amx_conv(x, w_t, config, geometry, pad_value: int, cores: int):
    """The TE tensors of the AMX conv on blocked input `x` [N, C/16, H, W, 16] (u8) with the packed
    weight `w_t` (pack_amx_weight) and the tile `config`: returns the int32 NCHW16c output.

    `geometry` is the layer's ConvGeometry (in/out shapes, pads, kernel); the tile loops run on
    the thread pool only when the target has several `cores`."""
    ensure_tvm()
    from tvm import te, tirx

    n, channels, h, w = geometry.in_shape
    out_channels, _, kh, kw = geometry.weight.shape
    top, left, bottom, right = geometry.pads
    kc = channel_group(channels)
    stride = geometry.strides[0]
    wv = -(-(w + left + right) // stride)  # columns of a phase plane: q advances one pixel per output
    out_h, out_w = geometry.out_shape[2], geometry.out_shape[3]
    step = TILE_ROWS * PIXEL_TILES
    rows = -(-out_h * wv // step) * step
    pixels = rows + ((kh - 1) // stride) * wv + (kw - 1) // stride

    def packed(b, g, phase, p, k):
        i = (p // wv) * stride + phase // stride - top
        j = (p % wv) * stride + phase % stride - left
        c = g * kc + k
        inside = tirx.all(i >= 0, i < h, j >= 0, j < w)
        return tirx.if_then_else(inside, x[b, c // 16, i, j, c % 16], tirx.const(pad_value, "uint8"))

    apack = te.compute((n, channels // kc, stride * stride, pixels, kc), packed, name=AMX_PACK_BLOCK)
    acc = te.extern((n, out_channels // 16, rows, 16), [apack, w_t, config],
                    lambda ins, outs: _tile_loops(ins, outs[0], (kh, kw), wv, stride, cores > 1),
                    dtype="int32", name=AMX_BLOCK)
    return te.compute((n, out_channels // 16, out_h, out_w, 16),
                      lambda b, fo, y, xx, fi: acc[b, fo, y * wv + xx, fi], name=AMX_CROP_BLOCK)


def _tile_loops(ins, acc, kernel: tuple[int, int], wv: int, stride: int, parallel: bool):
    """The TIR of the tile loops (see the module doc), one parallel task per pair of channel blocks."""
    from tvm import tirx

    apack, weight, config = ins
    n, groups, _, _, kc = [int(d) for d in apack.shape]
    out_blocks, rows = int(acc.shape[1]), int(acc.shape[2])
    kh, kw = kernel
    fb = fb_for(out_blocks)
    a_tiles = [PIXEL_TILES * fb + t for t in range(PIXEL_TILES)]
    b_tiles = [PIXEL_TILES * fb + PIXEL_TILES + f for f in range(fb)]

    def intrin(name, *args):
        return tirx.Evaluate(tirx.call_llvm_intrin("void", name, *args))

    def tile(t):
        return tirx.const(t, "int8")

    def at(buf, mask, extent, *index):
        """A pointer to buf[index] that tells TVM the tile touches `extent` elements from there
        (an element address would let buffer compaction shrink the buffer to the tile starts)."""
        offset, size = 0, 1
        for i, dim in reversed(list(zip(index, buf.shape))):
            offset, size = offset + i * size, size * int(dim)
        return tirx.tvm_access_ptr(tirx.type_annotation(buf.dtype), buf.data, offset, extent, 1 if mask == "r" else 2)

    def loop(var, extent, body, kind=tirx.ForKind.SERIAL):
        return tirx.For(var, tirx.const(0, "int32"), tirx.const(extent, "int32"), kind, body)

    b, fo, q, g, ry, rx = (tirx.Var(name, "int32") for name in ("b", "fo", "q", "g", "ry", "rx"))
    accumulators = [(a, f, PIXEL_TILES * f + a) for f in range(fb) for a in range(PIXEL_TILES)]
    step = [intrin("llvm.x86.tileloadd64", tile(a_tiles[a]),
                   at(apack, "r", TILE_ROWS * kc, b, g, (ry % stride) * stride + rx % stride,
                      q * (TILE_ROWS * PIXEL_TILES) + a * TILE_ROWS + (ry // stride) * wv + rx // stride, 0),
                   tirx.const(kc, "int64")) for a in range(PIXEL_TILES)]
    step += [intrin("llvm.x86.tileloadd64", tile(b_tiles[f]), at(weight, "r", kc * 16, fo * fb + f, g, ry, rx, 0, 0, 0),
                    tirx.const(ROW_BYTES, "int64")) for f in range(fb)]
    step += [intrin("llvm.x86.tdpbusd", tile(c), tile(a_tiles[a]), tile(b_tiles[f])) for a, f, c in accumulators]
    taps = loop(g, groups, loop(ry, kh, loop(rx, kw, tirx.SeqStmt(step))))
    zero = [intrin("llvm.x86.tilezero", tile(c)) for _, _, c in accumulators]
    store = [intrin("llvm.x86.tilestored64", tile(c), at(acc, "w", TILE_ROWS * 16, b, fo * fb + f, q * (TILE_ROWS * PIXEL_TILES) + a * TILE_ROWS, 0),
                    tirx.const(ROW_BYTES, "int64")) for a, f, c in accumulators]
    pixel_steps = loop(q, rows // (TILE_ROWS * PIXEL_TILES), tirx.SeqStmt([*zero, taps, *store]))
    task = tirx.SeqStmt([intrin("llvm.x86.ldtilecfg", at(config, "r", 64, 0)), pixel_steps, intrin("llvm.x86.tilerelease")])
    macs = n * out_blocks * 16 * rows * groups * kc * kh * kw
    kind = tirx.ForKind.PARALLEL if parallel and macs >= PARALLEL_MACS and out_blocks // fb > 1 else tirx.ForKind.SERIAL
    body = loop(b, n, loop(fo, out_blocks // fb, task, kind))
    permit = tirx.Evaluate(tirx.call_extern("int64", "syscall", tirx.const(SYS_ARCH_PRCTL, "int64"),
                                            tirx.const(ARCH_REQ_XCOMP_PERM, "int64"),
                                            tirx.const(XFEATURE_XTILEDATA, "int64")))
    return tirx.SeqStmt([permit, body])


# MACs from which the channel-block tasks run on the thread pool (a launch costs microseconds;
# AMX does about 1000 MACs per cycle)
PARALLEL_MACS = 1 << 24


def schedule_amx_conv(sch, vector: CpuVector) -> bool:
    """Schedule a fused kernel around `slimcc_amx`: the packing and the crop with its epilogue as
    vectorized loops (rows parallel when they pay); the tile loops are already final. False when
    the function has no AMX conv."""
    conv = find_block(sch, AMX_BLOCK)
    if conv is None:
        return False
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    for block in inline_epilogue(sch, find_block(sch, AMX_CROP_BLOCK)):
        try:
            sch.reverse_compute_inline(block)
        except ScheduleError:  # not element-wise in the crop: a vectorized loop of its own
            schedule_flat(sch, block, vector)
    for name in (AMX_PACK_BLOCK, AMX_CROP_BLOCK):
        block = find_block(sch, name)
        *outer, _columns, lanes = sch.get_loops(block)
        outer = sch.fuse(*outer)
        if parallel_pays(vector, loop_volume(sch, block), int(sch.get(outer).extent)):
            sch.parallel(outer)
        if int(sch.get(lanes).extent) > 16:  # a packed pixel's kc channels: 16 contiguous input bytes at a time
            lanes = sch.split(lanes, [None, 16])[1]
        sch.vectorize(lanes)
    return True
