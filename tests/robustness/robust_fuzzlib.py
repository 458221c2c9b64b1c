"""Fuzzing engine shared by tests/robustness and bench/fuzz.py.

Every case feeds hostile input to a public entry point (load_model, a registered pass
through PassManager, `slimcc.cli.main`) and classifies what happened:

- ok:       a valid result,
- error:    a one-line SlimccError (CLI: exit 2 and one `slimcc: error:` line),
- internal: a SlimccError that only wraps a bug (PassManager's "TypeError: ..." or the
            CLI's "internal error ...") -- the user gets one line, but code needs fixing,
- escape:   any other exception type, a multi-line message, a wrong exit code, an output
            file left by a failed run, a crash of the sandbox child, or a case over 30 s.

Steps that can kill the process (onnx checker and shape inference on hostile protos,
onnxruntime sessions) run in the sandbox child process (slimcc.ir.sandbox).
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from slimcc.cli import main as cli_main
from slimcc.errors import PassError, SlimccError
from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import Model, first_line, load_model
from slimcc.ir.sandbox import isolated_onnxruntime
from slimcc.passes.base import PassContext, options_of, registry
from slimcc.passes.manager import PassManager
from slimcc.passes.pipeline import parse_pipeline

HANG_S = 30.0
CRASH_WORDS = ("crashed (signal", "did not finish within", "exited with status")


@dataclass
class FuzzRun:
    """Counters and findings of a fuzzing session."""

    counts: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    escapes: list[str] = field(default_factory=list)
    internal: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def case(self, category: str, label: str, function) -> object:
        """Run one case; classify its outcome. Returns the function's result (or None)."""
        self.counts[category] += 1
        start = time.perf_counter()
        result = None
        try:
            result = function()
            self.outcomes["ok"] += 1
        except PassError as exc:
            self._slimcc_error(category, label, exc)
            cause = exc.__cause__
            if cause is not None and not isinstance(cause, SlimccError):
                self.outcomes["internal"] += 1
                self.internal.append(f"{category} {label}: {exc} [{_where(cause)}]")
        except SlimccError as exc:
            self._slimcc_error(category, label, exc)
        except CaseFailure as exc:
            self.outcomes["escape"] += 1
            self.escapes.append(f"{category} {label}: {exc}")
        except Exception as exc:  # the very thing the fuzzer hunts
            self.outcomes["escape"] += 1
            self.escapes.append(f"{category} {label}: {type(exc).__name__} escaped: {first_line(exc)} "
                                f"[{_where(exc)}]")
        seconds = time.perf_counter() - start
        if seconds > self.slowest[0]:
            self.slowest = (seconds, f"{category} {label}")
        if seconds > HANG_S:
            self.escapes.append(f"{category} {label}: took {seconds:.1f} s (> {HANG_S:g} s)")
        return result

    def _slimcc_error(self, category: str, label: str, exc: SlimccError) -> None:
        message = str(exc)
        if not message.strip() or "\n" in message:
            self.outcomes["escape"] += 1
            self.escapes.append(f"{category} {label}: SlimccError message is not one line: {message[:300]!r}")
        elif any(word in message for word in CRASH_WORDS):
            self.outcomes["escape"] += 1
            self.escapes.append(f"{category} {label}: sandboxed step died: {message}")
        else:
            self.outcomes["error"] += 1

    def summary(self) -> str:
        """One paragraph: cases per category, outcomes, slowest case."""
        cats = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        outs = ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items()))
        return (f"fuzz: {self.total} cases ({cats}); outcomes: {outs}; slowest {self.slowest[0]:.2f} s "
                f"({self.slowest[1]})")


class CaseFailure(Exception):
    """A case broke a robustness rule without raising (wrong exit code, leftover output...)."""


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if "/slimcc/" in frame.filename or "/work/" in frame.filename:
            return f"{frame.filename.split('/work/main/')[-1]}:{frame.lineno} {frame.line}"
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


