"""Benchmark kernel-shape pruning forms: dense 3x3 vs 2x3 rect vs positions (rows / gather), same run.

    python bench/kernel_shape.py [--repeats 20] [--shapes 64x56,128x28,256x14] [--json out.json]

Per conv shape (C in = C out, HxW spatial, stride 1, pad 1, bias): median latency on single-thread
onnxruntime (optimized, runs interleaved A, B, C, ... so machine noise hits all forms alike) of
- dense: the original 3x3 conv;
- rect_2x3: the conv cut to 2x3 (top row dropped) with shifted pads;
- rows_2x3 / gather_2x3: the same six positions as a sum of shifted convs / im2col-gather + MatMul
  (rows_2x3 is one rectangle, so it is the same graph as rect_2x3: their gap shows the noise);
- rows_cross / gather_cross: a non-rectangular 5-position "+" mask in both positions forms.
Each form's output is checked against the dense conv with the same taps zeroed (max_rel), and
the speedup (dense / form) is listed next to the MACs reduction (9 / kept positions).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.atomic import save_json_atomic
from slimcc.ir.verify import compare_models
from slimcc.passes.prune.kernel_shape_geometry import conv_geometry
from slimcc.passes.prune.kernel_shape_measure import layer_model, time_models
from slimcc.passes.prune.kernel_shape_rewrite import mask_kernel

MASKS = {
    "2x3": np.array([[0, 0, 0], [1, 1, 1], [1, 1, 1]], bool),
    "cross": np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool),
}


def conv_node(c: int, hw: int, seed: int = 0) -> gs.Node:
    """A 3x3, stride-1, pad-1 Conv c -> c over a 1 x c x hw x hw input, with bias."""
    rng = np.random.default_rng(seed)
    x = gs.Variable("x", dtype=np.float32, shape=[1, c, hw, hw])
    w = gs.Constant("w", rng.normal(0, 0.1, (c, c, 3, 3)).astype(np.float32))
    b = gs.Constant("b", rng.normal(0, 0.1, c).astype(np.float32))
    return gs.Node("Conv", "conv", attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]},
                   inputs=[x, w, b], outputs=[gs.Variable("y", dtype=np.float32)])


def bench_shape(c: int, hw: int, repeats: int) -> dict:
    """Latency of every form for one conv shape, plus correctness against the masked dense conv."""
    node = conv_node(c, hw)
    geom = conv_geometry(node)
    variants = {"dense": (layer_model(node, geom, "dense"), None)}
    variants["rect_2x3"] = (layer_model(node, geom, "rect", block=(1, 2, 0, 2)), MASKS["2x3"])
    for mask_name, keep in MASKS.items():
        for form in ("rows", "gather"):
            variants[f"{form}_{mask_name}"] = (layer_model(node, geom, form, keep=keep), keep)
    names = list(variants)
    seconds = time_models([variants[n][0] for n in names], repeats=repeats)
    dense_s = seconds[0]
    rows = {}
    for name, sec in zip(names, seconds):
        model, keep = variants[name]
        entry = {"ms": round(sec * 1e3, 4), "speedup": round(dense_s / sec, 3)}
        if keep is not None:
            reference = variants["dense"][0].copy()
            mask_kernel(next(n for n in reference.graph.nodes if n.op == "Conv"), keep)
            entry["macs_reduction"] = round(9 / int(keep.sum()), 3)
            entry["max_rel_vs_masked"] = float(f"{compare_models(reference, model).max_rel:.3g}")
        rows[name] = entry
    return {"shape": f"C{c} {hw}x{hw}", "forms": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shapes", default="64x56,128x28,256x14", help="CxHW list, e.g. 64x56,256x14")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    shapes = [tuple(int(v) for v in item.split("x")) for item in args.shapes.split(",") if item]
    results = {"threads": 1, "repeats": args.repeats, "results": [bench_shape(c, hw, args.repeats) for c, hw in shapes]}
    print(json.dumps(results, indent=2))
    if args.json:
        save_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
