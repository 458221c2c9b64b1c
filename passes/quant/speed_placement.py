"""Speed-aware int8 placement: keep int8 only where onnxruntime measures it faster, islands included.

An int8 layer is not faster everywhere: onnxruntime's int8 depthwise convolution is slower than
its float one, a HardSwish after an int8 layer costs two integer element-wise kernels where the
float model fuses it into the convolution, and every switch between float and int8 costs a
QuantizeLinear or DequantizeLinear (and often a layout reorder) on the tensor between them.
So after the error budget has chosen the layers that may be int8, the placement keeps float,
from measurements, those whose int8 form does not pay for itself.

The estimate: the fp32 model and its all-int8 form are profiled (`layer_times`); a placement costs
each layer's fp32 or int8 kernel time, plus a transition cost for every change between float and
int8 along the layers in network order (the input and the output are float). The transition cost
is measured too: the all-int8 model's unattributed kernels minus the float model's, shared by its
two transitions (in at the first layer, out after the last). The cheapest placement among those
that only turn int8 layers float is found exactly by dynamic programming over the layer chain.
"""

from __future__ import annotations

from slimcc.passes.quant.layer_times import OTHER

FLOAT, INT8 = 0, 1


def transition_cost(times: dict[str, dict[str, float]]) -> float:
    """Microseconds one float <-> int8 switch costs, from the unattributed kernels of both models."""
    other = times.get(OTHER, {"fp32": 0.0, "int8": 0.0})
    return max(0.0, (other["int8"] - other["fp32"]) / 2.0)


def placement_time(order: list[str], int8: set[str], times: dict[str, dict[str, float]],
                   transition: float) -> float:
    """Estimated microseconds of the layers in `order` with exactly `int8` of them int8."""
    total, state = 0.0, FLOAT
    for name in order:
        now = INT8 if name in int8 else FLOAT
        total += times[name]["int8" if now == INT8 else "fp32"] + (transition if now != state else 0.0)
        state = now
    return total + (transition if state == INT8 else 0.0)


def fastest_subset(order: list[str], allowed: set[str], times: dict[str, dict[str, float]],
                   transition: float) -> set[str]:
    """The subset of `allowed` (layers the error budget lets be int8) whose placement_time is smallest."""
    inf = float("inf")
    cost = [0.0, inf]  # before the first layer: float input
    back: list[tuple[int, int]] = []
    for name in order:
        from_float = (cost[FLOAT], cost[INT8] + transition)
        from_int8 = (cost[FLOAT] + transition, cost[INT8])
        best_float = min((FLOAT, INT8), key=lambda s: from_float[s])
        best_int8 = min((FLOAT, INT8), key=lambda s: from_int8[s])
        cost = [from_float[best_float] + times[name]["fp32"],
                from_int8[best_int8] + times[name]["int8"] if name in allowed else inf]
        back.append((best_float, best_int8))
    state = FLOAT if cost[FLOAT] <= cost[INT8] + transition else INT8
    chosen = set()
    for name, (prev_float, prev_int8) in zip(reversed(order), reversed(back)):
        if state == INT8:
            chosen.add(name)
        state = prev_int8 if state == INT8 else prev_float
    return chosen
