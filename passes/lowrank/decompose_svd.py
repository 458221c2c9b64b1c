"""decompose-svd: truncated SVD of a conv/Gemm/MatMul weight, emitted as two convs or as GEMMs over one im2col."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.lowrank.driver import Plan, RankOptions, decompose_graph
from slimcc.passes.lowrank.emit import LastFactor, NameScope, constant, node, replace_node, variable
from slimcc.passes.lowrank.im2col import emit_im2col, weight_as_columns
from slimcc.passes.lowrank.layers import ConvLayer, MatMulLayer, Refusal, read_conv, read_matmul
from slimcc.passes.lowrank.ranks import (RankPolicy, energy_rank, evbmf_rank, round_rank,
                                         svd_macs, svd_rank_for_speedup)
from slimcc.passes.lowrank.svd import SvdFactors, singular_values, truncated_svd
from slimcc.passes.lowrank.tucker import relative_error


@register_pass("decompose-svd")
@dataclass(frozen=True)
class DecomposeSvd(Pass, RankOptions):
    """Truncated SVD B = U S V^T of convs (form=conv: KxK->R then 1x1; form=gemm: one im2col + MatMuls) and Gemm/MatMul.

    Options as decompose-tucker (`speedup`, `rank`, `energy`, `evbmf`, `floor`, `ranks`,
    `multiple`, `min_saving`, `force`, `measure`, `refit`, `exclude`), plus `form`
    (conv | gemm, for convs) and `keep_s` (keep S as its own factor: a diagonal 1x1 conv in
    conv form, a third MatMul/Gemm in GEMM form; otherwise sqrt(S) is folded into both sides).
    """

    speedup: float = 0.0
    rank: float = 0.0
    energy: float = 0.0
    evbmf: bool = False
    floor: float = 0.1
    ranks: str = ""
    form: Literal["conv", "gemm"] = "conv"
    keep_s: bool = False
    multiple: int = 8
    min_saving: float = 0.2
    force: bool = False
    measure: bool = False
    refit: bool = True
    exclude: str = ""

    exact: ClassVar[bool] = False

    def __post_init__(self):
        self.validate_rank_options()

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        policy, explicit, gates = self.policy, self.explicit_ranks, self.gates

        def plan(n: gs.Node) -> Plan | Refusal:
            rank = explicit.get(n.name or n.outputs[0].name)
            if rank is not None and len(rank) != 1:
                return Refusal("decompose-svd takes one rank per layer (NAME=R)")
            if n.op == "Conv":
                return plan_conv(n, policy, rank[0] if rank else None, self.form, self.keep_s, model.opset)
            return plan_matmul(n, policy, rank[0] if rank else None, self.keep_s)

        return decompose_graph(model, ctx, ("Conv", "Gemm", "MatMul"), plan, gates, self.refit)


def choose_svd_rank(matrices: list[np.ndarray], policy: RankPolicy, explicit: int | None,
                    speedup_rank: float) -> int:
    """One rank for all groups' [rows, cols] matrices under the policy, rounded and capped."""
    limit = min(matrices[0].shape)
    step = policy.multiple
    if explicit:
        return min(explicit, limit)
    if policy.mode == "rank":
        return round_rank(policy.rank * limit, limit, step, up=True)
    if policy.mode == "speedup":
        return round_rank(speedup_rank, limit, step)
    if policy.mode == "energy":
        wanted = max(energy_rank(singular_values(m), policy.energy) for m in matrices)
    else:
        wanted = max(max(evbmf_rank(m), policy.floor * limit) for m in matrices)
    return round_rank(wanted, limit, step, up=True)


def plan_conv(n: gs.Node, policy: RankPolicy, explicit: int | None, form: str, keep_s: bool,
              opset: int) -> Plan | Refusal:
    """Analyse one Conv for the two-factor SVD (conv or GEMM form)."""
    layer = read_conv(n)
    if isinstance(layer, Refusal):
        return layer
    g, co = layer.group, layer.cout // layer.group
    if form == "gemm" and g > 1:
        return Refusal(f"grouped conv (group={g}) in gemm form: one im2col per group is not emitted; use form=conv")
    if form == "gemm" and opset < 11:
        return Refusal(f"gemm form needs opset >= 11 (Pad/Slice with tensor inputs); model has {opset}")
    weight = np.asarray(layer.weight, dtype=np.float64)
    if form == "gemm":
        matrices = [weight_as_columns(weight)]
    else:
        matrices = [weight[i * co:(i + 1) * co].reshape(co, -1) for i in range(g)]
    geo = layer.geometry
    rank = choose_svd_rank(matrices, policy, explicit, svd_rank_for_speedup(geo, policy.target_speedup))
    factors = [truncated_svd(m, rank) for m in matrices]
    approx = np.concatenate([f.reconstruct() for f in factors], axis=0)
    error = relative_error(np.concatenate(matrices, axis=0), approx)

    def rewrite(graph: gs.Graph, target: gs.Node, scope: NameScope) -> LastFactor | None:
        if form == "gemm":
            return emit_conv_gemm(graph, target, layer, factors[0], keep_s, scope)
        return emit_conv_conv(graph, target, layer, factors, keep_s, scope)

    details = {"form": form, **({"groups": g} if g > 1 else {})}
    return Plan(ranks=[rank], macs_before=geo.original_macs, macs_after=svd_macs(geo, rank), rel_error=error,
                rewrite=rewrite, details=details)


