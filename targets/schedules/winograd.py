"""Winograd convolution for 3x3, stride-1 float convs on NCHW{fi}c activations.

F(m x m, 3 x 3) (Lavin and Gray, CVPR 2016) computes an m x m output tile from an
(m + 2) x (m + 2) input tile with (m + 2)^2 multiplications per input/output channel pair instead
of 9 m^2: 2.25x fewer at m = 4, 1.8x at m = 2. With B, G, A the transform matrices of
`TRANSFORMS`:

    U[e, v, k, c] = (G g[k, c] G^T)[e, v]                  weight, transformed by numpy at compile time
    V[e, v, c, p] = (B^T d[c, p] B)[e, v]                  input tile p, in two 1-D passes
    M[e, v, k, p] = sum_c U[e, v, k, c] V[e, v, c, p]      (m + 2)^2 independent matrix products
    Y[k, p]       = A^T M[:, :, k, p] A                    output tile p, in two 1-D passes

Channels stay in fi-wide vectors throughout (U as [e, v, K/fi, C, fi], V and M per channel block),
so every stage is vectorized along the channels and the matrix products run the same register
tiles as the direct conv. The transforms cost a few operations per input and output value, so
the products must dominate: the rule takes convs with at least MIN_CHANNELS input and output
channels (16 -> 16 at 112x112 measured even with the direct conv). Single-conv probes, one thread,
AVX-512, direct -> Winograd: 64 -> 64 at 56x56 1.33 -> 0.66 ms (m = 4), 64 -> 64 at 28x28
0.30 -> 0.12 ms, 128 -> 128 at 14x14 0.29 -> 0.17 ms (m = 2). The result differs from the direct
conv by float rounding: relative error ~6e-6 at m = 4.
"""

from __future__ import annotations

import numpy as np

from slimcc.targets.schedules.epilogue import attach_epilogue, find_block, inline_epilogue, schedule_pad
from slimcc.targets.schedules.isa import CpuVector, largest_divisor, loop_volume, parallel_pays, split_tile
from slimcc.targets.tvm_import import ensure_tvm

INPUT_ROWS_BLOCK = "slimcc_wino_rows"  # B^T d: the first 1-D pass of the input transform
INPUT_BLOCK = "slimcc_wino_input"  # V
PRODUCT_BLOCK = "slimcc_wino_product"  # M
OUTPUT_ROWS_BLOCK = "slimcc_wino_out_rows"  # A^T M: the first 1-D pass of the output transform
OUTPUT_BLOCK = "slimcc_wino_output"  # Y

MIN_CHANNELS = 32  # input and output channels for m = 4
MIN_CHANNELS_SMALL_TILE = 64  # for m = 2: 32 -> 32 at 56x56 ran 6% slower than the direct conv

# m: (B^T, G, A^T), the Cook-Toom transforms on the points 0, +-1, (+-2,) infinity
TRANSFORMS = {
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
}


def winograd_tile(conv) -> int:
    """The output tile m for `conv` (a pack_weights ConvGeometry), or 0 to keep the direct conv.

    Needs a 3x3, stride-1, undilated, ungrouped conv whose input and output are both NCHW{fi}c,
    an output plane divisible by m, and enough channels for the products to pay for the transforms.
    """
    out_channels, in_channels, kh, kw = conv.weight.shape
    if ((kh, kw) != (3, 3) or conv.strides != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1
            or not conv.block or conv.in_block != conv.block or getattr(conv, "zero_insert", (1, 1)) != (1, 1)):
        return 0
    height, width = conv.out_shape[2:]
    channels = min(in_channels, out_channels)
    for m, least in ((4, MIN_CHANNELS), (2, MIN_CHANNELS_SMALL_TILE)):
        if height % m == 0 and width % m == 0 and channels >= least:
            return m
    return 0


