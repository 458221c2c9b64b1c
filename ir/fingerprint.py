"""A fingerprint of a model's structure: everything but the weight values."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs


def structure_fingerprint(graph: gs.Graph) -> str:
    """sha256 over opset, nodes (op, domain, inputs, outputs, attributes), tensor shapes and dtypes,
    and which tensors are constants; weight values are left out (linear in the graph's size)."""
    digest = hashlib.sha256()
    _feed(digest, graph)
    return digest.hexdigest()


def _tensor(tensor: gs.Tensor) -> str:
    kind = "C" if isinstance(tensor, gs.Constant) else "V"
    shape = None if tensor.shape is None else [d if isinstance(d, (int, str)) else int(d) for d in tensor.shape]
    dtype = None if tensor.dtype is None else (str(np.dtype(tensor.dtype)) if _is_numpy(tensor.dtype)
                                               else str(tensor.dtype))
    return f"{kind}:{tensor.name}:{shape}:{dtype}"


def _is_numpy(dtype) -> bool:
    try:
        np.dtype(dtype)
        return True
    except TypeError:
        return False


def _attribute(value) -> str:
    if isinstance(value, gs.Graph):
        return "graph:" + structure_fingerprint(value)
    if isinstance(value, gs.Tensor):
        return _tensor(value)
    if isinstance(value, np.ndarray):
        return f"array:{value.dtype}:{list(value.shape)}"
    return repr(value)


def _feed(digest, graph: gs.Graph) -> None:
    digest.update(f"opset={graph.opset};in={[_tensor(t) for t in graph.inputs]};"
                  f"out={[_tensor(t) for t in graph.outputs]}\n".encode())
    for node in graph.nodes:
        attrs = ",".join(f"{k}={_attribute(v)}" for k, v in sorted(node.attrs.items()))
        line = (f"{node.op}|{node.domain}|{[_tensor(t) for t in node.inputs]}|"
                f"{[_tensor(t) for t in node.outputs]}|{attrs}\n")
        digest.update(line.encode())
