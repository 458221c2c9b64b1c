"""lower-recurrent: LSTM and GRU with a static sequence length unrolled into primitive ops.

TVM 0.27's ONNX importer rejects LSTM and GRU. This exact rewrite replaces each node by
ops every importer has (MatMul, Add, Sub, Mul, Sigmoid, Tanh, Split, Slice, Concat,
Unsqueeze, Squeeze, Transpose): the input projection X*W^T + Wb + Rb of every time step
and direction is one batched MatMul ([D, T, N, I] x [D, 1, I, G*H], the reverse direction
reading the time-reversed sequence), then the recurrence is unrolled step by step with all
directions batched on the leading axis (state [D, 1, N, H]). Weights are re-laid out with
numpy when the pass runs.

`canonicalize` runs it (option `recurrent=false` keeps the nodes), so `slimcc compile`
lowers recurrent layers without being asked. Refused with a reason, never guessed:
non-default activations, activation_alpha/beta, clip, input_forget=1, a sequence length
that is not static or above `max_steps`, sequence_lens other than the full length
everywhere, non-constant W/R/B/P, opsets below 13. Peepholes (P), initial states (constant
or computed), layout 0/1, all directions and GRU linear_before_reset 0/1 are lowered.
Only the outputs (Y, Y_h, Y_c) something reads are emitted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PipelineError
from slimcc.passes.base import PassContext, PassResult, register_pass
from slimcc.passes.canonicalize._recurrent import RECURRENT_OPS, Recurrent, read_recurrent
from slimcc.passes.lowrank.emit import NameScope, constant, node, replace_node, variable
from slimcc.passes.pattern import Match, Pattern, RewritePass, Rule, constant_value

DEFAULT_MAX_STEPS = 512


class _Builder:
    """Collects the nodes replacing one recurrent node; every name starts with `prefix`."""

    def __init__(self, graph: gs.Graph, prefix: str, dtype: np.dtype):
        self.scope = NameScope(graph)
        self.prefix = prefix
        self.dtype = dtype
        self.nodes: list[gs.Node] = []
        self._ints: dict[tuple[int, ...], gs.Constant] = {}

    def const(self, label: str, values, dtype=None) -> gs.Constant:
        """A new constant (in the node's float type unless `dtype`)."""
        return constant(self.scope, f"{self.prefix}/{label}", values, dtype or self.dtype)

    def ints(self, values: Sequence[int]) -> gs.Constant:
        """An int64 constant (axes, sizes, starts); equal values share one tensor."""
        key = tuple(int(v) for v in values)
        if key not in self._ints:
            self._ints[key] = self.const(f"ints{len(self._ints)}", np.asarray(key, np.int64), np.int64)
        return self._ints[key]

    def op(self, op: str, label: str, inputs: list[gs.Tensor], *, out: gs.Tensor | None = None, n_out: int = 1,
           **attrs) -> gs.Tensor | list[gs.Tensor]:
        """Append a node; its output (or outputs, when `n_out` > 1) is `out` or new variables."""
        name = f"{self.prefix}/{label}"
        outputs = [out] if out is not None else [variable(self.scope, name, self.dtype, None) for _ in range(n_out)]
        self.nodes.append(node(self.scope, op, name, inputs, outputs, attrs))
        return outputs if n_out > 1 else outputs[0]

    def split(self, x: gs.Tensor, sizes: list[int], axis: int, label: str) -> list[gs.Tensor]:
        """Split `x` along `axis` into pieces of `sizes` (no node for a single piece)."""
        if len(sizes) == 1:
            return [x]
        return self.op("Split", label, [x, self.ints(sizes)], n_out=len(sizes), axis=axis)

    def concat(self, parts: list[gs.Tensor], axis: int, label: str) -> gs.Tensor:
        """Concatenate along `axis` (no node for a single part)."""
        return parts[0] if len(parts) == 1 else self.op("Concat", label, parts, axis=axis)


def _input_steps(b: _Builder, rec: Recurrent) -> list[gs.Tensor]:
    """X*W^T + bias for every time step as one MatMul, split into T tensors [D, 1, N, G*H]."""
    x = rec.x if rec.layout == 0 else b.op("Transpose", "x_time_major", [rec.x], perm=[1, 0, 2])
    stacked = []
    for direction in rec.directions:
        seq = x
        if direction == "reverse" and rec.seq > 1:
            seq = b.concat(b.split(x, [1] * rec.seq, 0, "x_steps")[::-1], 0, "x_reversed")
        stacked.append(b.op("Unsqueeze", f"x_{direction}", [seq, b.ints([0])]))
    xw = b.op("MatMul", "input_projection", [b.concat(stacked, 0, "x_directions"), b.const("w_t", rec.w_t[:, None])])
    if rec.bias is not None:
        xw = b.op("Add", "input_projection_bias", [xw, b.const("input_bias", rec.bias[:, None, None, :])])
    return b.split(xw, [1] * rec.seq, 1, "input_steps")


def _initial_state(b: _Builder, rec: Recurrent, tensor: gs.Tensor | None, label: str) -> gs.Tensor:
    """The initial hidden/cell state as [D, 1, N, H] (zeros when the input is absent)."""
    shape = (len(rec.directions), 1, rec.batch, rec.hidden)
    value = None if tensor is None else constant_value(tensor)
    if tensor is None or value is not None:
        value = np.zeros(shape) if value is None else (value.transpose(1, 0, 2) if rec.layout else value)
        return b.const(label, value.reshape(shape))
    if rec.layout:
        tensor = b.op("Transpose", f"{label}_direction_major", [tensor], perm=[1, 0, 2])
    return b.op("Unsqueeze", label, [tensor, b.ints([1])])


def _step_weights(b: _Builder, rec: Recurrent) -> dict[str, gs.Tensor]:
    """Constants every step reads: R^T ([D, 1, H, G*H], GRU without linear_before_reset split
    into its z/r and h columns), peepholes and GRU's reset-gated bias as [D, 1, 1, H]."""
    hidden, r_t = rec.hidden, rec.r_t[:, None]
    weights: dict[str, gs.Tensor] = {}
    if rec.kind == "GRU" and not rec.linear_before_reset:
        weights["r_zr"] = b.const("r_zr_t", r_t[..., :2 * hidden])
        weights["r_h"] = b.const("r_h_t", r_t[..., 2 * hidden:])
    else:
        weights["r"] = b.const("r_t", r_t)
    if rec.reset_bias is not None:
        weights["reset_bias"] = b.const("reset_bias", rec.reset_bias[:, None, None, :])
    if rec.peepholes is not None:
        for k, gate in enumerate("iof"):
            weights[f"p_{gate}"] = b.const(f"p_{gate}", rec.peepholes[:, None, None, k * hidden:(k + 1) * hidden])
    if rec.kind == "GRU":
        weights["one"] = b.const("one", np.ones(()))
    return weights


def _peephole(b: _Builder, pre: gs.Tensor, weights: dict, gate: str, cell: gs.Tensor, label: str) -> gs.Tensor:
    """pre + P_gate * cell when the LSTM has peepholes."""
    peep = weights.get(f"p_{gate}")
    if peep is None:
        return pre
    return b.op("Add", f"{label}/peephole_{gate}", [pre, b.op("Mul", f"{label}/p_{gate}_c", [peep, cell])])


def _lstm_step(b: _Builder, rec: Recurrent, weights: dict, xw: gs.Tensor, h: gs.Tensor, c: gs.Tensor,
               label: str) -> tuple[gs.Tensor, gs.Tensor]:
    """One LSTM step: gates i, o, f, c from xw + h*R^T; c' = f*c + i*tanh(g); h' = o*tanh(c')."""
    gates = b.op("Add", f"{label}/gates", [xw, b.op("MatMul", f"{label}/recurrence", [h, weights["r"]])])
    i, o, f, g = b.split(gates, [rec.hidden] * 4, -1, f"{label}/gate")
    i = b.op("Sigmoid", f"{label}/input_gate", [_peephole(b, i, weights, "i", c, label)])
    f = b.op("Sigmoid", f"{label}/forget_gate", [_peephole(b, f, weights, "f", c, label)])
    g = b.op("Tanh", f"{label}/candidate", [g])
    c = b.op("Add", f"{label}/cell", [b.op("Mul", f"{label}/keep", [f, c]), b.op("Mul", f"{label}/write", [i, g])])
    o = b.op("Sigmoid", f"{label}/output_gate", [_peephole(b, o, weights, "o", c, label)])
    h = b.op("Mul", f"{label}/hidden", [o, b.op("Tanh", f"{label}/cell_tanh", [c])])
    return h, c


def _gru_step(b: _Builder, rec: Recurrent, weights: dict, xw: gs.Tensor, h: gs.Tensor, _cell, label: str):
    """One GRU step: z, r = sigmoid(...); candidate with r applied before (default) or after
    (linear_before_reset=1) the recurrent MatMul; h' = (1 - z) * candidate + z * h."""
    hidden = rec.hidden
    x_zr, x_h = b.split(xw, [2 * hidden, hidden], -1, f"{label}/x_gates")
    if rec.linear_before_reset:
        h_all = b.op("MatMul", f"{label}/recurrence", [h, weights["r"]])
        h_zr, h_h = b.split(h_all, [2 * hidden, hidden], -1, f"{label}/h_gates")
        if "reset_bias" in weights:
            h_h = b.op("Add", f"{label}/h_bias", [h_h, weights["reset_bias"]])
    else:
        h_zr = b.op("MatMul", f"{label}/recurrence", [h, weights["r_zr"]])
    zr = b.op("Sigmoid", f"{label}/update_reset", [b.op("Add", f"{label}/zr_pre", [x_zr, h_zr])])
    z, r = b.split(zr, [hidden, hidden], -1, f"{label}/zr")
    if rec.linear_before_reset:
        reset = b.op("Mul", f"{label}/reset", [r, h_h])
    else:
        reset = b.op("MatMul", f"{label}/reset_recurrence", [b.op("Mul", f"{label}/reset", [r, h]), weights["r_h"]])
    candidate = b.op("Tanh", f"{label}/candidate", [b.op("Add", f"{label}/candidate_pre", [x_h, reset])])
    keep = b.op("Mul", f"{label}/new_part", [b.op("Sub", f"{label}/one_minus_z", [weights["one"], z]), candidate])
    return b.op("Add", f"{label}/hidden", [keep, b.op("Mul", f"{label}/old_part", [z, h])]), None


def _emit_outputs(b: _Builder, rec: Recurrent, hs: list[gs.Tensor], c_last: gs.Tensor | None) -> None:
    """Write Y ([T, D, N, H]; layout 1: [N, T, D, H]), Y_h and Y_c ([D, N, H]; layout 1: [N, D, H])
    into the node's own output tensors, for those that are read."""
    y = rec.outputs.get(0)
    if y is not None:
        parts = []
        for k, direction in enumerate(rec.directions):  # the reverse direction's step s is time T-1-s
            seq = b.concat(hs if direction == "forward" else hs[::-1], 1, f"y_{direction}")
            if len(rec.directions) > 1:
                seq = b.op("Slice", f"y_{direction}_only", [seq, b.ints([k]), b.ints([k + 1]), b.ints([0])])
            parts.append(seq)
        b.op("Transpose", "y", [b.concat(parts, 0, "y_directions")], out=y,
             perm=[2, 1, 0, 3] if rec.layout else [1, 0, 2, 3])
    for slot, state in ((1, hs[-1]), (2, c_last)):
        out = rec.outputs.get(slot)
        if out is None or state is None:
            continue
        if rec.layout:
            squeezed = b.op("Squeeze", f"state{slot}_squeeze", [state, b.ints([1])])
            b.op("Transpose", f"state{slot}", [squeezed], out=out, perm=[1, 0, 2])
        else:
            b.op("Squeeze", f"state{slot}", [state, b.ints([1])], out=out)


def lower_recurrent(graph: gs.Graph, node: gs.Node, rec: Recurrent) -> None:
    """Replace `node` (read by `read_recurrent`) with its unrolled computation."""
    b = _Builder(graph, node.name or rec.x.name, rec.dtype)
    if rec.outputs:
        xw_steps = _input_steps(b, rec)
        weights = _step_weights(b, rec)
        h = _initial_state(b, rec, rec.initial_h, "h0")
        c = _initial_state(b, rec, rec.initial_c, "c0") if rec.kind == "LSTM" else None
        step = _lstm_step if rec.kind == "LSTM" else _gru_step
        hs = []
        for s, xw in enumerate(xw_steps):
            h, c = step(b, rec, weights, xw, h, c, f"t{s}")
            hs.append(h)
        _emit_outputs(b, rec, hs, c)
    replace_node(graph, node, b.nodes)


def _rules(max_steps: int) -> tuple[Rule, ...]:
    def check(match: Match) -> str | None:
        outcome = read_recurrent(match.root, match.graph, max_steps)
        return outcome if isinstance(outcome, str) else None

    def rewrite(graph: gs.Graph, match: Match) -> None:
        lower_recurrent(graph, match.root, read_recurrent(match.root, graph, max_steps))

    return tuple(Rule(f"lower-{op.lower()}", Pattern(op, capture="op"), rewrite=rewrite, check=check)
                 for op in RECURRENT_OPS)


def recurrent_refusals(graph: gs.Graph, max_steps: int = DEFAULT_MAX_STEPS) -> dict[str, str]:
    """Why lower-recurrent leaves each LSTM/GRU of `graph` in place, by node name (empty: none left)."""
    reasons = {}
    for n in graph.nodes:
        if n.op in RECURRENT_OPS:
            outcome = read_recurrent(n, graph, max_steps)
            if isinstance(outcome, str):
                reasons[n.name or (n.outputs[0].name if n.outputs else n.op)] = outcome
    return reasons


@register_pass("lower-recurrent")
class LowerRecurrent(RewritePass):
    """Unroll LSTM/GRU with a static sequence length into MatMul/Sigmoid/Tanh/Mul steps (TVM imports them).

    Exact. The input projection of all steps is one MatMul; the recurrence is unrolled with
    both directions batched. Run by `canonicalize` (so by `slimcc compile`); refuses, with a
    reason, clip, input_forget, non-default activations, per-sample sequence_lens, dynamic or
    over-`max_steps` sequence lengths. See the module docstring for the full contract.
    """

    max_steps: int = DEFAULT_MAX_STEPS

    def __post_init__(self):
        if self.max_steps < 1:
            raise PipelineError(f"lower-recurrent: max_steps={self.max_steps} must be at least 1")

    def active_rules(self) -> Sequence[Rule]:
        return _rules(self.max_steps)

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        recurrent = [n for n in model.graph.nodes if n.op in RECURRENT_OPS and n.inputs]
        if any(n.inputs[0].shape is None or not all(isinstance(d, int) for d in n.inputs[0].shape)
               for n in recurrent):
            model.refresh_shapes()  # the sequence length comes from X's inferred shape
        result = super().run(model, ctx)
        if result.modified:
            model.refresh_shapes()
        return result
