"""A small declarative pattern matcher and rewrite driver over onnx-graphsurgeon graphs.

A pattern describes a node by op type (or a set of op types), attribute constraints and
its operands: nested node patterns (matched against the operand's producer), `Const()`
(an initializer or the output of a Constant node) and `Any()`. Names given with
`capture=` are collected in a `Match`. Add and Mul operands match in either order.

When a pattern does not match, the matcher says why; a rule's `check(match)` may also
refuse with a reason. `RewritePass` applies rules until nothing changes and keeps, per
rule, how many rewrites were applied and why the remaining candidates were refused;
`explain(graph, rule)` answers "why did my rule not fire" node by node.

Example (fold `Mul(x, 1.0)` away)::

    import numpy as np
    from slimcc.passes.base import register_pass
    from slimcc.passes.pattern import Any, Const, Pattern, RewritePass, Rule, replace_uses

    def drop_mul(graph, m):
        replace_uses(graph, m.root.outputs[0], m["x"])

    ONE = Rule("mul-by-one",
               Pattern("Mul", [Any(capture="x"), Const(capture="one", value=lambda v: np.all(v == 1))]),
               rewrite=drop_mul,
               check=lambda m: None if m.root.outputs[0].dtype == m["x"].dtype else "dtype changes")

    @register_pass("drop-mul-by-one")
    class DropMulByOne(RewritePass):
        '''Remove multiplications by one.'''
        rules = (ONE,)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any as AnyType, Callable, ClassVar, Iterable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.constants import constant_value  # noqa: F401  (re-exported: the passes import it from here)
from slimcc.ir.names import shared_names
from slimcc.passes.base import Pass, PassContext, PassResult

COMMUTATIVE_OPS = frozenset({"Add", "Mul"})


class MatchFailure(Exception):
    """Raised inside the matcher; `reason` says which constraint failed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Match:
    """A successful match: the root node plus named captures.

    `nodes[name]` holds captured nodes, `tensors[name]` captured operand tensors and
    `values[name]` the numpy value of captured constants. `match[name]` looks in all three
    (nodes first, then tensors).
    """

    root: gs.Node
    graph: gs.Graph
    nodes: dict[str, gs.Node] = field(default_factory=dict)
    tensors: dict[str, gs.Tensor] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str):
        if name in self.nodes:
            return self.nodes[name]
        return self.tensors[name]

    def all_nodes(self) -> list[gs.Node]:
        """The root and every captured node (what a rewrite may consume)."""
        return [self.root, *self.nodes.values()]


class Operand:
    """Base of operand patterns; `capture` names the matched tensor."""

    capture: str | None = None

    def match_tensor(self, tensor: gs.Tensor, match: Match, ctx: _MatchState) -> None:  # pragma: no cover
        raise NotImplementedError

    def _bind_tensor(self, tensor: gs.Tensor, match: Match) -> None:
        if self.capture is None:
            return
        bound = match.tensors.get(self.capture)
        if bound is not None and bound is not tensor:
            raise MatchFailure(f"capture {self.capture!r} would bind two different tensors")
        match.tensors[self.capture] = tensor


class Any(Operand):
    """Matches any operand tensor (a missing optional input does not match)."""

    def __init__(self, capture: str | None = None):
        self.capture = capture

    def match_tensor(self, tensor, match, ctx):
        self._bind_tensor(tensor, match)

    def __repr__(self) -> str:
        return f"Any({self.capture!r})" if self.capture else "Any()"


class Const(Operand):
    """Matches an initializer or a Constant node's output.

    `shape`: a tuple the value's shape must equal, or a predicate on the shape.
    `value`: a predicate on the numpy value, or a value it must equal.
    """

    def __init__(self, capture: str | None = None, *, shape=None, value=None):
        self.capture = capture
        self.shape = shape
        self.value = value

    def match_tensor(self, tensor, match, ctx):
        value = constant_value(tensor)
        if value is None:
            raise MatchFailure("is not a constant")
        if self.shape is not None:
            ok = self.shape(value.shape) if callable(self.shape) else tuple(value.shape) == tuple(self.shape)
            if not ok:
                raise MatchFailure(f"constant shape {list(value.shape)} is not accepted")
        if self.value is not None:
            ok = self.value(value) if callable(self.value) else np.array_equal(value, np.asarray(self.value))
            if not ok:
                raise MatchFailure("constant value is not accepted")
        self._bind_tensor(tensor, match)
        if self.capture is not None:
            match.values[self.capture] = value

    def __repr__(self) -> str:
        return f"Const({self.capture!r})" if self.capture else "Const()"