# ---------------------------------------------------------------- byte mutations

def weight_spans(data: bytes, proto: onnx.ModelProto) -> list[tuple[int, int]]:
    """Byte ranges of large raw weight blobs inside a serialized model (flips there change only values)."""
    spans = []
    for tensor in proto.graph.initializer:
        blob = tensor.raw_data
        if len(blob) >= 256:
            at = data.find(blob[:64])
            if at >= 0:
                spans.append((at, at + len(blob)))
    return sorted(spans)


def structural_offset(rng: random.Random, size: int, spans: list[tuple[int, int]]) -> int:
    """A random offset, outside weight blobs 9 times in 10 (so mutations reach the graph structure)."""
    for _ in range(20):
        at = rng.randrange(size)
        if rng.random() < 0.1 or not any(a <= at < b for a, b in spans):
            return at
    return rng.randrange(size)


def mutate_bytes(data: bytes, rng: random.Random, spans: list[tuple[int, int]]) -> tuple[str, bytes]:
    """One random byte-level mutation: flips, truncation, chunk deletion/duplication, varint bombs."""
    kind = rng.choice(("flip", "flip", "flip", "truncate", "delete", "duplicate", "bigvarint", "zero"))
    buf = bytearray(data)
    if kind == "flip":
        count = rng.choice((1, 1, 2, 4, 16))
        for _ in range(count):
            at = structural_offset(rng, len(buf), spans)
            buf[at] ^= 1 << rng.randrange(8)
        return f"flip{count}", bytes(buf)
    if kind == "truncate":
        cut = rng.choice((rng.randrange(len(buf)), rng.randrange(min(len(buf), 4096)), len(buf) - rng.randrange(1, 64)))
        return f"truncate@{cut}", bytes(buf[:max(cut, 0)])
    if kind == "delete":
        at = structural_offset(rng, len(buf), spans)
        n = rng.randrange(1, 64)
        return f"delete@{at}+{n}", bytes(buf[:at] + buf[at + n:])
    if kind == "duplicate":
        at = structural_offset(rng, len(buf), spans)
        n = rng.randrange(1, 256)
        return f"dup@{at}+{n}", bytes(buf[:at + n] + buf[at:at + n] + buf[at + n:])
    if kind == "bigvarint":
        at = structural_offset(rng, len(buf), spans)
        bomb = b"\xff" * rng.randrange(1, 10) + b"\x7f"
        return f"varint@{at}", bytes(buf[:at] + bomb + buf[at + len(bomb):])
    at = structural_offset(rng, len(buf), spans)
    n = rng.randrange(1, 32)
    return f"zero@{at}+{n}", bytes(buf[:at] + bytes(n) + buf[at + n:])


# ---------------------------------------------------------------- model exercising

