"""Channel dependency analysis: which channels of which tensors must be pruned together.

Every activation tensor gets a *channel space*: one axis (or, after a channel-shuffle
Reshape, a run of adjacent axes read as one flat index) divided into units of
`unit` consecutive elements (a Flatten into a Gemm makes a unit of H*W features).
Each op rule states an exact index map between its inputs' and outputs' units: the units
it maps onto each other are joined by an edge of a networkx *coupling graph* (a space mapped
one to one onto an earlier one simply shares its units). A connected component of that
graph is a *component*: removing it removes each of its units everywhere. Components that
touch the same tensors form a *group* (e.g. all output channels of one conv).

A grouped conv (more than one input channel per group) couples nothing itself but asks
that every component hold equally many units in each of its groups; `balance.py` merges
components until that holds, and the analysis records the check per conv (`uniform`).

A rule that cannot prove its map raises `Blocked`; every space it touches is then
marked unprunable with that reason. Graph inputs and outputs are never pruned.
The result (`ChannelAnalysis`) is plain data; `apply.py` does the rewriting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import SlimccError
from slimcc.ir.constants import constant_value
from slimcc.ir.graphview import component_labels
from slimcc.ir.layout import channel_axis
from slimcc.passes.prune.balance import balance, check_balanced

UNARY_OPS = frozenset({
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Cast", "Identity", "Dropout",
    "Elu", "Selu", "Softplus", "Softsign", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Gelu",
    "Mish", "Floor", "Ceil", "Round", "ThresholdedRelu", "Celu",
})
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"})
POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
REDUCE_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})


class Blocked(Exception):
    """Raised by an op rule that cannot prove an exact channel map; the message is the reason."""


@dataclass
class Space:
    """The channel space of one tensor: axes [axis, axis+len(dims)) read as one flat index."""

    tensor: str
    axis: int
    dims: tuple[int, ...]
    unit: int
    base: int  # node of unit 0 in the coupling graph (shared with a space it maps onto one to one)

    @property
    def units(self) -> int:
        return math.prod(self.dims) // self.unit

    def as_dict(self) -> dict:
        return {"tensor": self.tensor, "axis": self.axis, "dims": list(self.dims), "unit": self.unit}


@dataclass
class Role:
    """How a weighted node touches channels: `producer` (output unit k = filter k) or `reducer` (mixes input units)."""

    kind: str  # "producer" | "reducer" | "bn"
    node: int  # index in graph.nodes
    tensor: str


@dataclass
class Component:
    """Units pruned together: {tensor: [unit indices]}; `blocked` holds reasons when unprunable."""

    id: int
    members: dict[str, list[int]]
    blocked: list[str] = field(default_factory=list)
    group: int = -1


@dataclass
class Group:
    """Components that touch the same set of tensors (e.g. the output channels of one conv)."""

    id: int
    tensors: tuple[str, ...]
    components: list[int]
    blocked: list[str]

    @property
    def prunable(self) -> bool:
        return not self.blocked


@dataclass
class ChannelAnalysis:
    """The result of `analyze_channels`: spaces, components, groups, roles. JSON-able via `as_dict`."""

    spaces: dict[str, Space]
    components: list[Component]
    groups: list[Group]
    roles: list[Role]
    node_ops: list[str]
    element_component: dict[str, np.ndarray]  # tensor -> component id per unit
    uniform: list[dict] = field(default_factory=list)  # grouped convs whose every component is group-uniform

    def component_size(self, comp: int) -> int:
        return len(self.groups[self.components[comp].group].components)

    def kept_units(self, removed: set[int]) -> dict[str, np.ndarray]:
        """Per tensor: the sorted unit indices that survive when components `removed` are pruned."""
        kept = {}
        for name, comps in self.element_component.items():
            mask = np.array([c not in removed for c in comps.tolist()], dtype=bool)
            kept[name] = np.nonzero(mask)[0]
        return kept

    def kept_elements(self, removed: set[int]) -> dict[str, np.ndarray]:
        """Per tensor: sorted surviving flat element indices along its channel space (units expanded)."""
        out = {}
        for name, units in self.kept_units(removed).items():
            unit = self.spaces[name].unit
            out[name] = (units[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
        return out

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def as_dict(self) -> dict:
        """Groups with members and blocked reasons, as plain JSON data."""
        groups = []
        for g in self.groups:
            members = {t: sorted(u for c in g.components for u in self.components[c].members.get(t, []))
                       for t in g.tensors}
            groups.append({"id": g.id, "prunable": g.prunable, "units": len(g.components),
                           "blocked": g.blocked,
                           "members": [{"tensor": t, "axis": self.spaces[t].axis, "units": len(u),
                                        "first": u[0] if u else None} for t, u in members.items()]})
        return {"groups": groups, "spaces": len(self.spaces), "components": len(self.components),
                "prunable_groups": sum(g.prunable for g in self.groups), "group_uniform": self.uniform}


def is_constant(tensor) -> bool:
    return constant_value(tensor) is not None


def static_shape(tensor) -> tuple[int, ...] | None:
    shape = tensor.shape
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


class _Builder:
    """Walks the graph once, applying op rules (methods `op_<Type>`) to build spaces and the coupling graph."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.opset = int(graph.opset or 13)
        self.units = 0  # nodes of the coupling graph so far
        self.edges: list[tuple[int, int]] = []
        self.spaces: dict[str, Space] = {}
        self.blocked: dict[str, list[str]] = {}
        self.roles: list[Role] = []
        self.balances: list[tuple[Space, int, str]] = []  # (space, conv groups, node) from grouped convs
        self.index = -1

    # --- spaces ---------------------------------------------------------------------------
    def new_space(self, tensor, axis: int, dims: tuple[int, ...], unit: int = 1, product: bool = False,
                  shares: Space | None = None) -> Space:
        """The space of `tensor`: fresh units, or those of `shares` when it maps onto them one to one."""
        if tensor.name in self.spaces:
            raise Blocked(f"tensor {tensor.name} is produced twice")
        space = Space(tensor.name, axis, tuple(dims), unit, 0)
        if shares is not None and shares.units == space.units:
            space.base = shares.base
        else:
            space.base = self.units
            self.units += space.units
        self.spaces[tensor.name] = space
        if shares is not None and shares.units != space.units:
            raise Blocked(f"{shares.tensor} and {tensor.name} have {shares.units} vs {space.units} channel units")
        if product and len(dims) > 1:
            self._couple_product(space)
        return space

    def _couple_product(self, space: Space) -> None:
        """A multi-axis space keeps a product structure: units equal in the last coordinate are one unit."""
        last = space.dims[-1]
        self.edges.extend((space.base + flat, space.base + flat % last) for flat in range(last, space.units))

    def default_space(self, tensor, op: str = "", attrs: dict | None = None) -> Space | None:
        """A one-axis space on the channel axis of `op`'s output (axis 1 when no op is given: graph inputs)."""
        shape = static_shape(tensor)
        if shape is None or len(shape) == 0:
            return None
        axis = channel_axis(op, len(shape), attrs)
        return self.new_space(tensor, axis, (shape[axis],))

    def space(self, tensor) -> Space:
        space = self.spaces.get(tensor.name)
        if space is None:
            raise Blocked(f"tensor {tensor.name} has no known channel layout (static shapes needed: run canonicalize)")
        return space

    def block(self, name: str, reason: str) -> None:
        self.blocked.setdefault(name, [])
        if reason not in self.blocked[name]:
            self.blocked[name].append(reason)

    def couple(self, a: int, b: int, n: int = 1) -> None:
        """Units a..a+n-1 are pruned together with units b..b+n-1, one to one."""
        if a != b:
            self.edges.extend(zip(range(a, a + n), range(b, b + n)))

    def union_identity(self, a: Space, b: Space) -> None:
        if a.units != b.units:
            raise Blocked(f"{a.tensor} and {b.tensor} have {a.units} vs {b.units} channel units")
        self.couple(a.base, b.base, a.units)

    def same_layout(self, src: Space, out, axis: int | None = None) -> Space:
        """Output space = input space (possibly moved to `axis`), units mapped one to one."""
        return self.new_space(out, src.axis if axis is None else axis, src.dims, src.unit, shares=src)

    # --- driver ---------------------------------------------------------------------------
    def run(self) -> None:
        graph = self.graph
        for tensor in graph.inputs:
            self.default_space(tensor)
            self.block(tensor.name, "graph input")
        for self.index, node in enumerate(graph.nodes):
            if node.op == "Constant":
                continue
            outs = [t for t in node.outputs]
            try:
                rule = getattr(self, f"op_{node.op}", None)
                if rule is None:
                    if node.op in UNARY_OPS:
                        rule = self.unary
                    elif node.op in BINARY_OPS:
                        rule = self.binary
                    elif node.op in POOL_OPS:
                        rule = self.pool
                    elif node.op in SOFTMAX_OPS:
                        rule = self.softmax
                    elif node.op in REDUCE_OPS:
                        rule = self.reduce
                    else:
                        raise Blocked(f"{node.op} is not known to preserve channels")
                if node.domain not in (None, "", "ai.onnx"):
                    raise Blocked(f"{node.op} from domain {node.domain} is not known to preserve channels")
                rule(node)
            except Blocked as exc:
                reason = f"{node.op} {node.name or '#' + str(self.index)}: {exc}"
                for tensor in node.inputs:
                    if not is_constant(tensor) and tensor.name in self.spaces:
                        self.block(tensor.name, reason)
                for tensor in outs:
                    if tensor.name not in self.spaces:
                        self.default_space(tensor, node.op, node.attrs)
                    self.block(tensor.name, reason)
        for tensor in graph.outputs:
            self.block(tensor.name, "graph output")

    # --- rules ----------------------------------------------------------------------------
    def _data_inputs(self, node) -> list:
        return [t for t in node.inputs if t.name and not is_constant(t)]

    def _channel1(self, tensor, what: str) -> Space:
        space = self.space(tensor)
        if space.axis != 1 or len(space.dims) != 1 or space.unit != 1:
            raise Blocked(f"{what} expects channels on axis 1 of {tensor.name}")
        return space

    def _weighted(self, node, transpose: bool) -> None:
        x = node.inputs[0]
        if is_constant(x):
            raise Blocked("data input is a constant")
        w = node.inputs[1]
        if not isinstance(w, gs.Constant):
            raise Blocked("weight is not an initializer")
        if len(node.inputs) > 2 and node.inputs[2].name and not isinstance(node.inputs[2], gs.Constant):
            raise Blocked("bias is not an initializer")
        sin = self._channel1(x, node.op)
        shape = w.shape
        groups = int(node.attrs.get("group", 1))
        cin = shape[0] if transpose else shape[1] * groups
        cout = shape[1] * groups if transpose else shape[0]
        if sin.units != cin:
            raise Blocked(f"input has {sin.units} channels, weight expects {cin}")
        depthwise = groups > 1 and cin == cout == groups  # output channel k is a function of input channel k
        sout = self.new_space(node.outputs[0], 1, (cout,), shares=sin if depthwise else None)
        if groups == 1:
            self.roles.append(Role("reducer", self.index, x.name))
        elif not transpose and cin // groups > 1:
            # every conv group must keep as many inputs and outputs as the others: see `balance`
            self.balances.append((sin, groups, f"{node.op} {node.name or '#' + str(self.index)}"))
            self.balances.append((sout, groups, f"{node.op} {node.name or '#' + str(self.index)}"))
            self.roles.append(Role("reducer", self.index, x.name))
        elif not depthwise:
            cin_g, cout_g = cin // groups, cout // groups
            for g in range(groups):  # whole groups only: a group's inputs and outputs are one unit
                anchor = sout.base + g * cout_g
                for k in range(cin_g):
                    self.couple(anchor, sin.base + g * cin_g + k)
                for k in range(1, cout_g):
                    self.couple(anchor, anchor + k)
        self.roles.append(Role("producer", self.index, node.outputs[0].name))

    def op_Conv(self, node) -> None:
        self._weighted(node, transpose=False)

    def op_ConvTranspose(self, node) -> None:
        self._weighted(node, transpose=True)

    def op_Gemm(self, node) -> None:
        if node.attrs.get("transA", 0):
            raise Blocked("transA=1")
        a, b = node.inputs[0], node.inputs[1]
        if is_constant(a) or not isinstance(b, gs.Constant):
            raise Blocked("Gemm needs an activation A and an initializer B")
        if len(node.inputs) > 2 and node.inputs[2].name and not isinstance(node.inputs[2], gs.Constant):
            raise Blocked("C is not an initializer")
        sa = self.space(a)
        if sa.axis != 1 or len(sa.dims) != 1:
            raise Blocked("A's channels are not on axis 1")
        k_dim, m_dim = (1, 0) if node.attrs.get("transB", 0) else (0, 1)
        if b.shape[k_dim] != sa.dims[0]:
            raise Blocked("B does not match A")
        self.new_space(node.outputs[0], 1, (b.shape[m_dim],))
        self.roles.append(Role("reducer", self.index, a.name))
        self.roles.append(Role("producer", self.index, node.outputs[0].name))

    def op_MatMul(self, node) -> None:
        a, b = node.inputs
        if is_constant(a) or not isinstance(b, gs.Constant) or len(b.shape) != 2:
            raise Blocked("MatMul needs an activation times a 2-D initializer")
        sa = self.space(a)
        rank = len(static_shape(a) or ())
        if rank < 2:
            raise Blocked("rank < 2")
        if sa.axis == rank - 1 and len(sa.dims) == 1:
            self.new_space(node.outputs[0], rank - 1, (b.shape[1],))
            self.roles.append(Role("reducer", self.index, a.name))
            self.roles.append(Role("producer", self.index, node.outputs[0].name))
        elif sa.axis + len(sa.dims) <= rank - 2:
            self.same_layout(sa, node.outputs[0])
        else:
            raise Blocked("channel axis is a matrix axis of MatMul")

    def op_BatchNormalization(self, node) -> None:
        if len([t for t in node.outputs if t.outputs or t in self.graph.outputs]) > 1:
            raise Blocked("training-mode outputs are used")
        if not all(isinstance(t, gs.Constant) for t in node.inputs[1:5]):
            raise Blocked("parameters are not initializers")
        sin = self._channel1(node.inputs[0], node.op)
        self.same_layout(sin, node.outputs[0])
        self.roles.append(Role("bn", self.index, node.inputs[0].name))

    def op_InstanceNormalization(self, node) -> None:
        if not all(isinstance(t, gs.Constant) for t in node.inputs[1:3]):
            raise Blocked("parameters are not initializers")
        self.same_layout(self._channel1(node.inputs[0], node.op), node.outputs[0])

    def unary(self, node) -> None:
        data = self._data_inputs(node)
        if len(data) != 1 or node.inputs[0] is not data[0]:
            raise Blocked("non-constant extra operands")
        for extra in node.inputs[1:]:
            value = constant_value(extra) if extra.name else None
            if value is not None and value.size != 1:
                raise Blocked("non-scalar operand")
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
            raise Blocked("mask output is used")
        self.same_layout(self.space(node.inputs[0]), node.outputs[0])

    def binary(self, node) -> None:
        out = node.outputs[0]
        oshape = static_shape(out)
        if oshape is None:
            raise Blocked("output shape unknown")
        rank = len(oshape)
        chosen: Space | None = None
        full_inputs = []
        for t in node.inputs:
            if not t.name or is_constant(t):
                continue
            shape = static_shape(t)
            if shape is None:
                raise Blocked(f"shape of {t.name} unknown")
            space = self.space(t)
            out_axis = space.axis + rank - len(shape)
            span = range(space.axis, space.axis + len(space.dims))
            if all(shape[a] == 1 for a in span) and space.units <= 1:
                continue  # broadcast along the channel axis: not coupled
            if any(shape[a] != oshape[a + rank - len(shape)] for a in span):
                raise Blocked(f"{t.name} is broadcast along its channel axis")
            if chosen is not None and (out_axis != chosen.axis or space.dims != chosen.dims or space.unit != chosen.unit):
                raise Blocked("operands have their channels on different axes")
            if chosen is None:
                chosen = Space(out.name, out_axis, space.dims, space.unit, 0)
            full_inputs.append(space)
        if chosen is None:
            raise Blocked("no operand carries channels")
        for t in node.inputs:  # constants must be broadcast along the span or match it exactly (then sliced)
            value = constant_value(t) if t.name else None
            if value is None:
                continue
            for k, a in enumerate(range(chosen.axis, chosen.axis + len(chosen.dims))):
                ca = a - (rank - value.ndim)
                if ca >= 0 and value.shape[ca] != 1:
                    if len(chosen.dims) != 1 or value.shape[ca] != chosen.dims[0]:
                        raise Blocked(f"constant {t.name} varies along the channel axis in an unsupported way")
                    if not isinstance(t, gs.Constant):
                        raise Blocked(f"per-channel constant {t.name} is not an initializer")
        sout = self.new_space(out, chosen.axis, chosen.dims, chosen.unit, shares=full_inputs[0])
        for space in full_inputs[1:]:
            self.union_identity(space, sout)

    def pool(self, node) -> None:
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            raise Blocked("indices output is used")
        self.same_layout(self._channel1(node.inputs[0], node.op), node.outputs[0])

    def softmax(self, node) -> None:
        space = self.space(node.inputs[0])
        rank = len(static_shape(node.inputs[0]) or ())
        default = 1 if self.opset < 13 else -1
        axis = int(node.attrs.get("axis", default)) % max(rank, 1)
        span_end = space.axis + len(space.dims)
        if (self.opset < 13 and axis < span_end) or space.axis <= axis < span_end:
            raise Blocked(f"{node.op} normalizes over the channel axis")
        self.same_layout(space, node.outputs[0])

    def _axes(self, node, attr: str = "axes", input_index: int = 1) -> list[int] | None:
        if attr in node.attrs:
            return [int(a) for a in node.attrs[attr]]
        if len(node.inputs) > input_index and node.inputs[input_index].name:
            value = constant_value(node.inputs[input_index])
            if value is None:
                raise Blocked("axes are not constant")
            return [int(a) for a in value.reshape(-1)]
        return None

    def reduce(self, node) -> None:
        x = node.inputs[0]
        rank = len(static_shape(x) or ())
        space = self.space(x)
        axes = self._axes(node)
        if axes is None or not axes:
            if node.attrs.get("noop_with_empty_axes", 0) and axes is not None:
                self.same_layout(space, node.outputs[0])
                return
            axes = list(range(rank))
        axes = sorted(a % rank for a in axes)
        span = set(range(space.axis, space.axis + len(space.dims)))
        if span & set(axes):
            raise Blocked(f"{node.op} reduces over the channel axis")
        keep = node.attrs.get("keepdims", 1)
        shift = 0 if keep else sum(a < space.axis for a in axes)
        self.same_layout(space, node.outputs[0], space.axis - shift)

    def op_LayerNormalization(self, node) -> None:
        x = node.inputs[0]
        rank = len(static_shape(x) or ())
        space = self.space(x)
        axis = int(node.attrs.get("axis", -1)) % max(rank, 1)
        if space.axis + len(space.dims) - 1 >= axis:
            raise Blocked("LayerNormalization normalizes over the channel axis")
        if len(node.outputs) > 1 and any(t.outputs for t in node.outputs[1:]):
            raise Blocked("statistics outputs are used")
        self.same_layout(space, node.outputs[0])

    def op_Concat(self, node) -> None:
        out = node.outputs[0]
        rank = len(static_shape(out) or ())
        axis = int(node.attrs["axis"]) % max(rank, 1)
        if any(is_constant(t) for t in node.inputs):
            raise Blocked("constant operand")
        spaces = [self.space(t) for t in node.inputs]
        first = spaces[0]
        if any(s.axis != first.axis or len(s.dims) != len(first.dims) or s.unit != first.unit for s in spaces):
            raise Blocked("operands have their channels on different axes")
        if axis == first.axis and len(first.dims) == 1:
            sout = self.new_space(out, axis, (sum(s.dims[0] for s in spaces),), first.unit)
            offset = 0
            for s in spaces:
                self.couple(s.base, sout.base + offset, s.units)
                offset += s.units
        elif first.axis <= axis < first.axis + len(first.dims):
            raise Blocked("concatenation inside a multi-axis channel space")
        else:
            sout = self.same_layout(first, out)
            for s in spaces[1:]:
                self.union_identity(s, sout)

    def op_Split(self, node) -> None:
        x = node.inputs[0]
        shape = static_shape(x)
        space = self.space(x)
        axis = int(node.attrs.get("axis", 0)) % len(shape)
        if axis == space.axis and len(space.dims) == 1:
            sizes = [static_shape(t)[axis] for t in node.outputs]
            if any(s % space.unit for s in sizes) or sum(sizes) != shape[axis]:
                raise Blocked("split sizes do not align with channel units")
            offset = 0
            for t, size in zip(node.outputs, sizes):
                sout = self.new_space(t, axis, (size,), space.unit)
                self.couple(space.base + offset, sout.base, sout.units)
                offset += sout.units
        elif space.axis <= axis < space.axis + len(space.dims):
            raise Blocked("split inside a multi-axis channel space")
        else:
            for t in node.outputs:
                self.same_layout(space, t)

    def _slice_params(self, node, rank: int, shape) -> dict[int, tuple[int, int, int]]:
        if len(node.inputs) < 3:  # opset < 10 attribute form
            starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
            axes = node.attrs.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            values = [constant_value(t) if t.name else None for t in node.inputs[1:5]]
            if values[0] is None or values[1] is None or (len(values) > 2 and node.inputs[3].name and values[2] is None) \
                    or (len(values) > 3 and node.inputs[4].name and values[3] is None):
                raise Blocked("slice bounds are not constant")
            starts, ends = values[0].tolist(), values[1].tolist()
            axes = values[2].tolist() if len(values) > 2 and values[2] is not None else list(range(len(starts)))
            steps = values[3].tolist() if len(values) > 3 and values[3] is not None else [1] * len(starts)
        result = {}
        for s, e, a, st in zip(starts, ends, axes, steps):
            a = int(a) % rank
            dim = shape[a]
            s = int(s) + dim if s < 0 else int(s)
            e = int(e) + dim if e < 0 else int(e)
            result[a] = (max(0, min(s, dim)), max(0, min(e, dim)), int(st))
        return result

    def op_Slice(self, node) -> None:
        x = node.inputs[0]
        shape = static_shape(x)
        space = self.space(x)
        params = self._slice_params(node, len(shape), shape)
        span = range(space.axis, space.axis + len(space.dims))
        touched = [a for a in params if a in span and params[a] != (0, shape[a], 1)]
        if not touched:
            self.same_layout(space, node.outputs[0])
            return
        if len(node.inputs) < 3:
            raise Blocked("opset < 10 Slice on the channel axis (run canonicalize to upgrade the opset)")
        start, end, step = params[touched[0]]
        if len(space.dims) != 1 or step != 1 or start % space.unit or end % space.unit or end <= start:
            raise Blocked("slice on the channel axis must be contiguous, step 1 and unit aligned")
        sout = self.new_space(node.outputs[0], space.axis, (end - start,), space.unit)
        self.couple(space.base + start // space.unit, sout.base, sout.units)

    def op_Resize(self, node) -> None:
        space = self._channel1(node.inputs[0], node.op)
        shape = static_shape(node.inputs[0])
        oshape = static_shape(node.outputs[0])
        if oshape is None or oshape[1] != shape[1] or oshape[0] != shape[0]:
            raise Blocked("resizes the channel axis")
        for t in node.inputs[1:]:
            if t.name and not is_constant(t):
                raise Blocked("scales/sizes are not constant")
        self.same_layout(space, node.outputs[0])

    op_Upsample = op_Resize

    def op_Pad(self, node) -> None:
        x = node.inputs[0]
        space = self.space(x)
        rank = len(static_shape(x))
        pads = node.attrs.get("pads")
        if pads is None:
            pads = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
            if pads is None:
                raise Blocked("pads are not constant")
            pads = pads.tolist()
        if len(node.inputs) > 3 and node.inputs[3].name:
            raise Blocked("Pad with axes input")
        for a in range(space.axis, space.axis + len(space.dims)):
            if pads[a] or pads[a + rank]:
                raise Blocked("pads the channel axis")
        self.same_layout(space, node.outputs[0])

    def op_Flatten(self, node) -> None:
        x = node.inputs[0]
        shape = static_shape(x)
        space = self.space(x)
        k = int(node.attrs.get("axis", 1)) % (len(shape) + 1)
        if len(space.dims) != 1 or k > space.axis or math.prod(shape[k:space.axis]) != 1:
            raise Blocked("flattens the channel axis into the batch")
        inner = math.prod(shape[space.axis + 1:])
        self.new_space(node.outputs[0], 1, (space.dims[0] * inner,), space.unit * inner, shares=space)

    def op_Reshape(self, node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        ishape, oshape = static_shape(x), static_shape(out)
        if ishape is None or oshape is None:
            raise Blocked("shapes unknown")
        if not isinstance(node.inputs[1], gs.Constant):
            raise Blocked("target shape is not an initializer")
        space = self.space(x)
        a, s = space.axis, len(space.dims)
        size = math.prod(space.dims)
        suffix = math.prod(ishape[a + s:])
        if tuple(oshape[:a]) != tuple(ishape[:a]):
            raise Blocked("reshape moves dims across the channel axis")
        for s2 in range(1, len(oshape) - a + 1):
            if math.prod(oshape[a:a + s2]) == size and math.prod(oshape[a + s2:]) == suffix:
                if s2 > 1 and space.unit != 1:
                    raise Blocked("splits a flattened channel axis")
                self.new_space(out, a, tuple(oshape[a:a + s2]), space.unit, product=s2 > 1, shares=space)
                return
        if s == 1 and len(oshape) == a + 1 and oshape[a] == size * suffix:
            self.new_space(out, a, (oshape[a],), space.unit * suffix, shares=space)
            return
        raise Blocked("reshape mixes the channel axis with other axes")

    def op_Transpose(self, node) -> None:
        x = node.inputs[0]
        rank = len(static_shape(x))
        perm = [int(p) for p in node.attrs.get("perm", list(range(rank))[::-1])]
        space = self.space(x)
        positions = [perm.index(space.axis + i) for i in range(len(space.dims))]
        lo = min(positions)
        if sorted(positions) != list(range(lo, lo + len(positions))):
            raise Blocked("transpose separates the channel axes")
        order = sorted(range(len(positions)), key=lambda i: positions[i])  # input span index at each output slot
        out_dims = tuple(space.dims[i] for i in order)
        if len(space.dims) == 1:
            self.new_space(node.outputs[0], lo, out_dims, space.unit, shares=space)
            return
        sout = self.new_space(node.outputs[0], lo, out_dims, space.unit)
        coords = np.indices(space.dims).reshape(len(space.dims), -1)  # in-coords of each in-flat index
        out_flat = np.ravel_multi_index(tuple(coords[i] for i in order), out_dims)
        self.edges.extend(zip(range(space.base, space.base + space.units), (sout.base + out_flat).tolist()))

    def _squeeze_axes(self, node, rank_in: int, rank_out: int, insert: bool) -> list[int]:
        axes = self._axes(node)
        if axes is None:
            if insert:
                raise Blocked("Unsqueeze without axes")
            shape = static_shape(node.inputs[0])
            return [i for i, d in enumerate(shape) if d == 1]
        return sorted(a % (rank_out if insert else rank_in) for a in axes)

    def op_Unsqueeze(self, node) -> None:
        x = node.inputs[0]
        space = self.space(x)
        rank_in, rank_out = len(static_shape(x)), len(static_shape(node.outputs[0]))
        axes = self._squeeze_axes(node, rank_in, rank_out, True)
        kept = [i for i in range(rank_out) if i not in axes]  # kept[j] = output position of input axis j
        positions = [kept[space.axis + i] for i in range(len(space.dims))]
        if positions != list(range(positions[0], positions[0] + len(positions))):
            raise Blocked("unsqueeze splits the channel axes")
        self.same_layout(space, node.outputs[0], positions[0])

    def op_Squeeze(self, node) -> None:
        x = node.inputs[0]
        space = self.space(x)
        rank_in, rank_out = len(static_shape(x)), len(static_shape(node.outputs[0]))
        axes = self._squeeze_axes(node, rank_in, rank_out, False)
        if set(axes) & set(range(space.axis, space.axis + len(space.dims))):
            raise Blocked("squeezes the channel axis")
        self.same_layout(space, node.outputs[0], space.axis - sum(a < space.axis for a in axes))


def analyze_channels(graph: gs.Graph) -> ChannelAnalysis:
    """Build channel spaces, merge exactly-coupled units, and group and block them (see module doc)."""
    dynamic = [t.name for t in graph.tensors().values() if isinstance(t, gs.Variable) and static_shape(t) is None]
    if dynamic:
        raise SlimccError(f"channel analysis needs static shapes, but {dynamic[0]!r} (and {len(dynamic) - 1} more) "
                          "is dynamic; give --input-shape and run canonicalize first")
    builder = _Builder(graph)
    builder.run()
    labels = component_labels(builder.units, builder.edges)
    balance(labels, [(space.base, space.units, groups) for space, groups, _ in builder.balances])
    root_of = labels.tolist()
    comp_index: dict[int, int] = {}
    components: list[Component] = []
    element_component: dict[str, np.ndarray] = {}
    for name, space in builder.spaces.items():
        ids = np.empty(space.units, dtype=np.int64)
        for k in range(space.units):
            root = root_of[space.base + k]
            if root not in comp_index:
                comp_index[root] = len(components)
                components.append(Component(len(components), {}))
            cid = comp_index[root]
            ids[k] = cid
            components[cid].members.setdefault(name, []).append(k)
        element_component[name] = ids
    for name, reasons in builder.blocked.items():
        for cid in set(element_component.get(name, np.empty(0, np.int64)).tolist()):
            for reason in reasons:
                if reason not in components[cid].blocked:
                    components[cid].blocked.append(reason)
    by_signature: dict[tuple, Group] = {}
    groups: list[Group] = []
    for comp in components:
        signature = tuple(sorted(comp.members))
        group = by_signature.get(signature)
        if group is None:
            group = Group(len(groups), signature, [], [])
            by_signature[signature] = group
            groups.append(group)
        group.components.append(comp.id)
        comp.group = group.id
        for reason in comp.blocked:
            if reason not in group.blocked:
                group.blocked.append(reason)
    for group in groups:  # a group is pruned as a whole or not at all
        if group.blocked:
            for cid in group.components:
                components[cid].blocked = list(group.blocked)
    uniform = []
    for space, conv_groups, node in builder.balances:
        proven = check_balanced(element_component[space.tensor], conv_groups)
        if not proven:
            raise SlimccError(f"{node}: channel classes are not uniform over its {conv_groups} groups")
        uniform.append({"node": node, "tensor": space.tensor, "groups": conv_groups, "uniform": proven})
    return ChannelAnalysis(builder.spaces, components, groups, builder.roles,
                           [n.op for n in graph.nodes], element_component, uniform)
