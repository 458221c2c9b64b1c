"""Markdown reports with PNG plots for a sequence of compression stages (used by `slimcc demo`).

Input is plain data: one dict per stage with keys `stage`, `pipeline`, `params`, `macs`,
`file_bytes`, `accuracy` (fraction or None), `ort_ms`, `tvm_ms` (None when not measured)
and `note`; and per-layer kept channels as (layer, channels before, channels after).
Plots need matplotlib (the `report` extra); without it the Markdown is still written and
says how to get the plots.
"""

from __future__ import annotations

from pathlib import Path

PLOTS = {
    "kept_channels": "kept_channels.png",
    "accuracy_vs_macs": "accuracy_vs_macs.png",
    "latency": "latency.png",
}
TABLE_HEADERS = ["stage", "params", "MACs", "file size", "accuracy", "onnxruntime ms", "TVM ms", "note"]


def human(n: float | None, unit: str = "", missing: str = "-") -> str:
    """1234567 -> '1.23M' (None -> `missing`)."""
    if n is None:
        return missing
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def table_rows(stages: list[dict]) -> list[list[str]]:
    """The stage table as strings, one row per stage (same cells on the terminal and in Markdown)."""
    rows = []
    for s in stages:
        rows.append([s["stage"], human(s.get("params")), human(s.get("macs")), human(s.get("file_bytes"), "B"),
                     "-" if s.get("accuracy") is None else f"{100 * s['accuracy']:.1f}%",
                     "-" if s.get("ort_ms") is None else f"{s['ort_ms']:.3f}",
                     "-" if s.get("tvm_ms") is None else f"{s['tvm_ms']:.3f}",
                     s.get("note") or ""])
    return rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_plots(folder: Path, stages: list[dict], kept: list[tuple[str, int, int]]) -> tuple[list[str], str | None]:
    """Write the PNG plots into `folder`; returns (file names written, note when plots were skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install 'slimcc[report]')"
    written = []
    for name, draw in (("kept_channels", lambda ax: plot_kept_channels(ax, kept)),
                       ("accuracy_vs_macs", lambda ax: plot_accuracy_vs_macs(ax, stages)),
                       ("latency", lambda ax: plot_latency(ax, stages))):
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        try:
            draw(ax)
            fig.tight_layout()
            fig.savefig(folder / PLOTS[name])
            written.append(PLOTS[name])
        finally:
            plt.close(fig)
    return written, None


def plot_kept_channels(ax, kept: list[tuple[str, int, int]]) -> None:
    """Grouped bars: output channels per layer before and after pruning."""
    if not kept:
        ax.text(0.5, 0.5, "no pruning stage ran", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    names = [k[0] for k in kept]
    xs = range(len(kept))
    ax.bar([x - 0.2 for x in xs], [k[1] for k in kept], width=0.4, label="original", color="#9aa5b1")
    ax.bar([x + 0.2 for x in xs], [k[2] for k in kept], width=0.4, label="pruned", color="#2f7ed8")
    for x, (_, before, after) in zip(xs, kept):
        ax.text(x + 0.2, after, str(after), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("output channels")
    ax.set_title("Kept channels per layer")
    ax.legend()


def plot_accuracy_vs_macs(ax, stages: list[dict]) -> None:
    """Accuracy (or, without labels, nothing to plot) against MACs, one labelled point per stage."""
    points = [(s["macs"], s["accuracy"], s["stage"]) for s in stages
              if s.get("macs") is not None and s.get("accuracy") is not None]
    if not points:
        ax.text(0.5, 0.5, "no accuracy measured (model without labelled data)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    ax.plot([p[0] / 1e6 for p in points], [100 * p[1] for p in points], "-o", color="#2f7ed8")
    for index, (macs, acc, label) in enumerate(points):  # alternate above/below: stages often coincide
        ax.annotate(label, (macs / 1e6, 100 * acc), textcoords="offset points",
                    xytext=(6, 6) if index % 2 == 0 else (6, -14), fontsize=9)
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("held-out accuracy (%)")
    low = min(100 * p[1] for p in points)
    ax.set_ylim(max(0.0, low - 5), 100.5)
    ax.set_title("Accuracy vs MACs")
    ax.grid(alpha=0.3)


def plot_latency(ax, stages: list[dict]) -> None:
    """Grouped bars of onnxruntime and TVM latency per stage (missing values left out)."""
    names = [s["stage"] for s in stages]
    xs = list(range(len(stages)))
    ort = [s.get("ort_ms") for s in stages]
    tvm = [s.get("tvm_ms") for s in stages]
    if all(v is None for v in ort + tvm):
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    for offset, values, label, color in ((-0.2, ort, "onnxruntime (1 thread)", "#9aa5b1"),
                                         (0.2, tvm, "TVM", "#2f7ed8")):
        present = [(x, v) for x, v in zip(xs, values) if v is not None]
        if present:
            bars = ax.bar([x + offset for x, _ in present], [v for _, v in present], width=0.4, label=label,
                          color=color)
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("ms per inference (batch 1)")
    values = [v for v in ort + tvm if v is not None and v > 0]
    if values and max(values) / min(values) > 30:  # TVM untuned can be 100x slower: keep small bars visible
        from matplotlib.ticker import ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylabel("ms per inference (batch 1, log scale)")
    ax.set_title("Latency per stage")
    ax.legend()


def render_markdown(title: str, intro: list[str], stages: list[dict], plots: list[str], notes: list[str]) -> str:
    """The report text: intro lines, the stage table, the pipeline of each stage, plots, notes."""
    lines = [f"# {title}", ""] + intro + ["", markdown_table(TABLE_HEADERS, table_rows(stages)), ""]
    lines += ["## Pipelines", ""]
    lines += [f"- **{s['stage']}**: `{s['pipeline']}`" if s.get("pipeline") else f"- **{s['stage']}**: (none)"
              for s in stages]
    if plots:
        lines += ["", "## Plots", ""]
        captions = {PLOTS["kept_channels"]: "Kept channels per layer",
                    PLOTS["accuracy_vs_macs"]: "Accuracy vs MACs", PLOTS["latency"]: "Latency per stage"}
        for name in plots:
            lines += [f"![{captions.get(name, name)}]({name})", ""]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def write_report(folder: str | Path, *, title: str, intro: list[str], stages: list[dict],
                 kept: list[tuple[str, int, int]], notes: list[str] | None = None) -> dict:
    """Write report.md and the PNG plots into `folder` (which must exist); returns what was written."""
    folder = Path(folder)
    notes = list(notes or [])
    plots, skipped = write_plots(folder, stages, kept)
    if skipped:
        notes.append(skipped)
    (folder / "report.md").write_text(render_markdown(title, intro, stages, plots, notes))
    return {"report": "report.md", "plots": plots, "notes": notes}
