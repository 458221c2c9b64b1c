"""Run an IR graph as a torch module: ONNX ops mapped onto torch.nn.functional.

Every float initializer becomes a trainable `torch.nn.Parameter` (MatMul weights included),
integer constants (shapes, axes) stay plain values. After training, `write_back` stores the
parameters into the graph's initializers by name. torch is imported lazily: it is the
optional `slimcc[train]` extra. Ops outside the table raise a PassError naming them.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PassError


def import_torch():
    """torch, or a one-line PassError telling how to install it."""
    try:
        import torch
    except ImportError:
        raise PassError("distill needs PyTorch: pip install 'slimcc[train]' (torch==2.13.0, CPU build)") from None
    return torch


def _ints(values) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


class TorchGraph:
    """A torch callable for a gs.Graph. `parameters` maps initializer name -> Parameter."""

    def __init__(self, graph: gs.Graph, trainable: bool = True):
        self.torch = import_torch()
        torch = self.torch
        self.graph = graph
        self.nodes = list(graph.nodes)
        self.parameters: dict[str, object] = {}
        self.constants: dict[str, np.ndarray] = {}
        for name, tensor in graph.tensors().items():
            if not isinstance(tensor, gs.Constant):
                continue
            values = np.asarray(tensor.values)
            if values.dtype.kind == "f":
                param = torch.nn.Parameter(torch.from_numpy(values.astype(np.float32).copy()), requires_grad=trainable)
                self.parameters[name] = param
            else:
                self.constants[name] = values
        for node in self.nodes:
            if node.op not in _OPS:
                raise PassError(f"distill: op {node.op} (node {node.name}) has no torch mapping; "
                                "run canonicalize first or exclude it")
            if node.op in ("QuantizeLinear", "DequantizeLinear"):
                raise PassError("distill works on float models; run it before qdq-insert")
        self.static_batch = {t.name: t.shape[0] for t in graph.inputs if t.shape and isinstance(t.shape[0], int)}

    def parameter_list(self) -> list:
        return list(self.parameters.values())

    def value(self, env: dict, tensor: gs.Tensor):
        """A tensor's current value: activation, parameter or integer constant (as numpy)."""
        if tensor.name in env:
            return env[tensor.name]
        if tensor.name in self.parameters:
            return self.parameters[tensor.name]
        if tensor.name in self.constants:
            return self.constants[tensor.name]
        raise PassError(f"distill: tensor {tensor.name!r} has no value (dynamic input not supported)")

    def __call__(self, feeds: dict, capture: list[str] | None = None) -> dict:
        """Run on {input name: torch tensor}; returns the graph outputs plus the `capture` tensors."""
        env = dict(feeds)
        for node in self.nodes:
            args = [None if t.is_empty() else self.value(env, t) for t in node.inputs]
            results = _OPS[node.op](self, node, args)
            if not isinstance(results, (list, tuple)):
                results = [results]
            for tensor, result in zip(node.outputs, results):
                env[tensor.name] = result
        wanted = [t.name for t in self.graph.outputs] + list(capture or [])
        return {name: env[name] for name in wanted}

    def write_back(self) -> int:
        """Store every parameter into its initializer (same name, dtype and shape); returns how many."""
        tensors = self.graph.tensors()
        for name, param in self.parameters.items():
            old = tensors[name]
            old.values = param.detach().cpu().numpy().astype(np.asarray(old.values).dtype).reshape(old.shape)
        return len(self.parameters)


def _t(g: TorchGraph, value):
    """A torch tensor for a value that may be an integer numpy constant."""
    torch = g.torch
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def _conv(g, node, args):
    F = g.torch.nn.functional
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    pads = list(node.attrs.get("pads", [0] * (2 * (w.dim() - 2))))
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise PassError(f"distill: Conv {node.name} uses auto_pad; run canonicalize first")
    half = len(pads) // 2
    stride = list(node.attrs.get("strides", [1] * half))
    dilation = list(node.attrs.get("dilations", [1] * half))
    groups = int(node.attrs.get("group", 1))
    if pads[:half] == pads[half:]:
        return F.conv2d(x, w, b, stride, pads[:half], dilation, groups) if half == 2 else \
            F.conv1d(x, w, b, stride, pads[:half], dilation, groups)
    torch_pads = []
    for i in reversed(range(half)):
        torch_pads += [pads[i], pads[i + half]]
    x = F.pad(x, torch_pads)
    return F.conv2d(x, w, b, stride, 0, dilation, groups) if half == 2 else F.conv1d(x, w, b, stride, 0, dilation, groups)


def _bn(g, node, args):
    x, scale, bias, mean, var = args[:5]
    eps = float(node.attrs.get("epsilon", 1e-5))
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean.reshape(shape)) / g.torch.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)


def _clip(g, node, args):
    x = args[0]
    low = args[1] if len(args) > 1 and args[1] is not None else node.attrs.get("min")
    high = args[2] if len(args) > 2 and args[2] is not None else node.attrs.get("max")
    low = float(np.asarray(low.detach() if hasattr(low, "detach") else low).reshape(())) if low is not None else None
    high = float(np.asarray(high.detach() if hasattr(high, "detach") else high).reshape(())) if high is not None else None
    return g.torch.clamp(x, low, high)


def _gemm(g, node, args):
    a, b = args[0], args[1]
    if node.attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if node.attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = float(node.attrs.get("alpha", 1.0)) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        y = y + float(node.attrs.get("beta", 1.0)) * _t(g, args[2])
    return y


