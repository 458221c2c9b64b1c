"""Low-rank benchmark: measured vs theoretical speedup of decomposition, and three convs vs three GEMMs.

Part 1 (models): zoo VGG and ResNet-basic (224x224, width 64) and PP-OCRv4 det, canonicalized,
then decomposed with a target MACs speedup m=2 (`decompose-tucker{speedup=2}` for KxK convs,
optionally followed by `decompose-svd{speedup=2}` for the remaining 1x1 convs and Gemms).
Per decomposed layer and end to end: single-thread onnxruntime latency before/after, the
measured speedup, the theoretical (MACs) speedup, and measured/theoretical.

Part 2 (layers): for 3x3 convs with Cin/Cout 64..512 at 56x56..7x7, the original conv next to
the same m=2 decomposition executed as convs (Tucker-2 three convs; SVD U*S*V^T as three convs,
each with its own im2col) and as GEMMs over one shared im2col (SVD as three MatMuls), plus the
two-factor variants with S folded. This answers the survey's question with numbers.

Latencies are the best of interleaved runs (A, B, A, B...) in one process (at least --repeats
rounds and one second per comparison), onnxruntime with graph optimisations on, one thread.

    python bench/lowrank.py [--json bench/out/lowrank.json] [--repeats 7] [--quick] [--with-svd] [--with-measure]
                             [--skip-models]
"""

from __future__ import annotations

import os

# One BLAS thread: the bench measures single-thread onnxruntime, and a multi-threaded OpenBLAS
# spinning next to it on a busy machine made the numpy factorisations ~10x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx_graphsurgeon as gs  # noqa: E402

from slimcc.ir.atomic import save_json_atomic  # noqa: E402
from slimcc.ir.cost import model_cost  # noqa: E402
from slimcc.ir.model import Model, load_model  # noqa: E402
from slimcc.ir.verify import make_session, random_feeds  # noqa: E402
from slimcc.models.fetch import load_real_model  # noqa: E402
from slimcc.models.zoo import build  # noqa: E402
from slimcc.passes.canonicalize import Canonicalize  # noqa: E402
from slimcc.passes.lowrank.decompose_svd import DecomposeSvd, plan_conv, plan_matmul  # noqa: E402
from slimcc.passes.lowrank.decompose_tucker import DecomposeTucker, plan_tucker  # noqa: E402
from slimcc.passes.lowrank.emit import NameScope  # noqa: E402
from slimcc.passes.lowrank.measure import single_layer_graph  # noqa: E402
from slimcc.passes.lowrank.ranks import RankPolicy  # noqa: E402


def interleaved_ms(models: list[Model], repeats: int, min_seconds: float = 1.0, max_rounds: int = 200) -> list[float]:
    """Best (minimum) latency in ms of each model over interleaved rounds (A, B, A, B...).

    At least `repeats` rounds, more until `min_seconds` have passed (fast layers get many
    samples). The minimum, not the median, because on a shared machine other processes only
    ever add time: the fastest run is the least disturbed one.
    """
    sessions = [make_session(m, optimize=True, threads=1) for m in models]
    feeds = random_feeds(models[0], seed=0)
    outputs = [[o.name for o in s.get_outputs()] for s in sessions]
    for session, names in zip(sessions, outputs):
        session.run(names, feeds)
    times: list[list[float]] = [[] for _ in models]
    start = time.perf_counter()
    for round_ in range(max_rounds):
        for i, (session, names) in enumerate(zip(sessions, outputs)):
            t0 = time.perf_counter()
            session.run(names, feeds)
            times[i].append((time.perf_counter() - t0) * 1e3)
        if round_ + 1 >= repeats and time.perf_counter() - start > min_seconds:
            break
    return [min(t) for t in times]


def total_macs(model: Model) -> int:
    return model_cost(model).macs


