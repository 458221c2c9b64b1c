"""The `prune-kernel-shape` pass: group-level pruning of kernel positions shared by all filters of a conv."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PipelineError
from slimcc.ir.cost import model_cost
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.prune.kernel_shape_geometry import ConvGeometry, Unsupported, conv_geometry, position_importance
from slimcc.passes.prune.kernel_shape_measure import layer_model, time_models
from slimcc.passes.prune.kernel_shape_rewrite import emit_gather, emit_rect, emit_rows
from slimcc.passes.prune.kernel_shape_select import (block_mask, kept_count, mask_as_block, parse_keep,
                                                     rect_is_exact, select_positions, select_rect)


@dataclass(frozen=True)
class LayerPlan:
    """What to keep in one conv: the keep mask and, when it is an exact rectangle, that rectangle."""

    node: gs.Node
    geom: ConvGeometry
    keep: np.ndarray
    block: tuple[int, int, int, int] | None


@register_pass("prune-kernel-shape")
@dataclass(frozen=True)
class PruneKernelShape(Pass):
    """Cut the least important kernel rows/columns (or positions) of every KxK conv, for all its filters.

    mode=rect: a smaller conv with shifted pads (keep=2x3 or ratio=F); mode=positions: any set of
    positions as a sum of shifted convs (form=rows) or im2col-gather + MatMul (form=gather);
    measure=true times both per layer on onnxruntime and keeps the faster.
    """

    keep: str = ""
    ratio: float = 0.0
    mode: Literal["rect", "positions"] = "rect"
    criterion: Literal["l1", "l2"] = "l1"
    layers: str = ""
    measure: bool = False
    form: Literal["rows", "gather"] = "rows"
    repeats: int = 10

    exact: ClassVar[bool] = False

    def __post_init__(self):
        keep = parse_keep(self.keep)
        if keep is not None and self.ratio:
            raise PipelineError("prune-kernel-shape: give either keep= or ratio=, not both")
        if not 0.0 <= self.ratio < 1.0:
            raise PipelineError(f"prune-kernel-shape: ratio={self.ratio} must be in [0, 1)")
        if isinstance(keep, int) and self.mode == "rect":
            raise PipelineError("prune-kernel-shape: keep=N (a position count) needs mode=positions; "
                                "rect mode takes a shape like keep=2x3")
        if self.repeats < 1:
            raise PipelineError("prune-kernel-shape: repeats must be >= 1")

    def layer_names(self) -> list[str]:
        """The `layers` filter as a list (empty = every conv)."""
        return [name.strip() for name in self.layers.split(";") if name.strip()]

    def plan(self, model) -> tuple[list[LayerPlan], dict[str, str], int]:
        """Choose kept positions per conv without rewriting: (plans, refused {layer: reason}, skipped count)."""
        wanted = self.layer_names()
        keep = parse_keep(self.keep)
        plans, refused, skipped = [], {}, 0
        convs = {n.name: n for n in model.graph.nodes if n.op == "Conv"}
        for name in wanted:
            if name not in convs:
                refused[name] = "no Conv node has this name"
        for name, node in convs.items():
            if wanted and name not in wanted:
                continue
            try:
                geom = conv_geometry(node)
            except Unsupported as exc:
                refused[name] = str(exc)
                continue
            kh, kw = geom.kernel
            if kh * kw == 1 or (keep is None and self.ratio == 0.0):
                skipped += 1
                continue
            importance = position_importance(geom.weight, self.criterion)
            if self.mode == "rect":
                try:
                    block = select_rect(geom, importance, keep, self.ratio)
                except Unsupported as exc:
                    refused[name] = str(exc)
                    continue
                if block is None:
                    skipped += 1
                    continue
                plans.append(LayerPlan(node, geom, block_mask((kh, kw), block), block))
                continue
            count = kept_count(kh * kw, keep, self.ratio)
            if count >= kh * kw:
                skipped += 1
                continue
            mask = select_positions(importance, count)
            block = mask_as_block(mask)
            plans.append(LayerPlan(node, geom, mask, block if block and rect_is_exact(geom, block) else None))
        return plans, refused, skipped

    def choose_form(self, plan: LayerPlan, opset: int) -> tuple[str, dict | None]:
        """rect when the kept set is an exact rectangle; else `form`, or the faster one if measure=true."""
        if plan.block is not None:
            return "rect", None
        if plan.geom.group != 1:
            return "rows", None
        if not self.measure:
            return self.form, None
        forms = ["rows", "gather"]
        seconds = time_models([layer_model(plan.node, plan.geom, f, keep=plan.keep, opset=opset) for f in forms],
                              repeats=self.repeats)
        timing = {f"{f}_ms": round(s * 1e3, 4) for f, s in zip(forms, seconds)}
        return forms[int(np.argmin(seconds))], timing

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        """Plan, pick a form per layer, rewrite; stats list each layer's kept positions, form and refusals."""
        plans, refused, skipped = self.plan(model)
        stats = {"refused": refused, "skipped": skipped, "layers": {}}
        if not plans:
            return PassResult(False, stats)
        before = model_cost(model)
        graph = model.graph
        for plan in plans:
            form, timing = self.choose_form(plan, model.opset)
            name = plan.node.name
            if form == "rect":
                emit_rect(plan.node, plan.geom, plan.block)
            elif form == "gather":
                emit_gather(graph, plan.node, plan.geom, plan.keep)
            else:
                emit_rows(graph, plan.node, plan.geom, plan.keep)
            kh, kw = plan.geom.kernel
            entry = {"form": form, "kernel": f"{kh}x{kw}", "kept": int(plan.keep.sum()),
                     "positions": [[int(r), int(c)] for r, c in zip(*np.nonzero(plan.keep))]}
            if timing:
                entry["timing"] = timing
            stats["layers"][name] = entry
        graph.cleanup().toposort()
        model.refresh_shapes()
        after = model_cost(model)
        stats.update({"macs_before": before.macs, "macs_after": after.macs,
                      "macs_ratio": round(after.macs / before.macs, 4) if before.macs else None})
        return PassResult(True, stats)

    @staticmethod
    def masks(stats: dict) -> dict[str, np.ndarray]:
        """{layer: keep mask} from a run's stats (to build the masked reference model)."""
        out = {}
        for name, entry in stats["layers"].items():
            kh, kw = (int(v) for v in entry["kernel"].split("x"))
            keep = np.zeros((kh, kw), dtype=bool)
            for r, c in entry["positions"]:
                keep[r, c] = True
            out[name] = keep
        return out
