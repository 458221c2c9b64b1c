"""Linear layers that recovery passes refit: Conv, Gemm and MatMul(+Add) with constant weights.

A `LinearLayer` gives one view of all three: the effective weight matrix [fan_in, Cout]
that multiplies im2col rows (or plain rows), the effective bias [Cout], and how to write
a new matrix / bias back into the graph's constants (creating a bias when there is none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.names import NameScope
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant.qdq_graph import dequantized_bias, qdq_info


@dataclass
class LinearLayer:
    """One linear layer of the graph.

    `node` is the Conv/Gemm/MatMul; `bias_node` the Add that carries a MatMul's bias (or None), right after
    it or after the QuantizeLinear/DequantizeLinear pair of its output;
    `output` the tensor holding weight-times-input plus bias (the pre-activation).
    `reason` is set when the layer cannot be refitted (quantized weights, auto_pad...).
    """

    node: gs.Node
    output: gs.Variable
    bias_node: gs.Node | None = None
    reason: str = ""
    graph: gs.Graph | None = None  # where a MatMul without bias gets its new Add
    names: NameScope | None = None  # fresh names for the refitted constants (one scope per graph)

    @property
    def name(self) -> str:
        return self.node.name or self.output.name

    def _fresh(self, what: str) -> str:
        """A new name for a constant or node this layer's refit adds."""
        base = f"{self.name}__{what}"
        return self.names.new(base) if self.names is not None else base

    @property
    def input(self) -> gs.Variable:
        return self.node.inputs[0]

    @property
    def op(self) -> str:
        return self.node.op

    @property
    def groups(self) -> int:
        return int(self.node.attrs.get("group", 1)) if self.op == "Conv" else 1

    # --- weights ------------------------------------------------------------------------------
    def weight_array(self) -> np.ndarray | None:
        """The weight as stored (Conv [Cout, Cin/g, kh, kw]; Gemm B; MatMul [K, Cout]), None if not constant."""
        tensor = self.node.inputs[1]
        return np.asarray(_float_value(tensor), np.float32) if _is_dequantized(tensor) else constant_value(tensor)

    def matrix(self) -> np.ndarray:
        """Effective [fan_in, Cout] matrix so that output = rows @ matrix + bias (float64).

        For a grouped conv fan_in is that of one group: output channel o reads group
        o // (Cout / group) of the input rows (see `sample_rows`)."""
        w = np.asarray(self.weight_array(), np.float64)
        if self.op == "Conv":
            return w.reshape(w.shape[0], -1).T
        if self.op == "Gemm":
            w = w.T if self.node.attrs.get("transB", 0) else w
            return w * float(self.node.attrs.get("alpha", 1.0))
        return w

    def filters(self) -> np.ndarray:
        """Weights per output channel as [Cout, units, unit] (conv: [Cout, Cin/g, kh*kw])."""
        if self.op == "Conv":
            w = self.weight_array()
            return w.reshape(w.shape[0], w.shape[1], -1)
        return self.matrix().T[:, :, None]

    def out_channels(self) -> int:
        w = self.weight_array()
        if self.op == "Conv":
            return int(w.shape[0])
        if self.op == "Gemm":
            return int(w.shape[0] if self.node.attrs.get("transB", 0) else w.shape[1])
        return int(w.shape[1])

    def bias_tensor(self) -> gs.Tensor | None:
        if self.op in ("Conv", "Gemm"):
            return self.node.inputs[2] if len(self.node.inputs) > 2 and not self.node.inputs[2].is_empty() else None
        if self.bias_node is not None:
            return next(t for t in self.bias_node.inputs if t is not _through_requantize(self.node.outputs[0]))
        return None

    def bias(self) -> np.ndarray:
        """Effective bias [Cout] (zeros when absent), float64."""
        cout = self.out_channels()
        tensor = self.bias_tensor()
        if tensor is None:
            return np.zeros(cout)
        values = np.asarray(_float_value(tensor), np.float64)
        if self.op == "Gemm":
            values = values * float(self.node.attrs.get("beta", 1.0))
        return np.broadcast_to(values.reshape(-1), (cout,)).copy()

    def set_matrix(self, matrix: np.ndarray) -> None:
        """Store an effective [fan_in, Cout] matrix as a fresh constant in the weight's layout and dtype."""
        old = self.weight_array()
        if self.op == "Conv":
            stored = matrix.T.reshape(old.shape)
        elif self.op == "Gemm":
            scaled = matrix / float(self.node.attrs.get("alpha", 1.0))
            stored = scaled.T if self.node.attrs.get("transB", 0) else scaled
        else:
            stored = matrix
        self.node.inputs[1] = gs.Constant(self._fresh("refit_w"), np.ascontiguousarray(stored.astype(old.dtype)))

    def _integer_scales(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(input scale, weight scales) of a Conv/Gemm whose input is a per-tensor DequantizeLinear and
        whose weight a constant one, per output channel or per tensor; else None."""
        if self.op not in ("Conv", "Gemm") or not _is_dequantized(self.node.inputs[1]) \
                or not _is_dequantized(self.node.inputs[0]):
            return None
        x_info, w_info = (qdq_info(tensor.inputs[0]) for tensor in self.node.inputs[:2])
        if x_info is None or w_info is None or x_info.scale.size != 1 \
                or w_info.scale.size not in (1, self.out_channels()):
            return None
        return x_info.scale, w_info.scale.reshape(-1)

    def set_bias(self, bias: np.ndarray) -> None:
        """Store an effective bias [Cout], creating the bias input (or MatMul's Add) when absent.

        A bias that is an int32 DequantizeLinear (qdq-insert) is re-quantized with its own scale."""
        dtype = self.weight_array().dtype if self.weight_array() is not None else np.float32
        tensor = self.bias_tensor()
        if self.op == "Gemm":
            beta = float(self.node.attrs.get("beta", 1.0)) if tensor is not None else 1.0
            self.node.attrs["beta"] = beta if beta != 0.0 else 1.0
            bias = bias / self.node.attrs["beta"]
        if tensor is not None and _is_dequantized(tensor):
            _requantize_bias(tensor, bias, self._fresh("refit_bq"))
            return
        scales = self._integer_scales()
        if scales is not None:  # a quantized Conv/Gemm: the new bias is int32 too, or the layer runs in float
            fresh = dequantized_bias(self.graph, self._fresh("refit"), bias, *scales)
        else:
            fresh = gs.Constant(self._fresh("refit_b"), np.ascontiguousarray(bias.astype(dtype)))
        if self.op in ("Conv", "Gemm"):
            if tensor is None:
                while len(self.node.inputs) < 2:
                    self.node.inputs.append(gs.Variable.empty())
                if len(self.node.inputs) == 2:
                    self.node.inputs.append(fresh)
                else:
                    self.node.inputs[2] = fresh
            else:
                self.node.inputs[2] = fresh
            return
        if self.bias_node is not None:
            index = next(i for i, t in enumerate(self.bias_node.inputs) if t is tensor)
            self.bias_node.inputs[index] = fresh
            return
        # MatMul without a bias: route its output through a new Add
        out = self.node.outputs[0]
        mid = gs.Variable(self._fresh("matmul_out"), dtype=out.dtype, shape=out.shape)
        self.node.outputs[0] = mid
        add = gs.Node("Add", self._fresh("refit_add"), inputs=[mid, fresh], outputs=[out])
        self.graph.nodes.append(add)  # the pass toposorts the graph when it is done
        self.bias_node = add




def _is_dequantized(tensor: gs.Tensor) -> bool:
    return len(tensor.inputs) == 1 and tensor.inputs[0].op == "DequantizeLinear"


def _float_value(tensor: gs.Tensor) -> np.ndarray:
    """A constant's value, or the float value of a constant DequantizeLinear."""
    if _is_dequantized(tensor):
        dq = tensor.inputs[0]
        q = np.asarray(constant_value(dq.inputs[0]), np.float64)
        scale = np.asarray(constant_value(dq.inputs[1]), np.float64)
        zero = np.asarray(constant_value(dq.inputs[2]), np.float64) if len(dq.inputs) > 2 else np.zeros(())
        if scale.ndim == 1 and q.ndim > 1:  # per-channel along `axis`
            shape = [1] * q.ndim
            shape[int(dq.attrs.get("axis", 1)) % q.ndim] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim == 1 else zero
        return (q - zero) * scale
    return np.asarray(constant_value(tensor))


def _requantize_bias(tensor: gs.Tensor, bias: np.ndarray, name: str) -> None:
    dq = tensor.inputs[0]
    scale = np.asarray(constant_value(dq.inputs[1]), np.float64)
    zero = np.asarray(constant_value(dq.inputs[2]), np.float64) if len(dq.inputs) > 2 else 0.0
    q_old = constant_value(dq.inputs[0])
    q = np.clip(np.round(bias / scale + zero), -2**31, 2**31 - 1).astype(q_old.dtype)
    dq.inputs[0] = gs.Constant(name, q.reshape(q_old.shape))


def find_layers(graph: gs.Graph) -> list[LinearLayer]:
    """Every Conv/Gemm/MatMul with a constant (or constant-dequantized) weight, in graph (topological) order."""
    layers, names = [], NameScope(graph)
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        weight_tensor = node.inputs[1]
        quantized = _is_dequantized(weight_tensor)
        weight = constant_value(weight_tensor)
        if weight is None and not quantized:
            continue
        layer = LinearLayer(node, node.outputs[0], graph=graph, names=names)
        if quantized:
            layer.reason = "weights are quantized (DequantizeLinear); refit before qdq-insert"
        elif node.op == "Conv" and node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            layer.reason = f"auto_pad={node.attrs['auto_pad']} is not supported; run canonicalize first"
        elif node.op == "Gemm" and node.attrs.get("transA", 0):
            layer.reason = "Gemm with transA is not refitted"
        elif node.op == "MatMul" and weight.ndim != 2:
            layer.reason = "MatMul weight is not a 2-D matrix"
        if node.op == "MatMul":
            _attach_bias(layer, layer.weight_array().shape[-1])
        layers.append(layer)
    return layers


def _attach_bias(layer: LinearLayer, channels: int) -> None:
    """Make a MatMul's bias Add (a constant [channels] or [1, ..., channels] operand) part of the layer, also
    when the Add reads the MatMul's output through a QuantizeLinear/DequantizeLinear pair (qdq-insert)."""
    data = _through_requantize(layer.node.outputs[0])
    consumers = list(data.outputs)
    if len(consumers) == 1 and consumers[0].op == "Add":
        other = [t for t in consumers[0].inputs if t is not data]
        value = constant_value(other[0]) if len(other) == 1 else None
        if value is not None and value.size == channels and value.reshape(-1).shape[0] == value.shape[-1]:
            layer.bias_node = consumers[0]
            layer.output = consumers[0].outputs[0]


def _through_requantize(tensor: gs.Tensor) -> gs.Tensor:
    """The DequantizeLinear output when `tensor` only feeds a QuantizeLinear -> DequantizeLinear pair (qdq-insert
    quantizes a MatMul's output before its bias Add), else `tensor` itself."""
    consumers = list(tensor.outputs)
    if len(consumers) != 1 or consumers[0].op != "QuantizeLinear":
        return tensor
    after = list(consumers[0].outputs[0].outputs)
    return after[0].outputs[0] if len(after) == 1 and after[0].op == "DequantizeLinear" else tensor


def conv_geometry(node: gs.Node, kernel: tuple[int, int]) -> dict:
    """Strides, dilations and pads (top, left, bottom, right) of a 2-D Conv."""
    strides = list(node.attrs.get("strides", [1, 1]))
    dilations = list(node.attrs.get("dilations", [1, 1]))
    pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
    return {"strides": strides, "dilations": dilations, "pads": pads, "kernel": kernel}


def pick_positions(layer: LinearLayer, output_shape: tuple[int, ...], limit: int, rng: np.random.Generator):
    """Up to `limit` output positions of one batch, as an index usable by `sample_rows` and `output_rows`
    ((n, oh, ow) arrays for a conv, flat row numbers otherwise)."""
    if layer.op == "Conv":
        n, _, ho, wo = output_shape
        total = n * ho * wo
    else:
        total = int(np.prod(output_shape[:-1]))
    flat = np.arange(total) if total <= limit else np.sort(rng.choice(total, limit, replace=False))
    if layer.op != "Conv":
        return flat
    nn, rest = np.divmod(flat, ho * wo)
    oh, ow = np.divmod(rest, wo)
    return nn, oh, ow


def sample_rows(layer: LinearLayer, x: np.ndarray, index) -> np.ndarray:
    """Input rows [P, groups, fan_in] (im2col for convs, one block per conv group) that produce
    the outputs at `index`; groups is 1 except for grouped convs."""
    if layer.op != "Conv":
        return x.reshape(-1, x.shape[-1])[index].astype(np.float64)[:, None, :]
    w = layer.weight_array()
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError("only 2-D convolutions are refitted")
    kh, kw = int(w.shape[2]), int(w.shape[3])
    geo = conv_geometry(layer.node, (kh, kw))
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = geo["strides"], geo["dilations"], geo["pads"]
    nn, oh, ow = index
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    hh = oh[:, None] * sh + np.arange(kh)[None, :] * dh
    ww = ow[:, None] * sw + np.arange(kw)[None, :] * dw
    patches = padded[nn[:, None, None, None], np.arange(x.shape[1])[None, :, None, None], hh[:, None, :, None],
                     ww[:, None, None, :]]
    return patches.reshape(len(nn), layer.groups, -1).astype(np.float64)


def row_samples(layer: LinearLayer, input_shape: tuple[int, ...], index) -> np.ndarray:
    """Which sample of the batch (index along axis 0) each row at `index` comes from
    (`input_shape`: the shape of the layer's input in that batch)."""
    if layer.op == "Conv":
        return np.asarray(index[0])
    per_sample = int(np.prod(input_shape[1:-1])) if len(input_shape) > 2 else 1
    return np.asarray(index) // max(per_sample, 1)


def output_rows(layer: LinearLayer, y: np.ndarray, index) -> np.ndarray:
    """The layer output [N, C, H, W] / [..., C] at `index`, as [P, C]."""
    if layer.op == "Conv":
        nn, oh, ow = index
        return y[nn, :, oh, ow]
    return y.reshape(-1, y.shape[-1])[index]