class Pattern(Operand):
    """A node pattern.

    op: an op type or a set of op types. inputs: operand patterns matched positionally
    (None = any inputs; fewer patterns than inputs = the rest are unconstrained).
    attrs: {name: required value or predicate(value)}; a predicate sees None when the
    attribute is absent. capture: name of the node in the Match. single_use: when this
    pattern is an operand, its output must feed only the consumer being matched (and not
    be a graph output). commutative: try both operand orders (default for Add/Mul).
    """

    def __init__(self, op: str | Iterable[str], inputs: Sequence[Operand] | None = None, *,
                 attrs: dict[str, AnyType] | None = None, capture: str | None = None,
                 single_use: bool = False, commutative: bool | None = None):
        self.ops = frozenset([op] if isinstance(op, str) else op)
        self.inputs = list(inputs) if inputs is not None else None
        self.attrs = dict(attrs or {})
        self.capture = capture
        self.single_use = single_use
        if commutative is None:
            commutative = self.ops <= COMMUTATIVE_OPS and self.inputs is not None and len(self.inputs) == 2
        self.commutative = commutative

    def describe_ops(self) -> str:
        """`Conv` or `one of Conv/Gemm`, for reasons."""
        ops = sorted(self.ops)
        return ops[0] if len(ops) == 1 else "one of " + "/".join(ops)

    def match_tensor(self, tensor, match, ctx):
        if len(tensor.inputs) != 1:
            raise MatchFailure(f"is not produced by a node (expected {self.describe_ops()})")
        self.match_node(tensor.inputs[0], match, ctx)
        if self.single_use and (len(tensor.outputs) != 1 or id(tensor) in ctx.graph_outputs):
            users = len(tensor.outputs) + (1 if id(tensor) in ctx.graph_outputs else 0)
            raise MatchFailure(f"{tensor.inputs[0].op} output has {users} consumers (needs exactly 1)")
        self._bind_tensor(tensor, match)

    def match_node(self, node: gs.Node, match: Match, ctx: _MatchState) -> None:
        """Match this pattern at `node`, filling `match`; raises MatchFailure with a reason."""
        if node.op not in self.ops:
            raise MatchFailure(f"producer is {node.op}, expected {self.describe_ops()}")
        for name, want in self.attrs.items():
            have = node.attrs.get(name)
            ok = want(have) if callable(want) else _attr_equal(have, want)
            if not ok:
                raise MatchFailure(f"{node.op} attribute {name}={_short(have)} is not accepted")
        if self.capture is not None:
            bound = match.nodes.get(self.capture)
            if bound is not None and bound is not node:
                raise MatchFailure(f"capture {self.capture!r} would bind two different nodes")
            match.nodes[self.capture] = node
        if self.inputs is None:
            return
        inputs = list(node.inputs)
        if len(inputs) < len(self.inputs):
            raise MatchFailure(f"{node.op} has {len(inputs)} inputs, pattern needs {len(self.inputs)}")
        orders = [list(range(len(self.inputs)))]
        if self.commutative and len(self.inputs) == 2:
            orders.append([1, 0])
        first_failure = None
        for order in orders:
            trial = Match(match.root, match.graph, dict(match.nodes), dict(match.tensors), dict(match.values))
            try:
                for pos, operand in enumerate(self.inputs):
                    tensor = inputs[order[pos]]
                    if tensor.is_empty():
                        raise MatchFailure(f"input {order[pos]}: optional input is missing")
                    try:
                        operand.match_tensor(tensor, trial, ctx)
                    except MatchFailure as exc:
                        raise MatchFailure(f"input {order[pos]}: {exc.reason}") from None
            except MatchFailure as exc:
                first_failure = first_failure or exc
                continue
            match.nodes, match.tensors, match.values = trial.nodes, trial.tensors, trial.values
            return
        raise first_failure

    def __repr__(self) -> str:
        return f"Pattern({self.describe_ops()!r}, capture={self.capture!r})"


def _attr_equal(have, want) -> bool:
    if isinstance(want, (list, tuple)):
        return have is not None and list(have) == list(want)
    return have == want


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class _MatchState:
    graph_outputs: set[int]


def match_node(pattern: Pattern, node: gs.Node, graph: gs.Graph) -> Match | str:
    """Match `pattern` rooted at `node`: a Match, or the reason (str) why it does not match."""
    match = Match(node, graph)
    try:
        pattern.match_node(node, match, _MatchState({id(t) for t in graph.outputs}))
    except MatchFailure as exc:
        return exc.reason
    return match