def replan(pass_, node: gs.Node, opset: int):
    """The plan the pass made for `node` (same policy), to time that layer alone."""
    policy = RankPolicy(pass_.speedup, pass_.rank, pass_.energy, pass_.evbmf, pass_.floor, pass_.multiple)
    if isinstance(pass_, DecomposeTucker):
        return plan_tucker(node, policy, {}, pass_.iters)
    if node.op == "Conv":
        return plan_conv(node, policy, None, pass_.form, pass_.keep_s, opset)
    return plan_matmul(node, policy, None, pass_.keep_s)


def layer_rows(before: Model, pass_, stats: dict, repeats: int) -> list[dict]:
    """Per decomposed layer: original vs decomposed single-layer latency and MACs speedup."""
    nodes = {n.name: n for n in before.graph.nodes}
    rows = []
    for name, entry in stats["layers"].items():
        node = nodes[name]
        plan = replan(pass_, node, before.opset)
        original, _ = single_layer_graph(node, before.opset)
        decomposed, copy = single_layer_graph(node, before.opset)
        plan.rewrite(decomposed, copy, NameScope(decomposed))
        decomposed.cleanup()
        t_orig, t_dec = interleaved_ms([Model(original), Model(decomposed)], repeats)
        measured = t_orig / t_dec
        rows.append({"layer": name, "pass": pass_.name, "ranks": entry["ranks"],
                     "shape": [node.inputs[0].shape, node.outputs[0].shape], "ms_original": round(t_orig, 4),
                     "ms_decomposed": round(t_dec, 4), "measured_speedup": round(measured, 3),
                     "theoretical_speedup": entry["predicted_speedup"],
                     "measured_over_theoretical": round(measured / entry["predicted_speedup"], 3)})
    return rows


def bench_model(label: str, model: Model, passes: list, repeats: int) -> dict:
    """Canonicalize, decompose with `passes`, time per layer and end to end."""
    Canonicalize().run(model)
    model.refresh_shapes()
    original = model.copy()
    layers, summary = [], {}
    for pass_ in passes:
        before = model.copy()
        result = pass_.run(model)
        layers += layer_rows(before, pass_, result.stats, max(repeats, 5))
        summary[pass_.spec()] = {"decomposed": result.stats["decomposed"], "refused": len(result.stats["refused"]),
                                 "skipped": len(result.stats["skipped"])}
    t_orig, t_dec = interleaved_ms([original, model], repeats)
    theoretical = total_macs(original) / total_macs(model)
    measured = t_orig / t_dec
    return {"model": label, "pipeline": [p.spec() for p in passes], "passes": summary,
            "macs_original": total_macs(original), "macs_decomposed": total_macs(model),
            "ms_original": round(t_orig, 3), "ms_decomposed": round(t_dec, 3),
            "measured_speedup": round(measured, 3), "theoretical_speedup": round(theoretical, 3),
            "measured_over_theoretical": round(measured / theoretical, 3), "layers": layers}


def conv_layer(cin: int, cout: int, size: int, seed: int = 0) -> Model:
    """A single 3x3 pad-1 conv with bias, as an IR model."""
    rng = np.random.default_rng(seed)
    x = gs.Variable("x", dtype=np.float32, shape=[1, cin, size, size])
    y = gs.Variable("y", dtype=np.float32, shape=[1, cout, size, size])
    w = gs.Constant("w", (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32))
    b = gs.Constant("b", rng.standard_normal(cout).astype(np.float32))
    conv = gs.Node("Conv", "conv", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, [x, w, b], [y])
    return Model(gs.Graph(nodes=[conv], inputs=[x], outputs=[y], opset=17))


VARIANTS = {
    "tucker-3conv": DecomposeTucker(speedup=2, force=True, refit=False),
    "svd-3conv": DecomposeSvd(speedup=2, form="conv", keep_s=True, force=True, refit=False),
    "svd-3gemm": DecomposeSvd(speedup=2, form="gemm", keep_s=True, force=True, refit=False),
    "svd-2conv": DecomposeSvd(speedup=2, form="conv", force=True, refit=False),
    "svd-2gemm": DecomposeSvd(speedup=2, form="gemm", force=True, refit=False),
}


