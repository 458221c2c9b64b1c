"""onnx-graphsurgeon Graph -> ModelProto, copying each weight once.

`gs.export_onnx` builds a GraphProto (one copy of every weight) and then copies it into a
ModelProto (`make_model`: a second copy). This writes the graph fields straight into the
ModelProto, with graphsurgeon's own per-item exporters, so there is one copy.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, update_import_domains
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

EXTERNAL_MIN_BYTES = 1024


def export_model(graph: gs.Graph, *, external: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The ModelProto of `graph`, as `gs.export_onnx(graph, do_type_check=False)` builds it.

    With an `external` dict, main-graph weights of >= 1 KiB are not copied at all: they are written
    as external-data stubs (name, dtype, dims) and their arrays (read-only views, loaded once and
    kept by the graph) are put in `external`, for onnxruntime's `add_external_initializers`.
    """
    model = onnx.ModelProto()
    model.ir_version = onnx.IR_VERSION
    out = model.graph
    out.name = graph.name or ""
    if graph.doc_string:
        out.doc_string = graph.doc_string
    out.node.extend(OnnxExporter.export_node(node) for node in graph.nodes)
    out.input.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs)
    out.output.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs)
    tensors = graph.tensors()
    constants = [t for t in tensors.values() if isinstance(t, gs.Constant)]
    for tensor in constants:
        if isinstance(tensor._values, SparseValues):
            out.sparse_initializer.append(OnnxExporter.export_sparse_tensor_proto(tensor))
        elif external is not None and _as_external(tensor, out, external):
            continue
        else:
            out.initializer.append(OnnxExporter.export_tensor_proto(tensor))
    boundary = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    out.value_info.extend(OnnxExporter.export_value_info_proto(t, False) for name, t in tensors.items()
                          if name not in boundary and isinstance(t, gs.Variable)
                          and (t.dtype is not None or t.shape is not None))
    model.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
    model.opset_import.extend(update_import_domains(graph))
    model.producer_name = graph.producer_name or ""
    model.producer_version = graph.producer_version or ""
    if graph.ir_version is not None:
        model.ir_version = graph.ir_version
    return model


def _as_external(tensor: gs.Constant, graph: onnx.GraphProto, external: dict[str, np.ndarray]) -> bool:
    """Add `tensor` to `graph` as an external-data stub with its array in `external`; False when it stays inline."""
    from slimcc.ir.weightless import STUB_FILE

    from onnx_graphsurgeon.importers.onnx_importer import get_numpy_type

    stored = tensor._values
    if not isinstance(stored, np.ndarray) and (type(stored) is not LazyValues or get_numpy_type(stored.dtype) is None
                                               or stored.nbytes < EXTERNAL_MIN_BYTES):
        return False  # only weights numpy can hold as they are (no bfloat16/float8 casts)
    values = tensor.values
    if values.nbytes < EXTERNAL_MIN_BYTES or values.dtype.kind not in "fiub" or tensor.export_dtype not in (
            None, values.dtype):
        return False
    stub = graph.initializer.add()
    stub.name = tensor.name
    stub.data_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    stub.dims.extend(values.shape)
    stub.data_location = onnx.TensorProto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", STUB_FILE
    external[tensor.name] = np.asarray(values, order="C")
    return True