def calibration_for(model: Model, batches: int = 2) -> CalibrationData:
    """Random calibration batches matching the model's static inputs (dynamic dims -> 1)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(batches):
        feeds = {}
        for tensor in model.graph.inputs:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in (tensor.shape or [])]
            dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
            if dtype.kind == "f":
                feeds[tensor.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[tensor.name] = rng.integers(0, 3, shape).astype(dtype)
        out.append(feeds)
    return CalibrationData(out)


def run_pipeline(model: Model, text: str) -> Model:
    """parse_pipeline + PassManager(verify_each) on a copy of `model`; returns the result."""
    passes = parse_pipeline(text)
    work = model.copy()
    calib = calibration_for(work) if any(p.needs_calibration for p in passes) else None
    ctx = PassContext(calibration=calib, reference=model, progress=False, seed=0)
    PassManager(passes, verify_each=True).run(work, ctx)
    return work


def exercise_file(path: Path, *, pipeline: str | None = None, ort: bool = True) -> str:
    """load_model (sandboxed checker/inference), onnxruntime in the sandbox, optionally a pipeline."""
    model = load_model(path)
    if ort:
        isolated_onnxruntime(model.to_proto())
    if pipeline:
        out = run_pipeline(model, pipeline)
        if ort:
            isolated_onnxruntime(out.to_proto())
    return "loaded"


def run_cli(args: list[str], output: Path | None = None) -> int:
    """`slimcc ARGS` in-process; exit code 0 or 2 with exactly one error line, no output on failure."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["--quiet", *args])
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if code not in (0, 2):
        raise CaseFailure(f"exit code {code}; stderr {err.getvalue()[-300:]!r}")
    if code == 2:
        if len(lines) != 1 or not lines[0].startswith("slimcc: error:"):
            raise CaseFailure(f"exit 2 without exactly one error line: {err.getvalue()[-400:]!r}")
        if "internal error" in lines[0]:
            raise InternalError(lines[0])
        if output is not None and output.exists():
            raise CaseFailure(f"failed run left {output}")
        raise SlimccError(lines[0])
    if output is not None:
        if not output.exists():
            raise CaseFailure("exit 0 but no output written")
        onnx.checker.check_model(onnx.load(output))
    return code


class InternalError(SlimccError):
    """The CLI turned an unexpected exception into its one-line 'internal error' (a bug to fix)."""


# ---------------------------------------------------------------- hostile graphs

