"""Scaling benchmark (issue 20): slimcc's own overhead and memory on a large model, and time per node
on models of growing depth.

Large model: VGG-19 at 224x224 with random weights (575 MB, built locally by the zoo, written under
--workdir, never into the repository). In the same run, each step in a fresh child process (its
peak RSS is the child's max RSS):

- `onnx.load` + `onnx.save` vs `slimcc` load_model + save_model;
- load + save + one onnxruntime session (created and run once) vs
  `slimcc optimize MODEL -p canonicalize -o OUT` (verification on).

Deep models: zoo `build_deep_resnet` residual chains of growing depth; per depth and step (load,
save, canonicalize, prune-channels{macs=0.6}, decompose-tucker{speedup=2}, qdq-insert with 4 random
calibration batches, optionally an untuned x86 TVM compile), the step's wall time inside its child
(after a warm-up load and save of a small model, so once-per-process costs are not counted per node,
and after loading; the fastest of --repeat runs, since the machine may be shared) and the child's
peak RSS; ms per node should stay flat.

    python bench/scale.py [--out bench/out/scale.json] [--workdir /tmp/slimcc-scale]
                          [--depths 16,64,256,1024] [--compile-depths 16,64,256,1024]
    python bench/scale_plot.py  # docs/img/scale.png from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import quant as quant_bench  # bench/quant.py, beside this file: cpu_model / cpu_flags

from slimcc.ir.atomic import save_json_atomic

DEEP_STEPS = ("load", "save", "canonicalize", "prune-channels{macs=0.6}", "decompose-tucker{speedup=2}",
              "qdq-insert")
CALIB_BATCHES = 4


# ---------------------------------------------------------------- child side: one step, one process

def _child(step: str, model: str, out: str) -> dict:
    """Run one measured step here and return its timings (the parent adds this process's max RSS)."""
    if step == "make-vgg19":  # built here, so that the parent stays small (a child's max RSS counts from fork)
        from slimcc.ir.model import save_model
        from slimcc.models.zoo import build_vgg19

        save_model(build_vgg19(seed=0), out, check=False)
        return {}
    if step == "make-deep":
        from slimcc.ir.model import load_model, save_model
        from slimcc.models.zoo import build_deep_resnet

        save_model(load_model(build_deep_resnet(blocks=int(model), seed=0)), out)
        return {}
    if step == "onnx-load-save":
        from slimcc.ir.model import read_onnx, write_onnx

        start = time.perf_counter()
        proto = read_onnx(model)
        loaded = time.perf_counter()
        write_onnx(proto, out)
        return {"load_s": loaded - start, "save_s": time.perf_counter() - loaded}
    if step == "onnx-load-save-session":
        import numpy as np
        import onnxruntime as ort

        from slimcc.ir.model import read_onnx, write_onnx

        start = time.perf_counter()
        write_onnx(read_onnx(model), out)
        saved = time.perf_counter()
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        created = time.perf_counter()
        feeds = {i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
                 .astype(np.float32) for i in session.get_inputs()}
        session.run(None, feeds)
        return {"load_save_s": saved - start, "session_s": created - saved, "run_s": time.perf_counter() - created}
    from slimcc.ir.model import load_model, save_model

    if step != "slimcc-load-save":  # deep rows: process start-up (imports, sandbox child) is not per node
        from slimcc.models.zoo import build

        # a load's checker runs in the sandbox child; saving warms this process's own once-only costs
        # (onnx builds its op-schema registry on the first checker call, about 10 ms), paid by the
        # first save or verified pass in any process, not per call
        warm = Path(out).with_name(f".warm-{os.getpid()}.onnx")
        save_model(load_model(build("conv-gemm"), isolate=True), warm)
        warm.unlink()
    start = time.perf_counter()
    loaded = load_model(model)
    load_s = time.perf_counter() - start
    result = {"load_s": load_s, "nodes": len(loaded.graph.nodes)}
    if step in ("slimcc-load-save", "save"):
        start = time.perf_counter()
        save_model(loaded, out)
        result["save_s"] = time.perf_counter() - start
        return result
    if step == "load":
        return result
    from slimcc.passes.base import PassContext
    from slimcc.passes.manager import PassManager
    from slimcc.passes.pipeline import parse_pipeline

    if step != "canonicalize":
        PassManager(parse_pipeline("canonicalize")).run(loaded, PassContext(progress=False))
    if step == "compile":
        # bench/tvm.py would shadow the tvm package: leave this script's folder (sys.path[0]), and the
        # working directory too, since the TVM build child runs `python -m` from it
        here = Path(__file__).resolve().parent
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
        out = str(Path(out).resolve())
        os.chdir(Path(out).parent)
        from slimcc.api import compile as compile_model

        start = time.perf_counter()
        compile_model(loaded, "x86", output_dir=out)
        result["step_s"] = time.perf_counter() - start
        return result
    passes = parse_pipeline(step)
    calib = _random_calibration(loaded) if any(p.needs_calibration for p in passes) else None
    start = time.perf_counter()
    report = PassManager(passes).run(loaded, PassContext(calibration=calib, progress=False))
    result["step_s"] = time.perf_counter() - start
    result["modified"] = report.modified
    return result


def _random_calibration(model):
    import numpy as np

    from slimcc.ir.calibration import CalibrationData

    rng = np.random.default_rng(0)
    shapes = {t.name: [d if isinstance(d, int) else 1 for d in t.shape] for t in model.graph.inputs}
    return CalibrationData([{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
                            for _ in range(CALIB_BATCHES)])


# ---------------------------------------------------------------- parent side

class Runner:
    """Starts children one at a time and measures each one's peak RSS (wait4)."""

    def step(self, step: str, model: Path, out: Path) -> dict:
        argv = [sys.executable, __file__, "--child", step, str(model), str(out)]
        result, wall, rss = self._run(argv)
        return dict(result, wall_s=round(wall, 3), peak_rss_mb=round(rss, 1))

    def cli(self, args: list[str]) -> dict:
        result, wall, rss = self._run([sys.executable, "-m", "slimcc.cli", *args])
        return dict(result, wall_s=round(wall, 3), peak_rss_mb=round(rss, 1))

    @staticmethod
    def _run(argv: list[str]) -> tuple[dict, float, float]:
        start = time.perf_counter()
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        out = proc.stdout.read()
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"step failed ({code}): {' '.join(argv)}\n{err.decode()[-2000:]}")
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {}
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, wall, usage.ru_maxrss / 1024


def _own_rss_mb() -> float:
    """This process's resident memory now, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def large_model(runner: Runner, path: Path, workdir: Path) -> dict:
    """The VGG-19 rows: slimcc vs onnx in the same run, each step in its own process."""
    size_mb = path.stat().st_size / 2**20
    onnx_io = runner.step("onnx-load-save", path, workdir / "onnx.onnx")
    slim_io = runner.step("slimcc-load-save", path, workdir / "slimcc.onnx")
    reference = runner.step("onnx-load-save-session", path, workdir / "onnx2.onnx")
    optimize = runner.cli(["optimize", str(path), "-p", "canonicalize", "-o", str(workdir / "canonical.onnx")])
    onnx_s = onnx_io["load_s"] + onnx_io["save_s"]
    slim_s = slim_io["load_s"] + slim_io["save_s"]
    reference_s = reference["load_save_s"] + reference["session_s"] + reference["run_s"]
    peak = max(slim_io["peak_rss_mb"], optimize["peak_rss_mb"])
    return {
        "model": "vgg19 (zoo build_vgg19, random weights, 224x224)", "file_mb": round(size_mb, 1),
        "nodes": slim_io["nodes"],
        "onnx_load_save": onnx_io, "slimcc_load_save": slim_io,
        "onnx_load_save_one_session": reference, "slimcc_optimize_canonicalize": optimize,
        "ratios": {
            "slimcc_load_save_over_onnx": round(slim_s / onnx_s, 2),
            "optimize_canonicalize_over_load_save_session": round(optimize["wall_s"] / reference_s, 2),
            "optimize_wall_over_reference_wall": round(optimize["wall_s"] / reference["wall_s"], 2),
            "peak_rss_over_model_size": round(peak / size_mb, 2),
        },
    }


def deep_models(runner: Runner, depths: list[int], compile_depths: list[int], workdir: Path,
                repeat: int = 1) -> list[dict]:
    """Per depth and step: seconds (the fastest of `repeat` runs; compile runs once), ms per node and
    peak RSS (the largest of the runs)."""
    rows = []
    for blocks in depths:
        path = workdir / f"deep-{blocks}.onnx"
        runner.step("make-deep", Path(str(blocks)), path)
        steps = list(DEEP_STEPS) + (["compile"] if blocks in compile_depths else [])
        row = {"blocks": blocks, "file_mb": round(path.stat().st_size / 2**20, 2), "steps": {}}
        for step in steps:
            out = workdir / (f"deep-{blocks}-compiled" if step == "compile" else f"deep-{blocks}-out.onnx")
            runs = [runner.step(step, path, out) for _ in range(1 if step == "compile" else repeat)]
            row["nodes"] = runs[0]["nodes"]
            times = [r.get("step_s", r.get("save_s", r["load_s"])) for r in runs]
            seconds, rss = min(times), max(r["peak_rss_mb"] for r in runs)
            row["steps"][step] = {"seconds": round(seconds, 3),
                                  "ms_per_node": round(1e3 * seconds / row["nodes"], 3),
                                  "peak_rss_mb": rss, "runs_seconds": [round(t, 3) for t in times]}
            print(f"deep {blocks:5d} blocks {step:30s} {seconds:8.2f} s  "
                  f"{1e3 * seconds / row['nodes']:.3f} ms/node  {rss:.0f} MB", flush=True)
        rows.append(row)
    return rows


def flatness(rows: list[dict]) -> dict:
    """Per step: largest over smallest ms/node across depths (issue 20 asks for <= 2), and deepest over
    shallowest (above 1: cost per node grows with depth; below 1: fixed costs spread over more nodes).
    Beside them, the marginal ms per added node between consecutive depths (fixed costs cancel out)
    and its largest over smallest: a second view of linearity, not a replacement for the first."""
    steps = {s for row in rows for s in row["steps"]}
    out = {}
    for step in sorted(steps):
        points = [(row["nodes"], row["steps"][step]) for row in rows if step in row["steps"]]
        values = [p["ms_per_node"] for _, p in points]
        if len(values) > 1 and min(values) > 0:
            out[step] = {"max_over_min": round(max(values) / min(values), 2),
                         "deepest_over_shallowest": round(values[-1] / values[0], 2)}
            marginal = [1e3 * (b["seconds"] - a["seconds"]) / (nb - na)
                        for (na, a), (nb, b) in zip(points, points[1:])]
            out[step]["marginal_ms_per_node"] = [round(m, 3) for m in marginal]
            if len(marginal) > 1 and min(marginal) > 0:
                out[step]["marginal_max_over_min"] = round(max(marginal) / min(marginal), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/out/scale.json")
    parser.add_argument("--workdir", default="/tmp/slimcc-scale")
    parser.add_argument("--depths", default="16,64,256,1024")
    parser.add_argument("--compile-depths", default="", help="depths also compiled with TVM (slow)")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per deep step except compile; the fastest counts (default 3)")
    parser.add_argument("--child", nargs=3, metavar=("STEP", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner()
    report = {"benchmark": "scale", "cpu_model": quant_bench.cpu_model(), "cpu_flags": quant_bench.cpu_flags(),
              "cpus": os.cpu_count(), "parent_rss_mb": _own_rss_mb(),
              "load_average_start": [round(v, 2) for v in os.getloadavg()],
              "note": "each step in a fresh child process, one at a time; peak_rss_mb is that child's max RSS, "
                      "which counts from fork (parent_rss_mb is an upper bound of what it inherits); "
                      "the machine may be shared (load_average_start/end: 1, 5, 15 min): timings are one "
                      "run each; the sub-second steps of the shallow chains are the most noise-sensitive"}
    if not args.skip_large:
        vgg = workdir / "vgg19.onnx"
        if not vgg.exists():
            runner.step("make-vgg19", vgg, vgg)
        report["large"] = large_model(runner, vgg, workdir)
        print(json.dumps(report["large"]["ratios"]), flush=True)
        save_json_atomic(args.out, report)
    depths = [int(d) for d in args.depths.split(",") if d]
    compile_depths = [int(d) for d in args.compile_depths.split(",") if d]
    report["deep_repeat"] = args.repeat
    report["deep"] = deep_models(runner, depths, compile_depths, workdir, args.repeat)
    report["deep_ms_per_node_flatness"] = flatness(report["deep"])
    report["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    save_json_atomic(args.out, report)
    print(json.dumps(report["deep_ms_per_node_flatness"]))


if __name__ == "__main__":
    main()