def winograd_weight(weight: np.ndarray, fi: int, m: int) -> np.ndarray:
    """OIHW [K, C, 3, 3] -> U [m+2, m+2, K/fi, C, fi] (G g G^T per channel pair, fi output channels contiguous)."""
    _, g, _ = TRANSFORMS[m]
    out_channels, in_channels = weight.shape[:2]
    u = np.einsum("ei,kcij,vj->evkc", g, weight.astype(np.float64), g)
    alpha = m + 2
    return np.ascontiguousarray(u.reshape(alpha, alpha, out_channels // fi, fi, in_channels)
                                .transpose(0, 1, 2, 4, 3).astype(np.float32))


def winograd_conv(conv, padded, u_t, fi: int, m: int):
    """The TE Winograd conv of `conv`'s geometry: `padded` is its zero-padded NCHW{fi}c input, `u_t`
    the transformed weight placeholder; the output is NCHW{fi}c."""
    ensure_tvm()
    from tvm import te, topi

    b_t, _, a_t = TRANSFORMS[m]
    alpha = m + 2
    n, channels = conv.in_shape[:2]
    out_channels = conv.weight.shape[0]
    height, width = conv.out_shape[2:]
    tiles_w = width // m
    tiles = height // m * tiles_w
    # select chains: once the indices are unrolled constants, the entries fold into the arithmetic
    bt = topi.utils.const_matrix(b_t.astype(np.float32), "slimcc_wino_bt")
    at = topi.utils.const_matrix(a_t.astype(np.float32), "slimcc_wino_at")

    i = te.reduce_axis((0, alpha), "i")
    rows = te.compute((n, channels // fi, tiles, alpha, alpha, fi), lambda b, cb, p, e, j, ci: te.sum(
        bt[e, i] * padded[b, cb, p // tiles_w * m + i, p % tiles_w * m + j, ci], axis=i), name=INPUT_ROWS_BLOCK)
    j = te.reduce_axis((0, alpha), "j")
    v = te.compute((n, alpha, alpha, channels // fi, tiles, fi), lambda b, e, nu, cb, p, ci: te.sum(
        rows[b, cb, p, e, j, ci] * bt[nu, j], axis=j), name=INPUT_BLOCK)
    c = te.reduce_axis((0, channels), "c")
    product = te.compute((n, alpha, alpha, out_channels // fi, tiles, fi), lambda b, e, nu, kb, p, ki: te.sum(
        u_t[e, nu, kb, c, ki] * v[b, e, nu, c // fi, p, c % fi], axis=c), name=PRODUCT_BLOCK)
    r = te.reduce_axis((0, alpha), "r")
    out_rows = te.compute((n, out_channels // fi, tiles, m, alpha, fi), lambda b, kb, p, y, nu, ki: te.sum(
        at[y, r] * product[b, r, nu, kb, p, ki], axis=r), name=OUTPUT_ROWS_BLOCK)
    s = te.reduce_axis((0, alpha), "s")
    return te.compute((n, out_channels // fi, height, width, fi), lambda b, kb, y, x, ki: te.sum(
        out_rows[b, kb, y // m * tiles_w + x // m, y % m, s, ki] * at[x % m, s], axis=s), name=OUTPUT_BLOCK)


def schedule_winograd(sch, vector: CpuVector) -> bool:
    """Schedule a Winograd conv kernel (see module doc); False when the function has none.

    Input transform: per (channel block, tile), both 1-D passes unrolled on fi-vectors, the
    first pass in registers. Products: per transform point, fb channel vectors x pb tiles of
    register accumulators, as the direct conv's tile. Output transform and the epilogue (bias,
    activation, residual add): per output tile, the first pass in registers.
    """
    product = find_block(sch, PRODUCT_BLOCK)
    if product is None:
        return False
    for name in ("slimcc_wino_bt", "slimcc_wino_at"):
        sch.compute_inline(find_block(sch, name))
    _schedule_input_transform(sch, vector)
    _schedule_products(sch, product, vector)
    _schedule_output_transform(sch, vector)
    schedule_pad(sch, vector)
    return True


def _schedule_input_transform(sch, vector: CpuVector) -> None:
    rows, v = find_block(sch, INPUT_ROWS_BLOCK), find_block(sch, INPUT_BLOCK)
    work = loop_volume(sch, v)
    n, e, nu, cb, p, ci, j = sch.get_loops(v)
    sch.reorder(n, cb, p, e, nu, j, ci)
    first_pass_init = _passes_per_tile(sch, rows, p, 3, (e, nu, j), ci)
    _parallel(sch, vector, work, (n, cb, p))
    sch.decompose_reduction(rows, first_pass_init)
    sch.decompose_reduction(v, j)


def _schedule_products(sch, product, vector: CpuVector) -> None:
    work = loop_volume(sch, product)
    n, e, nu, kb, p, ki, c = sch.get_loops(product)
    blocks, tiles = int(sch.get(kb).extent), int(sch.get(p).extent)
    fb = 2 if blocks % 2 == 0 else 1
    pb = largest_divisor(tiles, max(1, vector.accumulators // fb))
    points = sch.fuse(n, e, nu)
    kbo, kbi = split_tile(sch, kb, fb, vector)
    po, pi = split_tile(sch, p, pb, vector)
    sch.reorder(points, kbo, po, c, kbi, pi, ki)
    cache = sch.cache_write(product, 0, "local")
    sch.reverse_compute_at(cache, po, preserve_unit_loops=True)  # tuning may sample a tile of 1
    sch.vectorize(sch.get_loops(cache)[-1])
    sch.unroll(kbi)
    sch.unroll(pi)
    sch.vectorize(ki)
    _parallel(sch, vector, work, (points, kbo))
    sch.decompose_reduction(product, c)


def _schedule_output_transform(sch, vector: CpuVector) -> None:
    out_rows, out = find_block(sch, OUTPUT_ROWS_BLOCK), find_block(sch, OUTPUT_BLOCK)
    tail = inline_epilogue(sch, out)
    work = loop_volume(sch, out)
    m = int(sch.get(sch.get_loops(out_rows)[3]).extent)
    n, kb, y, x, ki, s = sch.get_loops(out)
    yo, yi = sch.split(y, [None, m])
    xo, xi = sch.split(x, [None, m])
    sch.reorder(n, kb, yo, xo, yi, xi, s, ki)
    cache = sch.cache_write(out, 0, "local")
    first_pass_init = _passes_per_tile(sch, out_rows, xo, 4, (yi, xi, s), ki)
    if attach_epilogue(sch, cache, tail, xo):
        sch.vectorize(sch.get_loops(cache)[-1])
    _parallel(sch, vector, work, (n, kb, yo))
    sch.decompose_reduction(out_rows, first_pass_init)
    sch.decompose_reduction(out, s)


def _passes_per_tile(sch, first_pass, tile, depth: int, unrolled, lanes):
    """A transform's two 1-D passes per tile: the first (`first_pass`, whose own loops start at
    `depth`) computed under the loop `tile` into registers, the second's `unrolled` loops unrolled
    around its channel `lanes`, which are vectorized. Returns the loop where the first pass's
    reduction is to be initialized (decomposed once the outer loops are parallel: TVM cannot
    parallelize around a decomposed reduction)."""
    sch.compute_at(first_pass, tile)
    sch.set_scope(first_pass, 0, "local")
    first_pass_init = _unroll_vector_reduction(sch, first_pass, depth)
    for loop in unrolled:
        sch.unroll(loop)
    sch.vectorize(lanes)
    return first_pass_init


def _parallel(sch, vector: CpuVector, work: int, loops) -> None:
    """Fuse the outer `loops`, and run them in parallel when `work` iterations pay for it."""
    outer = sch.fuse(*loops)
    if parallel_pays(vector, work, int(sch.get(outer).extent)):
        sch.parallel(outer)


def _unroll_vector_reduction(sch, block, first: int) -> None:
    """For a block computed at a tile: its loops from `first` on are (spatial..., channel lanes,
    reduction); put the reduction before the lanes, unroll everything but the lanes, vectorize them.
    Returns the outermost of these loops."""
    loops = sch.get_loops(block)[first:]
    *spatial, lanes, reduction = loops
    sch.reorder(*spatial, reduction, lanes)
    for loop in (*spatial, reduction):
        sch.unroll(loop)
    sch.vectorize(lanes)
    return spatial[0]