def _split(f: SvdFactors, keep_s: bool) -> tuple[np.ndarray, np.ndarray]:
    return (f.left, f.right) if keep_s else f.folded()


def emit_conv_conv(graph: gs.Graph, target: gs.Node, layer: ConvLayer, factors: list[SvdFactors], keep_s: bool,
                   scope: NameScope) -> LastFactor | None:
    """KxK conv Cin -> R (original stride/pads/dilation), [1x1 conv by diag S], 1x1 conv R -> Cout with the bias."""
    dtype, g, rank = layer.weight.dtype, layer.group, factors[0].s.shape[0]
    kh, kw = layer.kernel_hw
    lefts, rights = zip(*(_split(f, keep_s) for f in factors))
    w_first = np.concatenate([r.reshape(rank, -1, kh, kw) for r in rights], axis=0)
    w_last = np.concatenate(lefts, axis=0)[:, :, None, None]
    bias = layer.bias if layer.bias is not None else np.zeros(layer.cout, dtype)
    x, y = target.inputs[0], target.outputs[0]
    base = target.name or y.name
    n_, _, oh, ow = layer.output_shape
    mid = variable(scope, f"{base}_svd_mid", y.dtype, [n_, g * rank, oh, ow])
    nodes = [node(scope, "Conv", f"{base}_svd_first", [x, constant(scope, f"{base}_svd_first_w", w_first, dtype)],
                  [mid], {**layer.core_attrs, "group": g})]
    if keep_s:  # S as its own 1x1 conv with a diagonal kernel: the literal three-conv form of U S V^T
        scaled = variable(scope, f"{base}_svd_scaled", y.dtype, [n_, g * rank, oh, ow])
        w_s = np.concatenate([np.diag(f.s) for f in factors], axis=0)[:, :, None, None]
        nodes.append(node(scope, "Conv", f"{base}_svd_s", [mid, constant(scope, f"{base}_svd_s_w", w_s, dtype)], [scaled],
                          {"kernel_shape": [1, 1], "group": g}))
        mid = scaled
    c_weight = constant(scope, f"{base}_svd_last_w", w_last, dtype)
    c_bias = constant(scope, f"{base}_svd_last_b", bias, dtype)
    nodes.append(node(scope, "Conv", f"{base}_svd_last", [mid, c_weight, c_bias], [y], {"kernel_shape": [1, 1], "group": g}))
    replace_node(graph, target, nodes)
    if g > 1:
        return None
    return LastFactor(layer=base, input_name=mid.name, output_name=y.name, weight=c_weight, bias=c_bias,
                      layout="conv", axis=1)


def emit_conv_gemm(graph: gs.Graph, target: gs.Node, layer: ConvLayer, factors: SvdFactors, keep_s: bool,
                   scope: NameScope) -> LastFactor:
    """im2col (Pad/Slice/Concat/Reshape), MatMul by V^T, [MatMul by diag S], MatMul by U, [+bias], Reshape."""
    dtype = layer.weight.dtype
    x, y = target.inputs[0], target.outputs[0]
    base = target.name or y.name
    n_, cout, oh, ow = layer.output_shape
    rank = factors.s.shape[0]
    left, right = _split(factors, keep_s)
    nodes, cols = emit_im2col(layer, x, scope, base)
    t = variable(scope, f"{base}_svd_v", y.dtype, [n_, rank, oh * ow])
    nodes.append(node(scope, "MatMul", f"{base}_svd_v", [constant(scope, f"{base}_svd_vt", right, dtype), cols], [t]))
    if keep_s:
        scaled = variable(scope, f"{base}_svd_s", y.dtype, [n_, rank, oh * ow])
        nodes.append(node(scope, "MatMul", f"{base}_svd_s",
                          [constant(scope, f"{base}_svd_diag_s", np.diag(factors.s), dtype), t], [scaled]))
        t = scaled
    c_weight = constant(scope, f"{base}_svd_u", left, dtype)
    product = variable(scope, f"{base}_svd_u", y.dtype, [n_, cout, oh * ow])
    nodes.append(node(scope, "MatMul", f"{base}_svd_u", [c_weight, t], [product]))
    c_bias = None
    if layer.bias is not None:
        c_bias = constant(scope, f"{base}_svd_bias", layer.bias.reshape(cout, 1), dtype)
        biased = variable(scope, f"{base}_svd_biased", y.dtype, [n_, cout, oh * ow])
        nodes.append(node(scope, "Add", f"{base}_svd_bias", [product, c_bias], [biased]))
        product = biased
    shape = constant(scope, f"{base}_svd_out_shape", np.array([0, cout, oh, ow]), np.int64)
    nodes.append(node(scope, "Reshape", f"{base}_svd_out", [product, shape], [y]))
    replace_node(graph, target, nodes)
    return LastFactor(layer=base, input_name=t.name, output_name=y.name, weight=c_weight, bias=c_bias,
                      layout="rows", axis=1)


