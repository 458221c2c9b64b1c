"""Rewrites of a 2-D Conv that keeps only some kernel positions (kernel-shape pruning).

Three forms, all in standard ONNX ops and all producing the conv's original output tensor:
- rect: the conv itself with a smaller kernel and shifted pads (one rectangle, no crop needed);
- rows: a sum (Add chain) of convs, one per rectangle of `row_blocks(keep)`, each over an
  input that is cropped (Slice) where its shifted pad would be negative;
- gather: im2col restricted to the kept positions (Pad, one strided Slice per position,
  Concat) followed by one MatMul with the kept weights and the bias (groups=1 only).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.prune.kernel_shape_geometry import ConvGeometry, Unsupported, row_blocks, shift_for_taps

FORMS = ("rect", "rows", "gather")


def _bias(node: gs.Node) -> gs.Constant | None:
    if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
        return node.inputs[2]
    return None


def _const(name: str, values) -> gs.Constant:
    return gs.Constant(name, np.asarray(values))


def _detach(node: gs.Node) -> gs.Variable:
    """Disconnect `node` (graph.cleanup() drops it) and return its output tensor for the rewrite."""
    out = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    return out


def rect_shifts(geom: ConvGeometry, block: tuple[int, int, int, int]):
    """(row shift, column shift) for a rectangle (r0, r1, c0, c1) of kept taps."""
    r0, r1, c0, c1 = block
    return shift_for_taps(geom.rows, r0, r1), shift_for_taps(geom.cols, c0, c1)


def emit_rect(node: gs.Node, geom: ConvGeometry, block: tuple[int, int, int, int]) -> None:
    """Shrink the conv in place to the taps of `block`; the caller checked that no crop is needed."""
    rs, cs = rect_shifts(geom, block)
    if rs.needs_crop or cs.needs_crop:
        raise Unsupported("rectangle needs negative pads")  # guarded by the planner
    r0, r1, c0, c1 = block
    weight = np.ascontiguousarray(geom.weight[:, :, r0:r1 + 1, c0:c1 + 1])
    node.inputs[1] = gs.Constant(f"{node.name}__ks_weight", weight)
    node.attrs.pop("auto_pad", None)
    node.attrs["kernel_shape"] = [r1 - r0 + 1, c1 - c0 + 1]
    node.attrs["pads"] = [rs.pad_begin, cs.pad_begin, rs.pad_end, cs.pad_end]


def emit_rows(graph: gs.Graph, node: gs.Node, geom: ConvGeometry, keep: np.ndarray) -> int:
    """Replace `node` by a sum of shifted convs, one per kept rectangle. Returns the number of convs."""
    blocks = row_blocks(keep)
    if not blocks:
        raise Unsupported("no kernel position kept")
    x, bias, base = node.inputs[0], _bias(node), node.name or "conv"
    attrs = {k: v for k, v in node.attrs.items() if k in ("strides", "dilations", "group")}
    y = _detach(node)
    h, w = geom.input_shape[2], geom.input_shape[3]
    crops: dict[tuple[int, int, int, int], gs.Tensor] = {}
    partials = []
    for i, block in enumerate(blocks):
        rs, cs = rect_shifts(geom, block)
        crop = (rs.crop_begin, cs.crop_begin, rs.crop_end, cs.crop_end)
        source = x
        if any(crop):
            if crop not in crops:
                cropped = gs.Variable(f"{base}__ks_crop{len(crops)}", dtype=x.dtype)
                graph.nodes.append(gs.Node("Slice", f"{base}__ks_crop{len(crops)}", inputs=[
                    x, _const(f"{base}__ks_crop{len(crops)}_starts", np.array(crop[:2], np.int64)),
                    _const(f"{base}__ks_crop{len(crops)}_ends", np.array([h - crop[2], w - crop[3]], np.int64)),
                    _const(f"{base}__ks_crop{len(crops)}_axes", np.array([2, 3], np.int64))], outputs=[cropped]))
                crops[crop] = cropped
            source = crops[crop]
        r0, r1, c0, c1 = block
        inputs = [source, gs.Constant(f"{base}__ks_w{i}", np.ascontiguousarray(geom.weight[:, :, r0:r1 + 1, c0:c1 + 1]))]
        if bias is not None and i == 0:
            inputs.append(bias)
        out = y if len(blocks) == 1 else gs.Variable(f"{base}__ks_part{i}", dtype=y.dtype)
        graph.nodes.append(gs.Node("Conv", f"{base}__ks_conv{i}", inputs=inputs, outputs=[out], attrs={
            **attrs, "kernel_shape": [r1 - r0 + 1, c1 - c0 + 1],
            "pads": [rs.pad_begin, cs.pad_begin, rs.pad_end, cs.pad_end]}))
        partials.append(out)
    total = partials[0]
    for i, part in enumerate(partials[1:], start=1):
        out = y if i == len(partials) - 1 else gs.Variable(f"{base}__ks_sum{i}", dtype=y.dtype)
        graph.nodes.append(gs.Node("Add", f"{base}__ks_add{i}", inputs=[total, part], outputs=[out]))
        total = out
    return len(blocks)


def emit_gather(graph: gs.Graph, node: gs.Node, geom: ConvGeometry, keep: np.ndarray) -> int:
    """Replace `node` by Pad -> strided Slice per kept position -> Concat -> MatMul (+ bias).

    Returns the number of kept positions. groups > 1 is Unsupported (the gathered columns
    would mix groups).
    """
    if geom.group != 1:
        raise Unsupported(f"the gather+MatMul form needs group=1 (group={geom.group})")
    positions = [(int(r), int(c)) for r, c in zip(*np.nonzero(keep))]
    if not positions:
        raise Unsupported("no kernel position kept")
    x, bias, base = node.inputs[0], _bias(node), node.name or "conv"
    y = _detach(node)
    n, c = geom.input_shape[0], geom.input_shape[1]
    rows, cols = geom.rows, geom.cols
    padded = x
    pads = [0, 0, rows.pad_begin, cols.pad_begin, 0, 0, rows.pad_end, cols.pad_end]
    if any(pads):
        padded = gs.Variable(f"{base}__ks_padded", dtype=x.dtype)
        graph.nodes.append(gs.Node("Pad", f"{base}__ks_pad", inputs=[x, _const(f"{base}__ks_pads", np.array(pads, np.int64))],
                                   outputs=[padded]))
    columns = []
    for r, col in positions:
        start = [r * rows.dilation, col * cols.dilation]
        end = [start[0] + rows.stride * (rows.out - 1) + 1, start[1] + cols.stride * (cols.out - 1) + 1]
        tag = f"{base}__ks_tap{r}_{col}"
        out = gs.Variable(tag, dtype=x.dtype)
        graph.nodes.append(gs.Node("Slice", tag, inputs=[
            padded, _const(f"{tag}_starts", np.array(start, np.int64)), _const(f"{tag}_ends", np.array(end, np.int64)),
            _const(f"{tag}_axes", np.array([2, 3], np.int64)),
            _const(f"{tag}_steps", np.array([rows.stride, cols.stride], np.int64))], outputs=[out]))
        columns.append(out)
    stacked = columns[0]
    if len(columns) > 1:
        stacked = gs.Variable(f"{base}__ks_cols", dtype=x.dtype)
        graph.nodes.append(gs.Node("Concat", f"{base}__ks_concat", inputs=columns, outputs=[stacked], attrs={"axis": 1}))
    k = len(positions) * c
    flat = gs.Variable(f"{base}__ks_flat", dtype=x.dtype)
    graph.nodes.append(gs.Node("Reshape", f"{base}__ks_flatten", inputs=[
        stacked, _const(f"{base}__ks_flat_shape", np.array([n, k, rows.out * cols.out], np.int64))], outputs=[flat]))
    # column p*C + c of the gathered matrix is input channel c at kept position p
    matrix = np.stack([geom.weight[:, :, r, col] for r, col in positions], axis=1).reshape(geom.weight.shape[0], k)
    product = gs.Variable(f"{base}__ks_mm", dtype=x.dtype)
    graph.nodes.append(gs.Node("MatMul", f"{base}__ks_matmul", inputs=[
        gs.Constant(f"{base}__ks_wmat", np.ascontiguousarray(matrix)), flat], outputs=[product]))
    if bias is not None:
        biased = gs.Variable(f"{base}__ks_biased", dtype=x.dtype)
        column_bias = np.asarray(bias.values).reshape(-1, 1)
        graph.nodes.append(gs.Node("Add", f"{base}__ks_bias", inputs=[
            product, gs.Constant(f"{base}__ks_bcol", column_bias)], outputs=[biased]))
        product = biased
    graph.nodes.append(gs.Node("Reshape", f"{base}__ks_unflatten", inputs=[
        product, _const(f"{base}__ks_out_shape", np.array([n, geom.weight.shape[0], rows.out, cols.out], np.int64))],
        outputs=[y]))
    return len(positions)


def mask_kernel(node: gs.Node, keep: np.ndarray) -> None:
    """Zero the weights of `node` at the positions not kept (the reference for mask equivalence)."""
    w = np.asarray(node.inputs[1].values)
    node.inputs[1] = gs.Constant(f"{node.name}__ks_masked", (w * np.asarray(keep, dtype=w.dtype)).astype(w.dtype))