def bench_shapes(shapes: list[tuple[int, int, int]], repeats: int) -> list[dict]:
    """Original vs each decomposed execution form, per layer shape."""
    rows = []
    for cin, cout, size in shapes:
        original = conv_layer(cin, cout, size)
        models, ranks = [original], {}
        for label, pass_ in VARIANTS.items():
            model = original.copy()
            stats = pass_.run(model).stats
            ranks[label] = stats["layers"]["conv"]["ranks"]
            models.append(model)
        times = interleaved_ms(models, repeats)
        row = {"cin": cin, "cout": cout, "hw": size, "ms_original": round(times[0], 4), "ranks": ranks}
        for (label, _), ms in zip(VARIANTS.items(), times[1:]):
            row[f"ms_{label}"] = round(ms, 4)
            row[f"speedup_{label}"] = round(times[0] / ms, 3)
        row["gemm_over_conv_3factor"] = round(row["ms_svd-3conv"] / row["ms_svd-3gemm"], 3)
        rows.append(row)
        print(f"  {cin:>3}->{cout:<3} {size:>2}x{size:<2} orig {times[0]:7.3f} ms | "
              + " | ".join(f"{k} {row['speedup_' + k]:.2f}x" for k in VARIANTS), file=sys.stderr)
    return rows


SHAPES = [(64, 64, 56), (64, 64, 28), (128, 128, 28), (128, 128, 14), (256, 256, 14), (256, 256, 7),
          (512, 512, 14), (512, 512, 7), (64, 128, 28), (256, 512, 7)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default: stdout only)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer shapes")
    parser.add_argument("--with-svd", action="store_true",
                        help="also run decompose-tucker{speedup=2},decompose-svd{speedup=2} on the models")
    parser.add_argument("--with-measure", action="store_true",
                        help="also run decompose-tucker{speedup=2,measure=true} (keeps only layers timed faster)")
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args(argv)

    tucker = DecomposeTucker(speedup=2)
    both = [DecomposeTucker(speedup=2), DecomposeSvd(speedup=2)]
    pipelines = {"tucker": [tucker]}
    if args.with_svd:
        pipelines["tucker+svd"] = both
    if args.with_measure:
        pipelines["tucker-measured"] = [DecomposeTucker(speedup=2, measure=True)]
    models = {
        "vgg-224-w64": lambda: load_model(build("vgg", size=224, width=64)),
        "resnet-basic-224-w64": lambda: load_model(build("resnet-basic", size=224, width=64)),
        "ppocr-det-320": lambda: load_real_model("ppocr-det"),
    }
    results = {"onnxruntime": {"threads": 1, "graph_optimizations": "all"}, "models": [], "layer_shapes": []}
    if not args.skip_models:
        for label, make in models.items():
            for pipe_label, passes in pipelines.items():
                print(f"model {label} [{pipe_label}]", file=sys.stderr)
                entry = bench_model(label, make(), passes, args.repeats)
                print(f"  {entry['ms_original']:.2f} ms -> {entry['ms_decomposed']:.2f} ms: measured "
                      f"{entry['measured_speedup']}x, theoretical {entry['theoretical_speedup']}x, "
                      f"ratio {entry['measured_over_theoretical']}", file=sys.stderr)
                results["models"].append(entry)
    shapes = SHAPES[::3] if args.quick else SHAPES
    results["layer_shapes"] = bench_shapes(shapes, args.repeats)
    rows = results["layer_shapes"]
    results["answer"] = {
        "median_speedup": {k: round(statistics.median(r[f"speedup_{k}"] for r in rows), 3) for k in VARIANTS},
        "median_3conv_over_3gemm_latency_ratio": round(statistics.median(r["gemm_over_conv_3factor"] for r in rows), 3),
        "shapes_where_3gemm_beats_3conv": sum(r["gemm_over_conv_3factor"] > 1 for r in rows),
        "shapes": len(rows),
    }
    if args.json:
        save_json_atomic(args.json, results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
