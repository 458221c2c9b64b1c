"""Relax -> shared library: the compile pipeline per target, tuning-database application, export.

`build_library` runs in the current process. `build_isolated` runs the same work in a child
Python process so that a crash inside TVM (a segfault in codegen, an abort in LLVM) is
reported as a SlimccError instead of killing the caller.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from slimcc.errors import SlimccError
from slimcc.ir.model import Model, first_line, load_model, save_model
from slimcc.targets.schedules.apply import apply_cpu_schedules
from slimcc.targets.schedules.byte_lookup import VECTOR_LOOKUP_ATTR
from slimcc.targets.schedules.byte_transpose import BYTE_TRANSPOSE_ATTR
from slimcc.targets.schedules.isa import cpu_vector_for
from slimcc.targets.target import TargetSpec, check_toolchain
from slimcc.targets.tvm_import import ensure_tvm

LIBRARY_NAME = "model.so"


def compile_pipeline(target, database_dir: str | None = None, facts: dict | None = None):
    """TVM's default Relax pipeline for `target`, with a MetaSchedule database applied after fusion.

    Tuned kernels replace the untuned ones before the default schedules run (slimcc's CPU
    schedules, or dlight on GPUs), so those only schedule what the database does not cover. `facts["tuned_kernels"]` receives how many
    fused kernels the database covered.
    """
    tvm = ensure_tvm()
    from tvm import relax

    rp = backend_pipeline(target)
    fuse, schedule = fusion_passes(target), list(rp.legalize_passes(target))[5:]
    lower = (list(rp.dataflow_lower_passes(target)) + list(rp.finalize_passes(target)))
    facts = facts if facts is not None else {}
    vector = cpu_vector_for(target)

    @tvm.transform.module_pass(opt_level=0, name="SlimccCompilePipeline")
    def _pipeline(mod, _ctx):
        with target:
            mod = tvm.transform.Sequential(list(rp.library_dispatch_passes(target)) + fuse)(mod)
            if database_dir is not None:
                mod = relax.transform.MetaScheduleApplyDatabase(str(database_dir))(mod)
            facts["tuned_kernels"] = count_scheduled_functions(mod)
            facts["kernels"] = count_functions(mod)
            if vector is not None:
                mod = apply_cpu_schedules(mod, vector, facts)
            return tvm.transform.Sequential(schedule + lower)(mod)

    return _pipeline


def fusion_passes(target) -> list:
    """LegalizeOps .. FuseTIR of TVM's pipeline for `target` (compile and tuning fuse alike), with int8
    table lookups marked element-wise after TVM's op-pattern analysis (targets/int8_tables.py)."""
    from slimcc.targets.int8_tables import mark_lookups_elementwise

    # both lists start with LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR;
    # CUDA then adds dlight's ApplyDefaultSchedule
    legalize = list(backend_pipeline(target).legalize_passes(target))[:5]
    return legalize[:2] + [mark_lookups_elementwise()] + legalize[2:]


def backend_pipeline(target):
    """TVM's per-backend pipeline module (tvm.relax.pipeline's dispatchers miss some CPU functions in 0.27)."""
    if target.kind.name == "cuda":
        ensure_tvm()
        from tvm.relax.backend.cuda import pipeline
    elif target.kind.name == "llvm":
        ensure_tvm()
        from tvm.relax.backend.cpu_generic import pipeline
    else:
        raise SlimccError(f"slimcc has no compile pipeline for TVM target kind {target.kind.name!r}")
    return pipeline


def count_functions(mod) -> int:
    """How many TIR functions (kernels) a module holds."""
    tvm = ensure_tvm()

    return sum(1 for _, func in mod.functions.items() if isinstance(func, tvm.tirx.PrimFunc))