@dataclass(frozen=True)
class Rule:
    """A named rewrite: where it applies (`pattern`), whether it is legal (`check`), what it does.

    `check(match) -> str | None` returns a refusal reason or None; `rewrite(graph, match)`
    edits the graph. A rewrite must leave consumed nodes without outputs (the driver's
    cleanup then drops them) and must not touch nodes outside `match.all_nodes()` other
    than rewiring consumers.
    """

    name: str
    pattern: Pattern
    rewrite: Callable[[gs.Graph, Match], None]
    check: Callable[[Match], str | None] | None = None

    def try_match(self, node: gs.Node, graph: gs.Graph, state: _MatchState | None = None) -> Match | str:
        """A Match that passes `check`, or the reason it does not."""
        if node.op not in self.pattern.ops:
            return f"op is {node.op}, rule wants {self.pattern.describe_ops()}"
        match = Match(node, graph)
        try:
            self.pattern.match_node(node, match, state or _MatchState({id(t) for t in graph.outputs}))
        except MatchFailure as exc:
            return exc.reason
        if self.check is not None:
            reason = self.check(match)
            if reason:
                return reason
        return match


def explain(graph: gs.Graph, rule: Rule) -> list[tuple[str, str]]:
    """For every node whose op the rule's root pattern names: (node name, "matches" or the reason)."""
    state = _MatchState({id(t) for t in graph.outputs})
    result = []
    for node in graph.nodes:
        if node.op in rule.pattern.ops:
            outcome = rule.try_match(node, graph, state)
            result.append((node.name, "matches" if isinstance(outcome, Match) else outcome))
    return result


class RewritePass(Pass):
    """Helper base for passes made of rules: subclasses set `rules` (a tuple of Rule).

    Sweeps the graph applying every rule until a sweep changes nothing. Stats:
    `applied` {rule: count}, `rejected` {rule: {reason: count}} for the candidates left
    when the pass stopped, and `sweeps`.
    """

    rules: ClassVar[tuple[Rule, ...]] = ()
    max_sweeps: ClassVar[int] = 32

    def active_rules(self) -> Sequence[Rule]:
        """The rules this configured pass applies (override to depend on options)."""
        return self.rules

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        rules = list(self.active_rules())
        applied = {rule.name: 0 for rule in rules}
        rejected: dict[str, dict[str, int]] = {rule.name: {} for rule in rules}
        sweeps = 0
        while sweeps < self.max_sweeps:
            sweeps += 1
            graph = model.graph
            with shared_names(graph):  # one name index per sweep, not one per rewrite
                changed, rejected = self._sweep(graph, rules, applied)
            if not changed:
                break
            graph.cleanup().toposort()
        modified = any(applied.values())
        return PassResult(modified, {"applied": applied, "rejected": {k: v for k, v in rejected.items() if v},
                                     "sweeps": sweeps})

    @staticmethod
    def _sweep(graph: gs.Graph, rules: list[Rule], applied: dict[str, int]):
        state = _MatchState({id(t) for t in graph.outputs})
        touched: set[int] = set()
        rejected: dict[str, dict[str, int]] = {rule.name: {} for rule in rules}
        changed = False
        for node in list(graph.nodes):
            for rule in rules:
                if node.op not in rule.pattern.ops or not node.outputs or id(node) in touched:
                    continue
                outcome = rule.try_match(node, graph, state)
                if isinstance(outcome, str):
                    counts = rejected[rule.name]
                    counts[outcome] = counts.get(outcome, 0) + 1
                    continue
                nodes = outcome.all_nodes()
                if any(id(n) in touched or not n.outputs for n in nodes):
                    changed = True  # overlapping an earlier rewrite: retry on the next sweep
                    continue
                rule.rewrite(graph, outcome)
                touched.update(id(n) for n in nodes)
                applied[rule.name] += 1
                state = _MatchState({id(t) for t in graph.outputs})
                changed = True
        return changed, rejected


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of `old` read `new` instead (graph outputs included)."""
    for consumer in list(old.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is old:
                consumer.inputs[i] = new
    for i, tensor in enumerate(graph.outputs):
        if tensor is old:
            graph.outputs[i] = new


def remove_node(node: gs.Node) -> None:
    """Disconnect a node so the next graph.cleanup() drops it."""
    node.inputs.clear()
    node.outputs.clear()


__all__ = ["Any", "Const", "Pattern", "Match", "MatchFailure", "Rule", "RewritePass", "explain", "match_node",
           "constant_value", "replace_uses", "remove_node"]
