"""Numerical equivalence on onnxruntime: run two models on the same feeds and compare outputs.

Graph optimizations are disabled so onnxruntime's own fusions cannot hide a bad rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math
import statistics
import time

import numpy as np
import onnx

from slimcc.errors import SlimccError, VerificationError
from slimcc.ir.model import Model, first_line

ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def make_session(model: Model | onnx.ModelProto, *, optimize: bool = False, threads: int = 1,
                 external: dict[str, np.ndarray] | None = None):
    """An onnxruntime CPU InferenceSession; errors are re-raised as one-line SlimccErrors.

    A Model's weights are handed over as arrays (`add_external_initializers`), not serialized:
    onnxruntime reads them in place. A ModelProto with export stubs comes with their arrays in
    `external` (see `Model.to_proto`).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures are raised as one-line errors below
    if not optimize:  # reference runs: no pre-packed second copy of the weights (equal work, half the memory)
        options.add_session_config_entry("session.disable_prepacking", "1")
    external = dict(external or {})
    try:
        if isinstance(model, Model):
            proto = model.to_proto(external=external)
        else:
            proto = model
        if external:
            options.add_external_initializers(list(external),
                                              [ort.OrtValue.ortvalue_from_numpy(a) for a in external.values()])
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except SlimccError:
        raise
    except Exception as exc:
        raise SlimccError(f"onnxruntime cannot load the model: {first_line(exc)} "
                          "(check the opset and that input shapes are consistent)") from None


def run_onnxruntime(model, feeds: dict[str, np.ndarray], *, optimize: bool = False, threads: int = 1,
                    session=None) -> dict[str, np.ndarray]:
    """Run a model on onnxruntime and return {output name: array}."""
    session = session or make_session(model, optimize=optimize, threads=threads)
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, feeds)
    except Exception as exc:
        raise SlimccError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
    return dict(zip(names, values))


def random_feeds(model: Model | onnx.ModelProto, *, seed: int = 0, batch: int = 1,
                 session=None) -> dict[str, np.ndarray]:
    """Random inputs for every graph input: floats in N(0,1), integers in [0, 10). Dynamic dims -> `batch`."""
    session = session or make_session(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in info.shape]
        dtype = ORT_DTYPES.get(info.type)
        if dtype is None:
            raise SlimccError(f"input {info.name!r} has unsupported type {info.type}")
        if np.issubdtype(dtype, np.floating):
            feeds[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[info.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[info.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


@dataclass
class OutputError:
    """Error of one output: max |a-b|, that divided by max |a| (the output's scale)."""

    name: str
    max_abs: float
    max_rel: float
    scale: float


@dataclass
class VerifyReport:
    """Per-output errors of model B against model A."""

    outputs: list[OutputError] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def as_dict(self) -> dict:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel,
                "outputs": {o.name: {"max_abs": o.max_abs, "max_rel": o.max_rel, "scale": o.scale}
                            for o in self.outputs}}


def compare_outputs(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> VerifyReport:
    """Compare two output dicts positionally (names may differ after a rewrite)."""
    report = VerifyReport()
    exp_items, act_values = list(expected.items()), list(actual.values())
    if len(exp_items) != len(act_values):
        raise VerificationError(f"models have {len(exp_items)} vs {len(act_values)} outputs")
    for (name, a), b in zip(exp_items, act_values):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):  # sequence outputs: element-wise
            diff = max_abs_difference(a, b)
            report.outputs.append(OutputError(name, diff, diff, 1.0))
            continue
        if a.shape != b.shape:
            raise VerificationError(f"output {name!r} has shape {list(a.shape)} vs {list(b.shape)}")
        if a.size == 0:
            report.outputs.append(OutputError(name, 0.0, 0.0, 0.0))
            continue
        diff = max_abs_difference(a, b)
        scale = float(np.max(np.abs(a.astype(np.float64)))) if is_numeric(a) else 1.0
        report.outputs.append(OutputError(name, diff, diff / max(scale, 1e-12), scale))
    return report


def is_numeric(array: np.ndarray) -> bool:
    """True for numbers and booleans (compared by value); strings and objects are compared for equality."""
    return array.dtype.kind in "biufc"


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| of two outputs; strings, shapes and sequence lengths count as 0 when equal, inf when not."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))) or len(a) != len(b):
            return math.inf
        return max((max_abs_difference(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)), default=0.0)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    if not (is_numeric(a) and is_numeric(b)):
        return 0.0 if np.array_equal(a, b) else math.inf
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def compare_models(reference, candidate, feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]] | None = None,
                   *, seed: int = 0) -> VerifyReport:
    """Run both models on the same feeds (random if None; a list = several batches, worst case kept)."""
    batches = feeds if isinstance(feeds, list) else [feeds if feeds is not None else random_feeds(reference, seed=seed)]
    return worst_of(run_batches(reference, batches), run_batches(candidate, batches))


def run_batches(model, batches: list[dict[str, np.ndarray]], *, session=None) -> list[dict[str, np.ndarray]]:
    """The outputs of `model` on every batch, from one onnxruntime session."""
    session = session or make_session(model)
    return [run_onnxruntime(model, batch, session=session) for batch in batches]


def worst_of(expected: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]]) -> VerifyReport:
    """compare_outputs batch by batch; per output, the batch with the largest relative error is kept."""
    worst = VerifyReport()
    for a, b in zip(expected, actual):
        report = compare_outputs(a, b)
        if not worst.outputs:
            worst = report
        else:
            for i, out in enumerate(report.outputs):
                if out.max_rel > worst.outputs[i].max_rel:
                    worst.outputs[i] = out
    return worst


def assert_equivalent(reference, candidate, feeds=None, *, rel_tol: float = 1e-4, seed: int = 0) -> VerifyReport:
    """compare_models, raising VerificationError when any output's relative error exceeds rel_tol."""
    report = compare_models(reference, candidate, feeds, seed=seed)
    for out in report.outputs:
        if out.max_rel > rel_tol:
            raise VerificationError(f"output {out.name!r} differs: max abs {out.max_abs:.3g}, "
                                    f"relative {out.max_rel:.3g} > {rel_tol:g}")
    return report


def interleaved_latency(models, feeds: dict[str, np.ndarray], repeats: int, warmup: int = 3) -> list[float]:
    """Median seconds per run of each model on single-thread optimized onnxruntime.

    Runs are interleaved (model A, model B, A, B, ...) so that load from elsewhere on the
    machine hits every model alike and their ratio stays fair.
    """
    sessions = [make_session(m, optimize=True, threads=1) for m in models]
    times: list[list[float]] = [[] for _ in sessions]
    for i in range(warmup + repeats):
        for k, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feeds)
            if i >= warmup:
                times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