def _vi(name, elem=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def base_convnet(opset: int) -> onnx.ModelProto:
    """Conv-Relu-Add-MaxPool-Conv-GAP-Flatten-Gemm on a 1x3x8x8 input."""
    rng = np.random.default_rng(1)
    inits = [_const("w1", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             _const("b1", rng.standard_normal(4).astype(np.float32)),
             _const("c1", rng.standard_normal((1, 4, 1, 1)).astype(np.float32)),
             _const("w2", rng.standard_normal((6, 4, 1, 1)).astype(np.float32)),
             _const("wf", rng.standard_normal((5, 6)).astype(np.float32)),
             _const("bf", rng.standard_normal(5).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["t1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["t1"], ["t2"], name="relu1"),
             helper.make_node("Add", ["t2", "c1"], ["t3"], name="add1"),
             helper.make_node("MaxPool", ["t3"], ["t4"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["t4", "w2"], ["t5"], name="conv2", kernel_shape=[1, 1]),
             helper.make_node("GlobalAveragePool", ["t5"], ["t6"], name="gap"),
             helper.make_node("Flatten", ["t6"], ["t7"], name="flat"),
             helper.make_node("Gemm", ["t7", "wf", "bf"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "convnet", [_vi("x", shape=[1, 3, 8, 8])], [_vi("y", shape=[1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def base_shape_subgraph(opset: int) -> onnx.ModelProto:
    """A dynamic-batch Conv followed by Shape/Gather/Concat/Reshape and Transpose."""
    rng = np.random.default_rng(2)
    inits = [_const("w", rng.standard_normal((2, 3, 1, 1)).astype(np.float32)),
             _const("idx", np.array([0], dtype=np.int64)), _const("rest", np.array([-1], dtype=np.int64))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Shape", ["c"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "idx"], ["n"], name="gather", axis=0),
             helper.make_node("Concat", ["n", "rest"], ["ns"], name="concat", axis=0),
             helper.make_node("Reshape", ["c", "ns"], ["r"], name="reshape"),
             helper.make_node("Transpose", ["r"], ["y"], name="transpose", perm=[1, 0])]
    graph = helper.make_graph(nodes, "shapes", [_vi("x", shape=["N", 3, 4, 4])], [_vi("y", shape=["A", "B"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _branch(name: str, op: str, source: str, out: str) -> onnx.GraphProto:
    return helper.make_graph([helper.make_node(op, [source], [out], name=f"{name}_{op.lower()}")], name, [],
                             [_vi(out, shape=[1, 4])])


def base_if_loop(opset: int) -> onnx.ModelProto:
    """If (then: Relu of an outer tensor, else: a Loop that adds 1 three times) on a 1x4 input."""
    loop_body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         helper.make_node("Add", ["acc", "one"], ["acc_out"], name="body_add")],
        "body", [_vi("i", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, []), _vi("acc", shape=[1, 4])],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("acc_out", shape=[1, 4])])
    else_graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["looped"], name="loop", body=loop_body)],
        "else", [], [_vi("looped", shape=[1, 4])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="greater"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=_branch("then", "Relu", "x", "r"),
                              else_branch=else_graph)]
    inits = [_const("zero", np.array(0.0, dtype=np.float32)), _const("one", np.ones((1, 4), np.float32)),
             _const("trips", np.array(3, dtype=np.int64))]
    graph = helper.make_graph(nodes, "ifloop", [_vi("x", shape=[1, 4])], [_vi("y", shape=[1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def base_function(opset: int) -> onnx.ModelProto:
    """A local ONNX function `local.Swish(x) = x * Sigmoid(x)` called from the main graph."""
    function = helper.make_function(
        "local", "Swish", ["a"], ["b"],
        [helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["b"])],
        [helper.make_opsetid("", opset)])
    nodes = [helper.make_node("Swish", ["x"], ["t"], name="swish", domain="local"),
             helper.make_node("Relu", ["t"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "func", [_vi("x", shape=[1, 4])], [_vi("y", shape=[1, 4])])
    return helper.make_model(graph, functions=[function],
                             opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("local", 1)])


BASES = {"convnet": base_convnet, "shapes": base_shape_subgraph, "if-loop": base_if_loop, "function": base_function}

EDITS = ("dangling-input", "cycle", "duplicate-output", "duplicate-initializer", "wrong-dtype", "input-dtype",
         "missing-initializer", "huge-dim", "negative-dim", "negative-pads", "zero-dim", "zero-initializer",
         "unknown-op", "unknown-domain", "bad-attribute", "drop-output", "self-recursive-function",
         "subgraph-dangling", "deep-nesting", "ir-version", "shape-mismatch", "rename-input", "empty-graph",
         "huge-initializer-dims", "nan-weights", "string-tensor", "swap-inputs", "opset-missing")


def _pick(items, k):
    return items[k % len(items)] if len(items) else None


def _all_graphs(proto: onnx.ModelProto) -> list[onnx.GraphProto]:
    graphs, stack = [], [proto.graph]
    while stack:
        graph = stack.pop()
        graphs.append(graph)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return graphs


def apply_edit(proto: onnx.ModelProto, edit: str, k: int) -> None:
    """Break `proto` in place in the way `edit` names; `k` picks the node/tensor/value."""
    graphs = _all_graphs(proto)
    graph = _pick(graphs, k)
    nodes = list(graph.node) or list(proto.graph.node)
    node = _pick(graph.node, k) if len(graph.node) else _pick(proto.graph.node, k)
    inits = list(proto.graph.initializer)
    huge = _pick([2**31, 2**40, 2**62, 10**18], k)
    if edit == "dangling-input" and node is not None and node.input:
        node.input[k % len(node.input)] = f"ghost_{k}"
    elif edit == "cycle" and len(proto.graph.node) > 1:
        first, last = proto.graph.node[0], proto.graph.node[-1]
        if first.input:
            first.input[0] = last.output[0]
    elif edit == "duplicate-output" and len(graph.node) > 1:
        graph.node[(k + 1) % len(graph.node)].output[0] = graph.node[k % len(graph.node)].output[0]
    elif edit == "duplicate-initializer" and inits:
        proto.graph.initializer.add().CopyFrom(_pick(inits, k))
        if k % 2:
            proto.graph.initializer[-1].name = proto.graph.input[0].name
    elif edit == "wrong-dtype" and inits:
        tensor = _pick(proto.graph.initializer, k)
        tensor.data_type = _pick([TensorProto.INT64, TensorProto.UINT8, TensorProto.DOUBLE, TensorProto.BOOL,
                                  TensorProto.FLOAT16, TensorProto.STRING, 999], k)
    elif edit == "input-dtype":
        proto.graph.input[0].type.tensor_type.elem_type = _pick(
            [TensorProto.INT64, TensorProto.DOUBLE, TensorProto.UINT8, TensorProto.BOOL, 0, 77], k)
    elif edit == "missing-initializer" and inits:
        del proto.graph.initializer[k % len(inits)]
    elif edit in ("huge-dim", "negative-dim", "zero-dim", "shape-mismatch"):
        value = {"huge-dim": huge, "negative-dim": -(k % 7) - 1, "zero-dim": 0, "shape-mismatch": 7}[edit]
        target = _pick(list(proto.graph.input) + list(proto.graph.output), k)
        dims = target.type.tensor_type.shape.dim
        if len(dims):
            dims[k % len(dims)].dim_value = value
        else:
            target.type.tensor_type.shape.dim.add().dim_value = value
    elif edit == "negative-pads":
        for candidate in proto.graph.node:
            if candidate.op_type in ("Conv", "MaxPool"):
                rank = 4
                candidate.attribute.append(helper.make_attribute("pads", [-(k % 5) - 1] * rank)) \
                    if not any(a.name == "pads" for a in candidate.attribute) else None
                for attr in candidate.attribute:
                    if attr.name == "pads":
                        attr.ints[:] = [-(k % 5) - 1] * len(attr.ints)
                break
    elif edit == "zero-initializer" and inits:
        tensor = _pick(proto.graph.initializer, k)
        replacement = numpy_helper.from_array(np.zeros([0] + list(tensor.dims[1:]), np.float32), tensor.name)
        tensor.CopyFrom(replacement)
    elif edit == "unknown-op" and node is not None:
        node.op_type = _pick(["FooBar", "Conv2", "", "relu", "Loop"], k)
    elif edit == "unknown-domain" and node is not None:
        node.domain = _pick(["com.evil", "ai.onnx.ml", "com.microsoft", "local"], k)
    elif edit == "bad-attribute" and node is not None:
        attr = _pick([helper.make_attribute("kernel_shape", [0.5, 2.5]), helper.make_attribute("strides", [0, 0]),
                      helper.make_attribute("group", 0), helper.make_attribute("axis", 99),
                      helper.make_attribute("perm", [5, 5]), helper.make_attribute("dilations", [-1, -1]),
                      helper.make_attribute("keepdims", "yes")], k)
        kept = [a for a in node.attribute if a.name != attr.name]
        del node.attribute[:]
        node.attribute.extend(kept + [attr])
    elif edit == "drop-output" and len(proto.graph.output):
        del proto.graph.output[:]
    elif edit == "self-recursive-function":
        function = helper.make_function("local", "Loopy", ["a"], ["b"],
                                        [helper.make_node("Loopy", ["a"], ["b"], domain="local")],
                                        [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
        proto.functions.append(function)
        if not any(o.domain == "local" for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid("local", 1))
        if node is not None:
            node.op_type, node.domain = "Loopy", "local"
    elif edit == "subgraph-dangling":
        for candidate in graphs[1:] or graphs:
            if candidate.node and candidate.node[0].input:
                candidate.node[0].input[0] = f"outer_ghost_{k}"
                break
    elif edit == "deep-nesting":
        depth = 2 + k % 28
        inner = _branch("leaf", "Identity", proto.graph.input[0].name, "deep")
        for level in range(depth):
            cond = _const(f"c{level}", np.array(True))
            leaf = _branch(f"leaf{level}", "Identity", proto.graph.input[0].name, "deep")
            wrapper = helper.make_node("If", [cond.name], ["deep"], name=f"if{level}", then_branch=inner,
                                       else_branch=leaf)
            inner = helper.make_graph([wrapper], f"g{level}", [], [_vi("deep", shape=[1, 4])], [cond])
        proto.graph.node.extend(inner.node)
        proto.graph.initializer.extend(inner.initializer)
        proto.graph.output.append(_vi("deep"))
    elif edit == "ir-version":
        proto.ir_version = _pick([1, 2, 3, 100, -1 & 0x7FFFFFFF], k)
    elif edit == "rename-input":
        proto.graph.input[0].name = _pick(["", "y", "x\x00", "../../etc"], k)
    elif edit == "empty-graph":
        del proto.graph.node[:]
    elif edit == "huge-initializer-dims" and inits:
        tensor = _pick(proto.graph.initializer, k)
        tensor.dims[:] = [huge, huge] if k % 2 else [huge]
    elif edit == "nan-weights" and inits:
        tensor = _pick(proto.graph.initializer, k)
        if tensor.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(tensor).copy()
            values.reshape(-1)[: max(1, values.size // 2)] = _pick([np.nan, np.inf, -np.inf, 3e38], k)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    elif edit == "string-tensor" and inits:
        tensor = _pick(proto.graph.initializer, k)
        tensor.CopyFrom(helper.make_tensor(tensor.name, TensorProto.STRING, [2], [b"a", b"b"]))
    elif edit == "swap-inputs" and node is not None and len(node.input) > 1:
        node.input[0], node.input[1] = node.input[1], node.input[0]
    elif edit == "opset-missing":
        del proto.opset_import[:]


def hostile_model(base: str, opset: int, edits: list[tuple[str, int]]) -> onnx.ModelProto:
    """A base model at `opset` with `edits` applied (each may be a no-op when it does not apply)."""
    proto = BASES[base](opset)
    for edit, k in edits:
        apply_edit(proto, edit, k)
    return proto


# ---------------------------------------------------------------- pass option values

def option_values(info) -> list[str]:
    """Hostile and ordinary text values for one typed pass option."""
    if info.choices:
        return list(info.choices) + ["nonsense"]
    if info.kind is bool:
        return ["true", "false", "maybe"]
    if info.kind is int:
        return ["-1", "0", "1", "3", "1000000000", "x"]
    if info.kind is float:
        return ["-1", "0", "0.25", "0.5", "0.99", "1", "1e9", "nan", "inf"]
    return ["", "zzz", "conv1;fc", ";;"]


# Options that only scale a pass's running time (training epochs, iterations, timing repeats):
# fuzzing keeps them small so each case stays far below the 30 s hang limit.
COST_OPTIONS = {"epochs": ["1", "0", "-1"], "stage1_epochs": ["1", "0", "-1"], "iters": ["1", "0", "-1"],
                "repeats": ["1", "0", "-1"], "samples": ["64", "1", "0", "-1"], "steps": ["1", "0", "-1"],
                "batch": ["8", "1", "0", "-1"]}


def pass_option_specs(rng: random.Random, per_pass: int) -> list[str]:
    """Pipeline texts: each registered pass alone with defaults, then with random option values
    (running-time options are capped, see COST_OPTIONS)."""
    specs = []
    for name, cls in registry().items():
        infos = options_of(cls)
        caps = {i.name: COST_OPTIONS[i.name][0] for i in infos if i.name in COST_OPTIONS}
        specs.append(name + ("{" + ",".join(f"{k}={v}" for k, v in caps.items()) + "}" if caps else ""))
        for _ in range(per_pass - 1 if infos else 0):
            chosen = rng.sample(infos, k=min(len(infos), rng.choice((1, 1, 2))))
            values = dict(caps)
            for info in chosen:
                values[info.name] = rng.choice(COST_OPTIONS.get(info.name) or option_values(info))
            specs.append(name + "{" + ",".join(f"{k}={v}" for k, v in values.items()) + "}")
    return specs


def is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# ---------------------------------------------------------------- campaigns

ZOO_FOR_PASSES = ("conv-gemm", "resnet-basic", "mobilenetv2", "c2f", "shufflenet")


def fuzz_real_bytes(run: FuzzRun, tmp: Path, paths: dict[str, Path], per_model: int, rng: random.Random) -> None:
    """Byte mutations of real model files through load_model (and onnxruntime for some)."""
    for name, source in paths.items():
        data = source.read_bytes()
        spans = weight_spans(data, onnx.load_from_string(data))
        for index in range(per_model):
            label, mutated = mutate_bytes(data, rng, spans)
            path = tmp / f"{name}.onnx"
            path.write_bytes(mutated)
            run.case("real-bytes", f"{name}:{label}", lambda: exercise_file(path, ort=index % 4 == 0))


def fuzz_zoo_bytes(run: FuzzRun, tmp: Path, per_model: int, rng: random.Random) -> None:
    """Byte mutations of zoo models: load, onnxruntime, and canonicalize on every third."""
    from slimcc.models.zoo import ZOO, build

    for name in ZOO:
        data = build(name, seed=0).SerializeToString()
        spans = weight_spans(data, onnx.load_from_string(data))
        for index in range(per_model):
            label, mutated = mutate_bytes(data, rng, spans)
            path = tmp / f"{name}.onnx"
            path.write_bytes(mutated)
            pipeline = "canonicalize" if index % 3 == 0 else None
            run.case("zoo-bytes", f"{name}:{label}", lambda: exercise_file(path, pipeline=pipeline))


def fuzz_graph_edits(run: FuzzRun, examples: int, seed: int = 0) -> None:
    """Hypothesis-generated hostile graphs (EDITS on BASES at opsets 7..21): load, run, canonicalize + a pass."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    pass_names = [n for n, cls in registry().items() if not cls.needs_calibration] or ["canonicalize"]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[__import__("hypothesis").Phase.generate])
    @given(base=st.sampled_from(sorted(BASES)), opset=st.integers(7, 21),
           edits=st.lists(st.tuples(st.sampled_from(EDITS), st.integers(0, 10**6)), min_size=0, max_size=3),
           pass_index=st.integers(0, 10**6))
    def one(base, opset, edits, pass_index):
        try:
            proto = hostile_model(base, opset, edits)
            proto.SerializeToString()
        except Exception:  # the generator itself cannot build this combination (e.g. protobuf depth)
            return
        pipeline = f"canonicalize,{pass_names[pass_index % len(pass_names)]}"

        def go():
            model = load_model(proto, isolate=True)
            isolated_onnxruntime(model.to_proto())
            out = run_pipeline(model, pipeline)
            isolated_onnxruntime(out.to_proto())

        run.case("graph-edit", f"{base}@{opset}:{edits}:{pipeline}", go)

    one()


# Passes that train (tens of seconds even at one epoch on 2 cores): fuzzed by bench/fuzz.py only.
TRAINING_PASSES = {"distill"}


def fuzz_pass_options(run: FuzzRun, rng: random.Random, per_pass: int, *, training: bool = False) -> None:
    """Every registered pass, with default and random (often hostile) options, on small zoo models."""
    from slimcc.models.zoo import build

    models = {name: load_model(build(name, seed=0)) for name in ZOO_FOR_PASSES}
    for spec in pass_option_specs(rng, per_pass):
        if not training and spec.split("{")[0] in TRAINING_PASSES:
            continue
        name = rng.choice(ZOO_FOR_PASSES)
        if parse_pipeline(spec.split("{")[0])[0].needs_calibration:
            name = "conv-gemm"  # data-driven passes (training, least squares) get the smallest model

        def go():
            out = run_pipeline(models[name], f"canonicalize,{spec}")
            isolated_onnxruntime(out.to_proto())

        run.case("pass-options", f"{name}:{spec}", go)


def fuzz_pipeline_text(run: FuzzRun, examples: int) -> None:
    """Hypothesis text into parse_pipeline: a pass list or a one-line PipelineError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    names = sorted(registry())
    atoms = st.sampled_from(names + ["", "{", "}", ",", "=", "ratio", "0.5", "nan", ";", " ", "{ratio=", "\n"])

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.text(max_size=40), st.lists(atoms, max_size=8).map("".join)))
    def one(text):
        run.case("pipeline-text", repr(text), lambda: parse_pipeline(text))

    one()


def fuzz_cli(run: FuzzRun, tmp: Path, count: int, rng: random.Random) -> None:
    """`slimcc` argument lists over good, broken and missing files, pipelines, shapes and outputs."""
    from slimcc.models.zoo import build

    good = tmp / "cli_good.onnx"
    good.write_bytes(build("conv-gemm", seed=0).SerializeToString())
    data = good.read_bytes()
    spans = weight_spans(data, onnx.load_from_string(data))
    (tmp / "cli_text.onnx").write_text("not a model\n")
    (tmp / "cli_empty.onnx").write_bytes(b"")
    (tmp / "cli_dir.onnx").mkdir(exist_ok=True)
    specs = pass_option_specs(random.Random(7), 2) + ["", "canonicalize,,", "nope", "canonicalize{opset=999}",
                                                      "canonicalize{", "prune-channels{ratio=2}"]
    shape_specs = ["x=1,3,32,32", "x=1,3,16,16", "x=0,3", "y=1", "x=a", "=1", "x=-1,3,32,32", "x=1,3,32,32,1"]
    for index in range(count):
        source = rng.choice([good, good, good, "mutated", tmp / "missing.onnx", tmp / "cli_text.onnx",
                             tmp / "cli_empty.onnx", tmp / "cli_dir.onnx", Path("/dev/null")])
        if source == "mutated":
            label, mutated = mutate_bytes(data, rng, spans)
            source = tmp / f"cli_mut_{index}.onnx"
            source.write_bytes(mutated)
        shapes = [a for s in rng.sample(shape_specs, rng.choice((0, 0, 1, 2))) for a in ("--input-shape", s)]
        command = rng.choice(("inspect", "inspect", "optimize", "optimize", "optimize", "passes", "other"))
        output = None
        if command == "inspect":
            args = ["inspect", str(source), *shapes, *rng.sample(["--layers", "--json"], rng.randrange(3))]
        elif command == "optimize":
            output = rng.choice([tmp / f"out_{index}.onnx", tmp / "no_such_dir" / "o.onnx", tmp / "cli_dir.onnx"])
            args = ["optimize", str(source), "-p", rng.choice(specs), "-o", str(output), *shapes]
            args += rng.sample(["--no-verify", "--max-error", rng.choice(["0.5", "-1", "nan", "abc", "1e-9"]),
                                "--on-fail", rng.choice(["rollback", "stop", "maybe"])], rng.randrange(3))
            if output.is_dir():
                output = None
            if output is not None and not _onnxruntime_survives(source):
                run.escapes.append(f"cli {args}: onnxruntime crashes on the model; optimize's in-process "
                                   "verification would kill the process")
                continue
        elif command == "passes":
            args = ["passes", *rng.sample(["--json", "--bogus"], rng.randrange(2))]
        else:
            args = [rng.choice(["", "--help-me", "frobnicate", "optimize", "inspect", "-p"])]
        run.case("cli", " ".join(args), lambda: run_cli(args, output))


def _onnxruntime_survives(path: Path) -> bool:
    """False only when onnxruntime kills or hangs the sandbox child on this model file."""
    try:
        model = load_model(path)
        isolated_onnxruntime(model.to_proto())
    except SlimccError as exc:
        return not any(word in str(exc) for word in CRASH_WORDS)
    return True
