"""Small ONNX graphs for pruning tests and the mask-equivalence check shared by the test files."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models, random_feeds
from slimcc.passes.prune.apply import mask_channels, prune_model
from slimcc.passes.prune.channels import analyze_channels


class GraphBuilder:
    """Builds a float32 NCHW graph node by node with seeded random weights."""

    def __init__(self, c: int = 4, hw: int = 8, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0
        self.shape = [1, c, hw, hw]

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, array) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, stride: int = 1) -> str:
        w = self.rng.normal(0, 0.5, (cout, cin // group, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.1, cout).astype(np.float32)
        return self.op("Conv", [x, self.const(w), self.const(b)], kernel_shape=[k, k], pads=[k // 2] * 4,
                       group=group, strides=[stride, stride])[0]

    def bn(self, x: str, c: int) -> str:
        params = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.1, c), self.rng.normal(0, 0.1, c),
                  self.rng.uniform(0.5, 1.5, c)]
        return self.op("BatchNormalization", [x] + [self.const(p.astype(np.float32)) for p in params])[0]

    def model(self, output: str, out_shape=None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shape)],
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)], self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        if out_shape is None:  # take the output shape from shape inference
            inferred = onnx.shape_inference.infer_shapes(proto)
            proto.graph.output[0].CopyFrom(inferred.graph.output[0])
        return proto


def random_removal(analysis, rng, keep_at_least_one: bool = True) -> set[int]:
    """A random subset of every prunable group's components (never the whole group)."""
    removed = set()
    for group in analysis.prunable_groups():
        n = len(group.components)
        k = int(rng.integers(0, n if keep_at_least_one else n + 1))
        removed |= set(rng.choice(group.components, size=k, replace=False).tolist())
    return removed


def check_mask_equivalence(model, removed=None, seed: int = 0, rel_tol: float = 1e-4):
    """Prune `model` (a Model) by `removed` (random if None) and compare with the masked original.

    Returns (report vs masked, report vs unmasked original, pruned model).
    """
    analysis = analyze_channels(model.graph)
    if removed is None:
        removed = random_removal(analysis, np.random.default_rng(seed))
    masked = model.copy()
    mask_channels(masked.graph, analysis, removed)
    pruned = model.copy()
    prune_model(pruned, analysis, removed)
    feeds = random_feeds(model, seed=seed)
    report = compare_models(masked, pruned, feeds)
    assert report.max_rel <= rel_tol, f"pruned != masked: {report.as_dict()}"
    return report, compare_models(model, pruned, feeds), pruned


def load(proto) -> "object":
    return load_model(proto)