def _reshape(g, node, args):
    x, shape = args[0], _ints(args[1])
    static = node.inputs[0].shape
    # shapes folded for batch 1 keep following the actual batch when training on bigger batches
    if shape and static and isinstance(static[0], int) and shape[0] == static[0] and x.shape[0] != static[0]:
        shape[0] = -1 if -1 not in shape else x.shape[0]
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _split(g, node, args):
    x = args[0]
    axis = int(node.attrs.get("axis", 0))
    if len(args) > 1 and args[1] is not None:
        sizes = _ints(args[1])
    elif "split" in node.attrs:
        sizes = _ints(node.attrs["split"])
    else:
        parts = len(node.outputs)
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    return list(g.torch.split(x, sizes, dim=axis))


def _pool(g, node, args, kind):
    F = g.torch.nn.functional
    x = args[0]
    kernel = list(node.attrs["kernel_shape"])
    half = len(kernel)
    pads = list(node.attrs.get("pads", [0] * 2 * half))
    stride = list(node.attrs.get("strides", [1] * half))
    ceil = bool(node.attrs.get("ceil_mode", 0))
    if pads[:half] != pads[half:]:
        torch_pads = []
        for i in reversed(range(half)):
            torch_pads += [pads[i], pads[i + half]]
        x = F.pad(x, torch_pads, value=float("-inf") if kind == "max" else 0.0)
        pads = [0] * 2 * half
    if kind == "max":
        return F.max_pool2d(x, kernel, stride, pads[:half], list(node.attrs.get("dilations", [1] * half)), ceil)
    return F.avg_pool2d(x, kernel, stride, pads[:half], ceil, bool(node.attrs.get("count_include_pad", 0)))


def _resize(g, node, args):
    F = g.torch.nn.functional
    x = args[0]
    mode = node.attrs.get("mode", "nearest")
    scales = args[2] if len(args) > 2 and args[2] is not None and np.asarray(args[2]).size else None
    sizes = args[3] if len(args) > 3 and args[3] is not None else None
    size = _ints(sizes)[2:] if sizes is not None else [int(x.shape[i + 2] * float(s))
                                                          for i, s in enumerate(np.asarray(scales)[2:])]
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    coord = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=coord == "align_corners")


def _slice(g, node, args):
    x = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step != 1:
            raise PassError(f"distill: Slice {node.name} with step {step} is not supported")
        dim = x.shape[axis]
        index[axis] = slice(max(-dim, min(start, dim)), max(-dim, min(end, dim)))
    return x[tuple(index)]


def _unsqueeze(g, node, args):
    x = args[0]
    axes = _ints(args[1]) if len(args) > 1 and args[1] is not None else list(node.attrs["axes"])
    for axis in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(axis)
    return x


def _squeeze(g, node, args):
    x = args[0]
    axes = _ints(args[1]) if len(args) > 1 and args[1] is not None else list(node.attrs.get("axes", []))
    if not axes:
        return x.squeeze()
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _layer_norm(g, node, args):
    """LayerNormalization over axes [axis, rank) (axis -1 by default), then scale and optional bias."""
    x = args[0]
    axes = tuple(range(int(node.attrs.get("axis", -1)) % x.dim(), x.dim()))
    mean = x.mean(dim=axes, keepdim=True)
    var = (x - mean).pow(2).mean(dim=axes, keepdim=True)
    y = (x - mean) / g.torch.sqrt(var + float(node.attrs.get("epsilon", 1e-5))) * _t(g, args[1])
    return y + _t(g, args[2]) if len(args) > 2 and args[2] is not None else y


def _binary(fn):
    return lambda g, node, args: fn(_t(g, args[0]), _t(g, args[1]))


_OPS = {
    "Conv": _conv,
    "BatchNormalization": _bn,
    "LayerNormalization": _layer_norm,
    "Relu": lambda g, n, a: g.torch.relu(a[0]),
    "LeakyRelu": lambda g, n, a: g.torch.nn.functional.leaky_relu(a[0], float(n.attrs.get("alpha", 0.01))),
    "Clip": _clip,
    "Sigmoid": lambda g, n, a: g.torch.sigmoid(a[0]),
    "HardSigmoid": lambda g, n, a: g.torch.clamp(float(n.attrs.get("alpha", 0.2)) * a[0]
                                                 + float(n.attrs.get("beta", 0.5)), 0.0, 1.0),
    "HardSwish": lambda g, n, a: g.torch.nn.functional.hardswish(a[0]),
    "Tanh": lambda g, n, a: g.torch.tanh(a[0]),
    "Identity": lambda g, n, a: a[0],
    "Dropout": lambda g, n, a: a[0],
    "Add": _binary(lambda a, b: a + b),
    "Sub": _binary(lambda a, b: a - b),
    "Mul": _binary(lambda a, b: a * b),
    "Div": _binary(lambda a, b: a / b),
    "Concat": lambda g, n, a: g.torch.cat([_t(g, x) for x in a], dim=int(n.attrs["axis"])),
    "Split": _split,
    "GlobalAveragePool": lambda g, n, a: a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "Flatten": lambda g, n, a: a[0].reshape(int(np.prod(a[0].shape[:int(n.attrs.get("axis", 1))])), -1),
    "Gemm": _gemm,
    "MatMul": _binary(lambda a, b: a @ b),
    "Reshape": _reshape,
    "Transpose": lambda g, n, a: a[0].permute(*[int(p) for p in n.attrs.get("perm", range(a[0].dim() - 1, -1, -1))]),
    "MaxPool": lambda g, n, a: _pool(g, n, a, "max"),
    "AveragePool": lambda g, n, a: _pool(g, n, a, "avg"),
    "Softmax": lambda g, n, a: g.torch.softmax(a[0], dim=int(n.attrs.get("axis", -1))),
    "Resize": _resize,
    "Slice": _slice,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "QuantizeLinear": None,
    "DequantizeLinear": None,
}
