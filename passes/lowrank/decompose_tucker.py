"""decompose-tucker: a KxK conv becomes 1x1 (Cin->R3), KxK (R3->R4), 1x1 (R4->Cout) by Tucker-2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.lowrank.driver import Plan, RankOptions, decompose_graph
from slimcc.passes.lowrank.emit import LastFactor, NameScope, constant, node, replace_node, variable
from slimcc.passes.lowrank.layers import ConvLayer, Refusal, read_conv
from slimcc.passes.lowrank.ranks import (RankPolicy, energy_rank, evbmf_rank, round_rank,
                                         tucker_macs, tucker_rank_for_speedup, unfold)
from slimcc.passes.lowrank.svd import singular_values
from slimcc.passes.lowrank.tucker import TuckerFactors, relative_error, tucker2


@register_pass("decompose-tucker")
@dataclass(frozen=True)
class DecomposeTucker(Pass, RankOptions):
    """Tucker-2 decomposition of KxK convs into 1x1 -> KxK -> 1x1 (ranks by speedup, rank, energy or evbmf).

    Options: `speedup` (target MACs speedup m, default 2: stride-aware closed-form bound),
    `rank` (fraction of Cin/Cout kept, 1.0 = full rank), `energy` (fraction of squared
    singular values kept per mode), `evbmf` (EVBMF rank with `floor`), `ranks`
    (`NAME=R` or `NAME=R3:R4` per layer, overrides the rule), `iters` (HOOI sweeps),
    `multiple` (rank rounding step), `min_saving` (predicted MACs saving gate), `force`
    (skip that gate), `measure` (keep only layers onnxruntime runs faster), `refit`
    (least-squares refit of the last factor when calibration data is given), `exclude`.
    """

    speedup: float = 0.0
    rank: float = 0.0
    energy: float = 0.0
    evbmf: bool = False
    floor: float = 0.1
    ranks: str = ""
    iters: int = 3
    multiple: int = 8
    min_saving: float = 0.2
    force: bool = False
    measure: bool = False
    refit: bool = True
    exclude: str = ""

    exact: ClassVar[bool] = False

    def __post_init__(self):
        self.validate_rank_options()
        if self.iters < 0:
            from slimcc.errors import PipelineError
            raise PipelineError(f"{self.name}: iters={self.iters} must be >= 0")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        explicit = self.explicit_ranks
        return decompose_graph(model, ctx, ("Conv",), lambda n: plan_tucker(n, self.policy, explicit, self.iters),
                               self.gates, self.refit)


def choose_tucker_ranks(layer: ConvLayer, policy: RankPolicy, explicit: tuple[int, ...] | None) -> tuple[int, int]:
    """(R3, R4) per group for a conv under the rank policy (or explicit ranks), rounded and capped."""
    geo = layer.geometry
    g, k = layer.group, geo.kernel
    ci, co = layer.cin // g, layer.cout // g
    limit3, limit4 = min(ci, co * k), min(co, ci * k)
    if explicit:
        r3, r4 = (explicit[0], explicit[0]) if len(explicit) == 1 else explicit
        return min(r3, limit3), min(r4, limit4)
    step = policy.multiple
    if policy.mode == "rank":
        return (round_rank(policy.rank * ci, limit3, step, up=True), round_rank(policy.rank * co, limit4, step, up=True))
    if policy.mode == "speedup":
        r = tucker_rank_for_speedup(geo, policy.target_speedup)
        return round_rank(r, limit3, step), round_rank(r, limit4, step)
    groups = np.asarray(layer.weight, dtype=np.float64).reshape(g, co, ci, *layer.kernel_hw)
    ranks = []
    for mode, dim, limit in ((1, ci, limit3), (0, co, limit4)):
        per_group = []
        for w in groups:
            matrix = unfold(w, mode)
            if policy.mode == "energy":
                per_group.append(energy_rank(singular_values(matrix), policy.energy))
            else:
                per_group.append(max(evbmf_rank(matrix), policy.floor * dim))
        ranks.append(round_rank(max(per_group), limit, step, up=True))
    return ranks[0], ranks[1]


def plan_tucker(n: gs.Node, policy: RankPolicy, explicit: dict, iters: int) -> Plan | Refusal:
    """Analyse one Conv: ranks, Tucker-2 factors per group, predicted MACs and relative error."""
    layer = read_conv(n)
    if isinstance(layer, Refusal):
        return layer
    kh, kw = layer.kernel_hw
    if kh * kw == 1:
        return Refusal("1x1 conv: Tucker-2 adds nothing over a two-factor SVD (use decompose-svd)")
    name = n.name or n.outputs[0].name
    r3, r4 = choose_tucker_ranks(layer, policy, explicit.get(name))
    g, co = layer.group, layer.cout // layer.group
    weight = np.asarray(layer.weight, dtype=np.float64)
    factors = [tucker2(weight[i * co:(i + 1) * co], r3, r4, iters) for i in range(g)]
    approx = np.concatenate([f.reconstruct() for f in factors], axis=0)
    geo = layer.geometry

    def rewrite(graph: gs.Graph, target: gs.Node, scope: NameScope) -> LastFactor:
        return emit_tucker(graph, target, layer, factors, scope)

    details = {"groups": g} if g > 1 else {}
    return Plan(ranks=[r3, r4], macs_before=geo.original_macs, macs_after=tucker_macs(geo, r3, r4),
                rel_error=relative_error(weight, approx), rewrite=rewrite, details=details)


def emit_tucker(graph: gs.Graph, target: gs.Node, layer: ConvLayer, factors: list[TuckerFactors],
                scope: NameScope) -> LastFactor:
    """Replace `target` (a copy of layer.node's op) by the three convs; returns the last factor for refit."""
    dtype = layer.weight.dtype
    g = layer.group
    r3, r4 = factors[0].u_in.shape[1], factors[0].u_out.shape[1]
    w_first = np.concatenate([f.u_in.T for f in factors], axis=0)[:, :, None, None]
    w_core = np.concatenate([f.core for f in factors], axis=0)
    w_last = np.concatenate([f.u_out for f in factors], axis=0)[:, :, None, None]
    bias = layer.bias if layer.bias is not None else np.zeros(layer.cout, dtype)
    x, y = target.inputs[0], target.outputs[0]
    base = target.name or y.name
    n_, _, h, w = layer.input_shape
    _, _, oh, ow = layer.output_shape
    t1 = variable(scope, f"{base}_tucker_in", y.dtype, [n_, g * r3, h, w])
    t2 = variable(scope, f"{base}_tucker_core", y.dtype, [n_, g * r4, oh, ow])
    c_weight, c_bias = constant(scope, f"{base}_tucker_last_w", w_last, dtype), constant(scope, f"{base}_tucker_last_b", bias, dtype)
    one = {"kernel_shape": [1, 1], "group": g}
    nodes = [
        node(scope, "Conv", f"{base}_tucker_first", [x, constant(scope, f"{base}_tucker_first_w", w_first, dtype)], [t1], one),
        node(scope, "Conv", f"{base}_tucker_core", [t1, constant(scope, f"{base}_tucker_core_w", w_core, dtype)], [t2],
             {**layer.core_attrs, "group": g}),
        node(scope, "Conv", f"{base}_tucker_last", [t2, c_weight, c_bias], [y], one),
    ]
    replace_node(graph, target, nodes)
    return LastFactor(layer=base, input_name=t2.name, output_name=y.name, weight=c_weight, bias=c_bias,
                      layout="conv", axis=1) if g == 1 else None