def count_scheduled_functions(mod) -> int:
    """How many TIR functions already carry a schedule (e.g. applied from a tuning database), not
    counting the kernels slimcc writes as explicit vector code (the VBMI lookups, the byte transposes)."""
    tvm = ensure_tvm()

    return sum(1 for _, func in mod.functions.items()
               if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
               and bool(func.attrs.get("tirx.is_scheduled", False)) and VECTOR_LOOKUP_ATTR not in func.attrs
               and BYTE_TRANSPOSE_ATTR not in func.attrs)


def build_library(model: Model, spec: TargetSpec, so_path: Path, *, database_dir: str | None = None) -> dict:
    """Import, compile and export `model` for `spec` into `so_path`; returns build facts for the manifest."""
    tvm = ensure_tvm()
    from tvm.support import cc

    from slimcc.targets.relax_import import prepare_for_build, to_relax

    check_toolchain(spec)
    target = spec.to_tvm()
    facts: dict = {}
    mod = prepare_for_build(to_relax(model), target, facts, int8_mode=spec.notes.get("int8_mode"))
    try:
        executable = tvm.compile(mod, target=target, relax_pipeline=compile_pipeline(target, database_dir, facts))
    except Exception as exc:
        raise SlimccError(f"TVM failed to compile for {spec.name}: {first_line(exc)}") from None
    fcompile = cc.cross_compiler(spec.cross_compiler) if spec.cross_compiler else None
    try:
        executable.export_library(str(so_path), fcompile=fcompile)
    except Exception as exc:
        raise SlimccError(f"exporting the {spec.name} library failed: {first_line(exc)}") from None
    return {"tvm_version": tvm.__version__, **facts}


def build_isolated(model: Model, spec: TargetSpec, so_path: Path, *, database_dir: str | None = None,
                   timeout: float | None = None) -> dict:
    """`build_library` in a child process; a crash or timeout becomes a SlimccError naming the cause."""
    with tempfile.TemporaryDirectory(prefix="slimcc-build-") as tmp:
        tmp_path = Path(tmp)
        save_model(model, tmp_path / "model.onnx", check=False)
        request = {"model": str(tmp_path / "model.onnx"), "target": spec.as_dict(), "so_path": str(so_path),
                   "database_dir": database_dir, "result": str(tmp_path / "result.json")}
        (tmp_path / "request.json").write_text(json.dumps(request))
        try:
            proc = subprocess.run([sys.executable, "-m", "slimcc.targets.build", str(tmp_path / "request.json")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SlimccError(f"compiling for {spec.name} did not finish within {timeout:.0f} s") from None
        result_file = tmp_path / "result.json"
        if result_file.exists():
            result = json.loads(result_file.read_text())
            if result.get("ok"):
                return result["info"]
            raise SlimccError(result["error"])
        raise SlimccError(describe_child_death(proc.returncode, proc.stderr, spec.name))


def describe_child_death(returncode: int, stderr: str, target_name: str) -> str:
    """One line saying how the compiler process died, with the last line it printed."""
    if returncode < 0:
        try:
            cause = signal.Signals(-returncode).name
        except ValueError:
            cause = f"signal {-returncode}"
        what = f"TVM crashed ({cause}) while compiling for {target_name}"
    else:
        what = f"the TVM compiler process exited with status {returncode} while compiling for {target_name}"
    last = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    tail = f"; last message: {last[-1][:300]}" if last else ""
    return f"{what}{tail} (rerun with SLIMCC_DEBUG=1 to compile in-process and see the traceback)"


def _child_main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    result_path = Path(request["result"])
    try:
        model = load_model(request["model"], isolate=False)  # our own file, written just now
        info = build_library(model, TargetSpec.from_dict(request["target"]), Path(request["so_path"]),
                             database_dir=request.get("database_dir"))
        result = {"ok": True, "info": info}
    except SlimccError as exc:
        result = {"ok": False, "error": str(exc)}
    except Exception as exc:  # an unexpected TVM/Python error: report it, never a traceback
        result = {"ok": False, "error": f"TVM build failed: {type(exc).__name__}: {first_line(exc)}"}
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    return 0 if result["ok"] else 2


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
