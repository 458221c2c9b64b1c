"""Physically remove pruned channels: slice weights, biases, BN parameters, per-channel
constants, Split sizes, Slice bounds, Reshape/Resize shape constants and Gemm columns.

Also `mask_channels`, the reference the tests compare against: the original model with
the removed channels' weights zeroed in every consumer that mixes channels.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PassError
from slimcc.passes.prune.channels import ChannelAnalysis, constant_value, static_shape


_fresh = itertools.count()


def _replace_input(node, index: int, values: np.ndarray, suffix: str) -> None:
    """Give `node` a fresh initializer at input `index` (shared initializers are never edited in place)."""
    old = node.inputs[index]
    node.inputs[index] = gs.Constant(f"{old.name}__{suffix}{next(_fresh)}", np.ascontiguousarray(values))


def _take(values: np.ndarray, axis: int, index: np.ndarray) -> np.ndarray:
    return np.take(values, index, axis=axis)


def _per_group(kept: np.ndarray, size: int, groups: int, what: str) -> list[np.ndarray]:
    """Kept in-group positions of each of `groups` blocks of `size`; the blocks must keep equally many."""
    parts = [kept[(kept // size) == q] % size for q in range(groups)]
    if len({len(p) for p in parts}) != 1:
        raise PassError(f"{what}: groups keep {[len(p) for p in parts]} channels; grouped convs need equal counts")
    return parts


def _grouped_weight(w: np.ndarray, groups: int, keep_in: np.ndarray, keep_out: np.ndarray, name: str) -> np.ndarray:
    """Slice a grouped conv weight [Cout, Cin/g, kh, kw] group by group, keeping the group count."""
    cout_g, cin_g = w.shape[0] // groups, w.shape[1]
    outs = _per_group(keep_out, cout_g, groups, f"Conv {name} outputs")
    ins = _per_group(keep_in, cin_g, groups, f"Conv {name} inputs")
    blocks = [w[q * cout_g + outs[q]][:, ins[q]] for q in range(groups)]
    return np.concatenate(blocks, axis=0)


class _Pruner:
    def __init__(self, graph: gs.Graph, analysis: ChannelAnalysis, removed: set[int]):
        self.graph = graph
        self.an = analysis
        self.kept = analysis.kept_elements(removed)
        self.total = {name: sp.units * sp.unit for name, sp in analysis.spaces.items()}

    def changed(self, name: str) -> bool:
        return name in self.kept and len(self.kept[name]) != self.total[name]

    def keep(self, name: str) -> np.ndarray:
        return self.kept[name]

    def run(self) -> int:
        touched = 0
        for index, node in enumerate(self.graph.nodes):
            tensors = [t.name for t in list(node.inputs) + list(node.outputs) if t.name]
            if not any(self.changed(n) for n in tensors):
                continue
            if self.an.node_ops[index] != node.op:
                raise PassError("graph changed since the channel analysis; re-run it")
            handler = getattr(self, f"op_{node.op}", None)
            if handler is not None:
                handler(node)
            elif node.op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"):
                self.binary(node)
            touched += 1
        return touched

    # --- weighted ops ---------------------------------------------------------------------
    def op_Conv(self, node, transpose: bool = False) -> None:
        x, y = node.inputs[0].name, node.outputs[0].name
        w = np.asarray(node.inputs[1].values)
        groups = int(node.attrs.get("group", 1))
        out_axis, in_axis = (1, 0) if transpose else (0, 1)
        if groups == 1:
            w = _take(_take(w, out_axis, self.keep(y)), in_axis, self.keep(x))
        elif not transpose and w.shape[1] > 1:
            w = _grouped_weight(w, groups, self.keep(x), self.keep(y), node.name)
        else:
            cin = w.shape[0] if transpose else w.shape[1] * groups
            cout = w.shape[1] * groups if transpose else w.shape[0]
            kept_groups = len(self.keep(y)) // (cout // groups)
            if transpose:
                w = _take(w, 0, self.keep(x))
            else:
                w = _take(w, 0, self.keep(y))
            node.attrs["group"] = kept_groups
            assert len(self.keep(x)) == kept_groups * (cin // groups)
        _replace_input(node, 1, w, "pruned")
        if len(node.inputs) > 2 and node.inputs[2].name:
            _replace_input(node, 2, _take(np.asarray(node.inputs[2].values), 0, self.keep(y)), "pruned")

    def op_ConvTranspose(self, node) -> None:
        self.op_Conv(node, transpose=True)

    def op_Gemm(self, node) -> None:
        a, y = node.inputs[0].name, node.outputs[0].name
        b = np.asarray(node.inputs[1].values)
        k_axis, m_axis = (1, 0) if node.attrs.get("transB", 0) else (0, 1)
        b = _take(_take(b, k_axis, self.keep(a)), m_axis, self.keep(y))
        _replace_input(node, 1, b, "pruned")
        if len(node.inputs) > 2 and node.inputs[2].name:
            c = np.asarray(node.inputs[2].values)
            if c.ndim >= 1 and c.shape[-1] == self.total[y] and self.total[y] != 1:
                _replace_input(node, 2, _take(c, c.ndim - 1, self.keep(y)), "pruned")

    def op_MatMul(self, node) -> None:
        a, y = node.inputs[0].name, node.outputs[0].name
        rank = len(static_shape(node.inputs[0]))
        if self.an.spaces[a].axis != rank - 1:
            return  # channels are a batch axis of the MatMul: nothing to slice
        b = _take(_take(np.asarray(node.inputs[1].values), 0, self.keep(a)), 1, self.keep(y))
        _replace_input(node, 1, b, "pruned")

    def op_BatchNormalization(self, node) -> None:
        keep = self.keep(node.inputs[0].name)
        for i in range(1, 5):
            _replace_input(node, i, _take(np.asarray(node.inputs[i].values), 0, keep), "pruned")

    def op_InstanceNormalization(self, node) -> None:
        keep = self.keep(node.inputs[0].name)
        for i in (1, 2):
            _replace_input(node, i, _take(np.asarray(node.inputs[i].values), 0, keep), "pruned")

    # --- per-channel constants ------------------------------------------------------------
    def binary(self, node) -> None:
        out = node.outputs[0].name
        space = self.an.spaces[out]
        rank = len(static_shape(node.outputs[0]))
        for i, t in enumerate(node.inputs):
            if not isinstance(t, gs.Constant):
                continue
            value = np.asarray(t.values)
            ca = space.axis - (rank - value.ndim)
            if ca >= 0 and value.shape[ca] != 1:
                _replace_input(node, i, _take(value, ca, self.keep(out)), "pruned")

    # --- shape-carrying ops ---------------------------------------------------------------
    def op_Split(self, node) -> None:
        x = node.inputs[0].name
        space = self.an.spaces[x]
        shape = static_shape(node.inputs[0])
        axis = int(node.attrs.get("axis", 0)) % len(shape)
        if axis != space.axis:
            return
        sizes = np.array([len(self.keep(t.name)) for t in node.outputs], dtype=np.int64)
        if len(node.inputs) > 1 and node.inputs[1].name:
            _replace_input(node, 1, sizes, "pruned")
        elif "split" in node.attrs:
            node.attrs["split"] = sizes.tolist()
        elif len(set(sizes.tolist())) != 1:
            node.inputs.append(gs.Constant(f"{node.outputs[0].name}__split", sizes))
            node.attrs.pop("num_outputs", None)

    def op_Slice(self, node) -> None:
        x, y = node.inputs[0].name, node.outputs[0].name
        space = self.an.spaces[x]
        if self.an.spaces[y].dims == space.dims:
            return  # not sliced along the channel axis
        shape = static_shape(node.inputs[0])
        keep_in = self.keep(x)
        rank = len(shape)
        starts = constant_value(node.inputs[1]).astype(np.int64).copy()
        ends = constant_value(node.inputs[2]).astype(np.int64).copy()
        axes = (constant_value(node.inputs[3]).astype(np.int64) if len(node.inputs) > 3 and node.inputs[3].name
                else np.arange(len(starts)))
        for i, a in enumerate(axes.tolist()):
            if a % rank != space.axis:
                continue
            dim = shape[space.axis]
            start = int(starts[i]) + dim if starts[i] < 0 else int(starts[i])
            start = max(0, min(start, dim))
            new_start = int(np.sum(keep_in < start))
            starts[i] = new_start
            ends[i] = new_start + len(self.keep(y))
        _replace_input(node, 1, starts, "pruned")
        _replace_input(node, 2, ends, "pruned")

    def op_Reshape(self, node) -> None:
        y = node.outputs[0].name
        space = self.an.spaces[y]
        target = np.asarray(node.inputs[1].values).astype(np.int64).copy()
        kept = self.keep(y) // space.unit
        if len(space.dims) == 1:
            new_dims = [len(self.keep(y))]
        else:
            coords = np.unravel_index(np.unique(kept), space.dims)
            new_dims = [len(np.unique(c)) for c in coords]
            if int(np.prod(new_dims)) != len(np.unique(kept)):
                raise PassError(f"Reshape {node.name}: kept channels do not form a product set")
        for i, d in enumerate(new_dims):
            if target[space.axis + i] != -1:
                target[space.axis + i] = d
        _replace_input(node, 1, target, "pruned")

    def op_Resize(self, node) -> None:
        if len(node.inputs) > 3 and node.inputs[3].name:
            sizes = np.asarray(node.inputs[3].values).astype(np.int64).copy()
            sizes[1] = len(self.keep(node.outputs[0].name))
            _replace_input(node, 3, sizes, "pruned")

    def op_Upsample(self, node) -> None:
        return


def prune_graph(graph: gs.Graph, analysis: ChannelAnalysis, removed: set[int]) -> int:
    """Slice every parameter touched by the removed components; returns the number of nodes edited.

    The caller re-runs shape inference (`Model.refresh_shapes`).
    """
    blocked = [c for c in removed if analysis.components[c].blocked]
    if blocked:
        raise PassError(f"refusing to prune blocked channels: {analysis.components[blocked[0]].blocked[0]}")
    return _Pruner(graph, analysis, removed).run()


def prune_model(model, analysis: ChannelAnalysis, removed: set[int]) -> int:
    """`prune_graph` on `model.graph`, then clean up and refresh shapes."""
    edited = prune_graph(model.graph, analysis, removed)
    model.graph.cleanup()
    model.refresh_shapes()
    return edited


def mask_channels(graph: gs.Graph, analysis: ChannelAnalysis, removed: set[int]) -> None:
    """Zero, in every channel-mixing consumer (Conv, grouped too, ConvTranspose, Gemm, MatMul), the weights
    that read a removed channel. The pruned model must compute exactly what this masked model computes."""
    kept = analysis.kept_elements(removed)
    for role in analysis.roles:
        if role.kind != "reducer":
            continue
        node = graph.nodes[role.node]
        total = analysis.spaces[role.tensor].units * analysis.spaces[role.tensor].unit
        drop = np.setdiff1d(np.arange(total), kept[role.tensor])
        if not len(drop):
            continue
        w = np.array(node.inputs[1].values, copy=True)
        groups = int(node.attrs.get("group", 1))
        if node.op == "Conv" and groups > 1:
            cout_g, cin_g = w.shape[0] // groups, w.shape[1]
            for c in drop.tolist():
                w[(c // cin_g) * cout_g:(c // cin_g + 1) * cout_g, c % cin_g] = 0
        elif node.op == "Conv":
            w[:, drop] = 0
        elif node.op == "ConvTranspose":
            w[drop] = 0
        elif node.op == "Gemm":
            if node.attrs.get("transB", 0):
                w[:, drop] = 0
            else:
                w[drop] = 0
        elif node.op == "MatMul":
            w[drop] = 0
        _replace_input(node, 1, w, "masked")
