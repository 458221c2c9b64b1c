"""Make MetaSchedule's worker processes cheap to start: what dominated tuning time on 2 cores.

Measured cause (py-spy, cProfile): MetaSchedule's LocalBuilder starts fresh worker processes
for every batch of candidates, and each worker's first build imports `tvm.s_tir.tensor_intrin`,
which parses a few hundred TVMScript functions. Each parse calls `inspect.stack()`, and for
frames of frozen modules ("<frozen importlib._bootstrap>", "<frozen runpy>"), of TVMScript's
evaluated expressions ("<ast>") and of functions TVM's process pool rebuilds ("<dynamic-code>")
`inspect.getmodule` finds nothing in its cache, scans all of `sys.modules` (1-2 thousand
modules) and finds nothing again, every time: ~24 million attribute probes, 50-100 s of CPU per
worker per batch (the parent pays it once too, when the first TuneContext is made). Recording
that answer (no module) for those pseudo-files in `inspect`'s own cache removes the scans
without changing what `inspect` returns.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import tempfile

# pseudo-files with no module on disk: frozen stdlib modules are found by their own names below;
# these are TVMScript's evaluated expressions and the functions TVM's pool rebuilds in a worker
_PSEUDO_FILES = ("<ast>", "<dynamic-code>")
# never a key of sys.modules: inspect.getmodule answers None for files mapped to it, as its scan would
_NO_MODULE = "<no module>"


def index_pseudo_source_files() -> None:
    """Pre-fill `inspect`'s file -> module cache for pseudo-files ("<frozen runpy>", "<ast>"...).

    A frame or code object from such a file belongs to no module file that `inspect.getmodule`
    can find, so it scans all of `sys.modules` on every call and answers None; after this it
    answers None at once.
    """
    frozen = (_frozen_code_filename(module) for module in list(sys.modules.values()))
    for filename in [*filter(None, frozen), *_PSEUDO_FILES]:
        inspect.modulesbyfile.setdefault(filename, _NO_MODULE)


def _frozen_code_filename(module) -> str | None:
    """The co_filename ("<frozen NAME>") that the functions of a frozen stdlib module carry."""
    if getattr(getattr(module, "__spec__", None), "origin", None) != "frozen":
        return None
    namespace = vars(module)
    for value in list(namespace.values()):
        code = getattr(value, "__code__", None)
        if code is not None and getattr(value, "__globals__", None) is namespace:  # defined here, not imported
            return code.co_filename
    return None


def pooled_builder(max_workers: int, timeout_sec: float, max_uses: int = 64, *, shared_library: bool = False,
                   cross_compiler: str | None = None):
    """A MetaSchedule builder whose worker processes live across batches (LocalBuilder's do not).

    Candidates are exported as MetaSchedule's object archive for local runs; with
    `shared_library` (measurement on RPC devices) as a .so linked here, by `cross_compiler`
    for another CPU, so the device needs no compiler.

    LocalBuilder starts a new process pool for every batch, so each batch pays the workers'
    `import tvm` and TVMScript intrinsic parsing again (10-40 s on 2 busy cores). This pool
    keeps its workers and retires each after `max_uses` builds, which bounds the memory leak
    that made TVM restart them. Call `.shutdown()` when tuning ends.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec,
                                          initializer=start_worker, maximum_process_uses=max_uses)
            for _ in range(max_workers):  # workers start up while the parent searches its first candidates
                self.pool.submit(warm_up_worker)

        def build(self, build_inputs):
            results = []
            jobs = [(item.mod, item.target, shared_library, cross_compiler)
                    for item in build_inputs if _no_params(item)]
            for outcome in self.pool.map_with_error_catching(lambda job: build_candidate(*job), jobs):
                if outcome.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(outcome.value, None))
                elif outcome.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"slimcc builder: timeout, killed after {timeout_sec:.0f} s"))
                else:
                    results.append(BuilderResult(None, f"slimcc builder: {outcome.value}"))
            return results

        def shutdown(self):
            self.pool.shutdown()

    return PooledBuilder()


def _no_params(build_input) -> bool:
    """Tasks extracted from Relax carry no bound parameters; anything else is not for this builder."""
    if build_input.params:
        raise ValueError("the pooled builder does not take bound parameters")
    return True


def start_worker() -> None:
    """A builder worker's initializer: cheap `inspect` lookups, and slimcc's tensor intrinsics
    registered (a worker that replays or checks a trace with a tensorized block needs them)."""
    index_pseudo_source_files()
    from slimcc.targets.schedules.vnni import vnni_intrin

    vnni_intrin()


def warm_up_worker() -> None:
    """In a worker: import what its first build needs (TVM's tensor intrinsics), ahead of time."""
    import tvm.s_tir.tensor_intrin  # noqa: F401


def build_candidate(mod, target, shared_library: bool = False, cross_compiler: str | None = None) -> str:
    """In a worker: build one scheduled candidate with MetaSchedule's own build function and
    export it (an object archive, or a shared library for RPC devices); returns the file path."""
    import tvm

    built = tvm.get_global_func("s_tir.meta_schedule.builder.default_build")(mod, target, None)
    if not shared_library:
        return tvm.get_global_func("s_tir.meta_schedule.builder.default_export")(built)
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="slimcc-candidate-"), "candidate.so")
    built.export_library(path, fcompile=cc.cross_compiler(cross_compiler) if cross_compiler else None)
    return path


@contextlib.contextmanager
def torchless_workers():
    """Keep MetaSchedule's builder/runner worker processes from importing PyTorch.

    Each worker imports tvm, and apache-tvm-ffi imports torch when installed, which costs
    seconds to tens of seconds per worker on a busy machine. The workers never use torch,
    so a shadow package that raises ImportError is put first on their PYTHONPATH.
    """
    old = os.environ.get("PYTHONPATH")
    with tempfile.TemporaryDirectory(prefix="slimcc-notorch-") as shadow:
        os.makedirs(os.path.join(shadow, "torch"))
        with open(os.path.join(shadow, "torch", "__init__.py"), "w") as handle:
            handle.write('raise ImportError("torch is hidden from TVM tuning workers by slimcc")\n')
        os.environ["PYTHONPATH"] = shadow + (os.pathsep + old if old else "")
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old
