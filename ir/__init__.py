"""slimcc.ir: load/save ONNX <-> onnx-graphsurgeon graphs, shapes, cost, graph views, verification."""

from slimcc.ir.model import Model, load_model, parse_input_shapes, save_model

__all__ = ["Model", "load_model", "save_model", "parse_input_shapes"]
