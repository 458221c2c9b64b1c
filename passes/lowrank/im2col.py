"""An exact im2col in standard ONNX ops: Pad once, one strided Slice per kernel tap, one Concat.

Why this form: the alternatives are a Conv with one-hot "identity" kernels (group=Cin,
Cin*K output channels) or a custom Unfold op. The one-hot Conv multiplies every value by
1 and adds K-1 products with 0, which is exact for finite values but turns an inf or NaN
in one tap into NaN in its neighbours, and it costs Cin*K MACs per output pixel. Slicing
is pure data movement: bit-exact for every input, no arithmetic, and every runtime
(onnxruntime, TVM's Relax importer) supports Pad/Slice/Concat/Reshape natively, so the
column matrix is built once and shared by all the MatMuls that follow.

Layout: column index = (kh * KW + kw) * Cin + c (tap-major), i.e. the weight matrix of a
conv is W.transpose(0, 2, 3, 1).reshape(Cout, K * Cin).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.lowrank.emit import NameScope, constant, node, variable
from slimcc.passes.lowrank.layers import ConvLayer


def weight_as_columns(weight: np.ndarray) -> np.ndarray:
    """A conv weight [Cout, Cin, KH, KW] as the [Cout, KH*KW*Cin] matrix that matches `emit_im2col`."""
    cout = weight.shape[0]
    return np.transpose(weight, (0, 2, 3, 1)).reshape(cout, -1)


def emit_im2col(layer: ConvLayer, x: gs.Tensor, scope: NameScope, base: str) -> tuple[list[gs.Node], gs.Variable]:
    """Nodes computing cols[N, KH*KW*Cin, OH*OW] from x[N, Cin, H, W] for `layer`'s conv geometry."""
    n_, cin, h, w = layer.input_shape
    _, _, oh, ow = layer.output_shape
    kh, kw = layer.kernel_hw
    (sh, sw), (dh, dw) = layer.strides, layer.dilations
    top, left, bottom, right = layer.pads
    dtype = x.dtype
    nodes: list[gs.Node] = []
    source = x
    if any(layer.pads):
        padded = variable(scope, f"{base}_im2col_pad", dtype, [n_, cin, h + top + bottom, w + left + right])
        pads = constant(scope, f"{base}_im2col_pads", np.array([0, 0, top, left, 0, 0, bottom, right]), np.int64)
        nodes.append(node(scope, "Pad", f"{base}_im2col_pad", [source, pads], [padded], {"mode": "constant"}))
        source = padded
    taps = []
    full_h, full_w = h + top + bottom, w + left + right
    for i in range(kh):
        for j in range(kw):
            start_h, start_w = i * dh, j * dw
            end_h, end_w = start_h + (oh - 1) * sh + 1, start_w + (ow - 1) * sw + 1
            if (start_h, start_w, sh, sw) == (0, 0, 1, 1) and (end_h, end_w) == (full_h, full_w):
                taps.append(source)
                continue
            tap = variable(scope, f"{base}_im2col_tap{i}_{j}", dtype, [n_, cin, oh, ow])
            params = [constant(scope, f"{base}_im2col_{label}{i}_{j}", np.array(values), np.int64)
                      for label, values in (("starts", [start_h, start_w]), ("ends", [end_h, end_w]),
                                            ("axes", [2, 3]), ("steps", [sh, sw]))]
            nodes.append(node(scope, "Slice", f"{base}_im2col_slice{i}_{j}", [source, *params], [tap]))
            taps.append(tap)
    if len(taps) > 1:
        stacked = variable(scope, f"{base}_im2col_taps", dtype, [n_, kh * kw * cin, oh, ow])
        nodes.append(node(scope, "Concat", f"{base}_im2col_concat", taps, [stacked], {"axis": 1}))
    else:
        stacked = taps[0]
    cols = variable(scope, f"{base}_im2col", dtype, [n_, kh * kw * cin, oh * ow])
    shape = constant(scope, f"{base}_im2col_shape", np.array([0, kh * kw * cin, oh * ow]), np.int64)
    nodes.append(node(scope, "Reshape", f"{base}_im2col_reshape", [stacked, shape], [cols]))
    return nodes, cols
