"""Per-layer kernel times on onnxruntime, float and int8: what quantizing each layer buys in speed.

Both models run in onnxruntime (CPU, one thread, all graph optimizations, as they would be
deployed) with its profiler on, interleaved, and each kernel's time is its median over the runs
(the first run, which allocates, is left out). onnxruntime renames the nodes it fuses or converts
(`Conv.3_token_12`, `<output tensor>_nchwc`, `<tensor>_q_node`); a kernel is traced back to our
graph by the longest `_`-prefix of its name that is a node or tensor name there, then up the data
flow to the first compute layer: Q/DQ, activations, element-wise and pooling kernels count toward
the layer they follow. Kernels before any layer or in front of a non-candidate layer (layout
reorders at the input, the stem) are reported as `other`.
"""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path

import numpy as np

from slimcc.errors import SlimccError

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
OTHER = "other"


def layer_times(models: dict[str, object], candidates: list[str], feed: dict[str, np.ndarray],
                runs: int = 10) -> dict[str, dict[str, float]]:
    """{layer or "other": {variant: microseconds per inference}} for the named `models` (slimcc Models,
    e.g. {"fp32": ..., "int8": ...}); `candidates` are the layer names to attribute kernels to."""
    return attribute(profile_models(models, feed, runs), models, candidates)


def profile_models(models: dict[str, object], feed: dict[str, np.ndarray],
                   runs: int = 10) -> dict[str, dict[str, tuple[str, float]]]:
    """`profile_kernels` of slimcc Models (saved to a temporary folder first)."""
    from slimcc.ir.model import save_model

    with tempfile.TemporaryDirectory() as tmp:
        paths = {key: save_model(model, Path(tmp) / f"{key}.onnx") for key, model in models.items()}
        return profile_kernels(paths, feed, runs, Path(tmp))


def attribute(kernels: dict[str, dict[str, tuple[str, float]]], models: dict[str, object],
              candidates: list[str]) -> dict[str, dict[str, float]]:
    """Per-layer (and "other") sums of each variant's profiled kernel times."""
    result: dict[str, dict[str, float]] = {name: {} for name in (*candidates, OTHER)}
    for key, model in models.items():
        owner = kernel_owner(model.graph, set(candidates))
        totals = collections.defaultdict(float)
        for kernel, (_, micros) in kernels[key].items():
            totals[owner(kernel)] += micros
        for name in result:
            result[name][key] = round(totals.get(name, 0.0), 1)
    return result


def conversion_cost(kernels: dict[str, tuple[str, float]], model) -> float:
    """Microseconds per tensor element of converting between float and int8: the profiled
    QuantizeLinear and DequantizeLinear kernels of `model` (those whose tensor has a static shape),
    total time over total elements, counted twice (a float island costs a DequantizeLinear and a
    QuantizeLinear). 0 when none was profiled."""
    graph = model.graph
    nodes = {node.name: node for node in graph.nodes}
    micros_total = elements = 0.0
    for name, (op, micros) in kernels.items():
        node = nodes.get(name)
        if op not in ("QuantizeLinear", "DequantizeLinear") or node is None:
            continue
        size = static_elements(node.inputs[0].shape)
        if size:
            micros_total += micros
            elements += size
    return 2.0 * micros_total / elements if elements else 0.0


def static_elements(shape) -> int:
    """Element count of a fully static shape; 0 when a dimension is unknown or symbolic."""
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        return 0
    return int(np.prod(shape))


def profile_kernels(paths: dict[str, Path], feed: dict[str, np.ndarray], runs: int,
                    folder: Path) -> dict[str, dict[str, tuple[str, float]]]:
    """{variant: {onnxruntime kernel name: (op type, median microseconds)}}, the variants run interleaved."""
    import onnxruntime as ort

    sessions = {}
    for key, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / key)
        try:
            sessions[key] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SlimccError(f"onnxruntime cannot load the {key} model for profiling: {exc}".splitlines()[0]) from exc
    for _ in range(runs + 1):
        for session in sessions.values():
            session.run(None, feed)
    result = {}
    for key, session in sessions.items():
        events = json.loads(Path(session.end_profiling()).read_text())
        durations, ops = collections.defaultdict(list), {}
        for event in events:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                name = event["name"][:-len("_kernel_time")]
                durations[name].append(event["dur"])
                ops[name] = event.get("args", {}).get("op_name", "")
        # the first run allocates: left out
        result[key] = {name: (ops[name], float(np.median(d[1:] or d))) for name, d in durations.items()}
    return result


def kernel_owner(graph, candidates: set[str]):
    """A function mapping an onnxruntime kernel name to the candidate layer it belongs to, or OTHER."""
    nodes = {node.name: node for node in graph.nodes}
    producers = {out.name: node for node in graph.nodes for out in node.outputs}

    def source(kernel: str):
        name = kernel
        while name:
            if name in nodes:
                return nodes[name]
            if name in producers:
                return producers[name]
            if "_" not in name:
                return None
            name = name.rsplit("_", 1)[0]
        return None

    def owner(kernel: str) -> str:
        node, seen = source(kernel), set()
        while node is not None and id(node) not in seen:
            seen.add(id(node))
            if node.op in COMPUTE_OPS:
                return node.name if node.name in candidates else OTHER
            inputs = [t for t in node.inputs if t.name in producers]
            node = producers[inputs[0].name] if inputs else None
        return OTHER

    return owner
