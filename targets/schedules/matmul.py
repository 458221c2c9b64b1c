"""Register-blocked GEMM for slimcc's packed matmul (`pack_matmul`) on CPUs.

    parallel for g, no:                       no = blocks of fb x fi output columns
      for ro:                                 rb rows per tile
        acc[rb, fb * fi] = 0                  rb x fb vector accumulators
        for k:
          for rb (unrolled), fb (unrolled), fi (vectorized):
            acc[r, n] += broadcast(x[g, r, k]) * Wp[g, n // fi, k, n % fi]
        epilogue (bias, activation) on the tile
"""

from __future__ import annotations

from slimcc.targets.schedules.epilogue import find_block, finish_tile, inline_epilogue
from slimcc.targets.schedules.isa import CpuVector, largest_divisor, split_tile
from slimcc.targets.schedules.pack_matmul import MATMUL_BLOCK

MAX_COLUMN_VECTORS = 4  # fb: weight vectors per tile, each reused by rb broadcast rows


def schedule_matmul(sch, vector: CpuVector) -> bool:
    """Schedule the `slimcc_matmul` kernel in `sch`; False when the function has none."""
    gemm = find_block(sch, MATMUL_BLOCK)
    if gemm is None:
        return False
    block = sch.get(gemm)
    fi = int(block.reads[-1].source.shape[-1])
    _, rows, columns = [int(d) for d in block.writes[0].source.shape]
    fb = largest_divisor(columns // fi, MAX_COLUMN_VECTORS)
    rb = largest_divisor(rows, max(1, vector.accumulators // fb))

    tail = inline_epilogue(sch, gemm)
    g, r, n, k = sch.get_loops(gemm)
    blocks, fil = sch.split(n, [None, fi])
    no, fbl = split_tile(sch, blocks, fb, vector)
    ro, rbl = split_tile(sch, r, rb, vector)
    sch.reorder(g, no, ro, k, rbl, fbl, fil)
    cache = sch.cache_write(gemm, 0, "local")
    finish_tile(sch, gemm, cache, tail, ro, fil, [rbl, fbl], [g, no], k, vector)
    return True
