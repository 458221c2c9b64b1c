"""Plot bench/out/scale.json (issue 20): time per node and peak memory against model size.

Left: ms per node of each step on the residual chains, against node count (flat lines = linear time).
Middle: each step's peak RSS against node count, with the model file size for reference.
Right: the 575 MB VGG-19, slimcc next to onnx (seconds and peak RSS over the model's size).

    python bench/scale_plot.py [--json bench/out/scale.json] [--out docs/img/scale.png]

Needs matplotlib (the `report` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(report: dict, out: Path) -> None:
    """Write the three panels of `report` (scale.json's content) to the PNG `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["deep"]
    steps = list(dict.fromkeys(step for row in rows for step in row["steps"]))
    fig, (time_ax, rss_ax, large_ax) = plt.subplots(1, 3, figsize=(16, 4.8))
    for step in steps:
        points = [(row["nodes"], row["steps"][step]) for row in rows if step in row["steps"]]
        nodes = [n for n, _ in points]
        time_ax.plot(nodes, [s["ms_per_node"] for _, s in points], marker="o", label=step)
        rss_ax.plot(nodes, [s["peak_rss_mb"] for _, s in points], marker="o", label=step)
    rss_ax.plot([row["nodes"] for row in rows], [row["file_mb"] for row in rows], "k--", label="model file")
    for ax, label in ((time_ax, "ms per node"), (rss_ax, "peak RSS of the step's process (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("nodes (residual chain depth)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    time_ax.set_yscale("log")  # compile costs ~100x the passes per node
    rss_ax.set_yscale("log")
    time_ax.set_title("time per node (flat = linear in depth)")
    rss_ax.set_title("peak memory against depth")
    rss_ax.legend(fontsize=7)
    if "large" in report:
        _large_panel(large_ax, report["large"])
    else:
        large_ax.set_axis_off()
    load = report.get("load_average_start")
    fig.suptitle(f"bench/scale.py on {report['cpu_model']}, {report['cpus']} CPUs shared"
                 + (f", load average {load[0]:.1f} at start" if load else ""), fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _large_panel(ax, large: dict) -> None:
    """Seconds of slimcc and of the onnx reference on the large model, and peak RSS over its size."""
    onnx_io, slim_io = large["onnx_load_save"], large["slimcc_load_save"]
    reference, optimize = large["onnx_load_save_one_session"], large["slimcc_optimize_canonicalize"]
    bars = [
        ("onnx load+save", onnx_io["load_s"] + onnx_io["save_s"], onnx_io["peak_rss_mb"]),
        ("slimcc load+save", slim_io["load_s"] + slim_io["save_s"], slim_io["peak_rss_mb"]),
        ("onnx load+save\n+ ort session", reference["load_save_s"] + reference["session_s"] + reference["run_s"],
         reference["peak_rss_mb"]),
        ("slimcc optimize\n-p canonicalize", optimize["wall_s"], optimize["peak_rss_mb"]),
    ]
    positions = range(len(bars))
    ax.bar(positions, [b[1] for b in bars], color=["#999", "#1f77b4", "#999", "#1f77b4"])
    ax.set_xticks(list(positions), [b[0] for b in bars], fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title(f"{large['file_mb']:.0f} MB VGG-19: seconds (bars), peak RSS / model (labels)", fontsize=9)
    for x, (_, seconds, rss) in zip(positions, bars):
        ax.annotate(f"{rss / large['file_mb']:.2f}x", (x, seconds), ha="center", va="bottom", fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/out/scale.json")
    parser.add_argument("--out", default="docs/img/scale.png")
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("bench/scale_plot.py needs matplotlib: pip install 'slimcc[report]'") from None
    path = Path(args.json)
    if not path.is_file():
        raise SystemExit(f"{path} not found; run python bench/scale.py first")
    plot(json.loads(path.read_text()), Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