def plan_matmul(n: gs.Node, policy: RankPolicy, explicit: int | None, keep_s: bool) -> Plan | Refusal:
    """Analyse one Gemm / MatMul with a constant 2-D right operand."""
    layer = read_matmul(n)
    if isinstance(layer, Refusal):
        return layer
    k, cols = layer.matrix.shape
    matrix = np.asarray(layer.matrix, dtype=np.float64)
    rank = choose_svd_rank([matrix], policy, explicit, k * cols / (policy.target_speedup * (k + cols)))
    factors = truncated_svd(matrix, rank)

    def rewrite(graph: gs.Graph, target: gs.Node, scope: NameScope) -> LastFactor | None:
        return emit_matmul(graph, target, layer, factors, keep_s, scope)

    return Plan(ranks=[rank], macs_before=layer.macs, macs_after=layer.rows * (k + cols) * rank,
                rel_error=relative_error(matrix, factors.reconstruct()), rewrite=rewrite, details={"op": n.op})


def emit_matmul(graph: gs.Graph, target: gs.Node, layer: MatMulLayer, factors: SvdFactors, keep_s: bool,
                scope: NameScope) -> LastFactor | None:
    """A @ B -> (A @ U') [@ diag S] @ V'; a Gemm keeps transA on the first factor, transB/alpha/beta/C on the last."""
    dtype = np.asarray(layer.matrix).dtype
    a, y = target.inputs[0], target.outputs[0]
    base = target.name or y.name
    rank = factors.s.shape[0]
    left, right = _split(factors, keep_s)  # [K, R], [R, N]
    lead = list(a.shape[:-1]) if target.op == "MatMul" else [layer.rows]
    gemm = target.op == "Gemm"

    def stored(matrix: np.ndarray) -> np.ndarray:
        return matrix.T if gemm and layer.trans_b else matrix

    def linear(inputs, out, label, attrs=None):
        return node(scope, "Gemm" if gemm else "MatMul", f"{base}_svd_{label}", inputs, [out], attrs if gemm else None)

    t = variable(scope, f"{base}_svd_u", y.dtype, lead + [rank])
    first_attrs = {"transA": layer.trans_a, "transB": layer.trans_b}
    nodes = [linear([a, constant(scope, f"{base}_svd_u", stored(left), dtype)], t, "u", first_attrs)]
    if keep_s:
        scaled = variable(scope, f"{base}_svd_s", y.dtype, lead + [rank])
        nodes.append(linear([t, constant(scope, f"{base}_svd_diag_s", np.diag(factors.s), dtype)], scaled, "s", {}))
        t = scaled
    c_weight = constant(scope, f"{base}_svd_v", stored(right), dtype)
    last_inputs = [t, c_weight]
    last_attrs = {"transB": layer.trans_b, "alpha": layer.alpha, "beta": layer.beta}
    if gemm and layer.bias is not None:
        last_inputs.append(layer.bias)
    nodes.append(linear(last_inputs, y, "v", last_attrs))
    replace_node(graph, target, nodes)
    bias = layer.bias if isinstance(layer.bias, gs.Constant) and np.asarray(layer.bias.values).size == right.shape[1] else None
    if layer.bias is not None and bias is None:
        return None  # a broadcast or computed C cannot be refitted
    return LastFactor(layer=base, input_name=t.name, output_name=y.name, weight=c_weight, bias=bias,
                      layout="rows" if gemm and layer.trans_b else "cols", axis=-1, scale=layer.alpha,
                      bias_scale=layer.beta)
