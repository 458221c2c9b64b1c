"""The slimcc IR: an onnx-graphsurgeon graph plus what is needed to export it again.

Only `slimcc.ir` touches onnx protobufs; passes work on `Model.graph`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from slimcc.errors import ModelLoadError, SlimccError
from slimcc.ir.export import export_model
from slimcc.ir.graphcopy import materialize_constants, share_weights_copy
from slimcc.ir.external import declared_nbytes, load_external_data, save_external
from slimcc.ir.wire import write_external, write_inline
from slimcc.ir.protofields import is_repeated, set_fields
from slimcc.ir.weightless import check_stripped, inline_read_values, restore_weights, strip_weights

TWO_GB = 2**31 - 1
EXTERNAL_HEADROOM = 2**26  # graph structure and inline tensors must fit beside the weights
DEFAULT_OPSET = 17


class Model:
    """A model under compression: `graph` (onnx-graphsurgeon) is what passes edit."""

    def __init__(self, graph: gs.Graph, *, base_dir: Path | None = None, source_sha256: str | None = None,
                 metadata: dict | None = None):
        self.graph = graph
        self.base_dir = base_dir
        self.source_sha256 = source_sha256
        self.metadata = dict(metadata or {})

    @property
    def opset(self) -> int:
        """The default-domain opset the graph is written against."""
        return int(self.graph.opset)

    def to_proto(self, *, infer_shapes: bool = False, external: dict | None = None) -> onnx.ModelProto:
        """Export to an onnx.ModelProto (optionally with shape inference on the result; with an
        `external` dict, large weights are stubs and their arrays go there: see `ir.export`)."""
        graph = self.graph
        try:
            proto = export_model(graph, external=external)
        except RecursionError:
            raise SlimccError("cannot export the graph: subgraphs nest too deeply") from None
        except Exception as exc:  # an inconsistent graph (a pass bug or a hostile model that slipped through)
            raise SlimccError(f"cannot export the graph to ONNX: {type(exc).__name__}: {first_line(exc)}") from None
        proto.producer_name = proto.producer_name or "slimcc"
        for key, value in self.metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        if infer_shapes:
            proto = run_shape_inference(proto, trusted=True)
        return proto

    def copy(self) -> Model:
        """An independent copy; read-only weight arrays are shared, not copied (`ir.graphcopy`)."""
        return Model(share_weights_copy(self.graph), base_dir=self.base_dir,
                     source_sha256=self.source_sha256, metadata=self.metadata)

    def refresh_shapes(self, *, isolate: bool = False) -> None:
        """Re-run ONNX shape inference so every tensor carries its current dtype and shape.

        With `isolate=True` the inference runs in the sandbox child process (for untrusted
        models: a crash there becomes a one-line SlimccError instead of killing this process).
        """
        graph = self.graph
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Variable) and tensor not in graph.inputs and tensor not in graph.outputs:
                tensor.shape = None
        for out in graph.outputs:
            if out.shape is not None and any(not isinstance(d, int) or d < 0 for d in out.shape):
                out.shape = None
        proto, external = self.weightless_proto()
        if isolate:
            from slimcc.ir.sandbox import isolated_infer_shapes

            inferred = isolated_infer_shapes(proto, trusted=True)
        else:
            inferred = run_shape_inference(proto, trusted=True)
        locations = {t.name: t.data_location for t in graph.tensors().values() if isinstance(t, gs.Constant)}
        self.graph = gs.import_onnx(inferred)
        for tensor in self.graph.tensors().values():
            if isinstance(tensor, gs.Constant) and tensor.name in external:
                tensor.values, tensor.data_location = external[tensor.name], locations.get(tensor.name)

    def weightless_proto(self) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The model for the checker and shape inference, with no weight copied: the ModelProto with
        weights as stubs (by the rules of `ir.weightless.stubbable`) and {name: array} of those weights."""
        external: dict[str, np.ndarray] = {}
        return inline_read_values(self.to_proto(external=external), external), external

    def is_static(self) -> bool:
        """True when every activation tensor has a known, fully static shape."""
        for tensor in self.graph.tensors().values():
            if isinstance(tensor, gs.Variable):
                if tensor.shape is None or any(not isinstance(d, int) or d < 0 for d in tensor.shape):
                    return False
        return True

    def initializer_bytes(self) -> int:
        """Total bytes held by constant tensors (weights)."""
        return sum(int(np.asarray(t.values).nbytes) for t in self.graph.tensors().values()
                   if isinstance(t, gs.Constant))

    def serialized(self) -> bytes:
        """The model as ONNX bytes (weights included), as `save` would write them below 2 GB."""
        return self.to_proto().SerializeToString()

    def content_hash(self) -> str:
        """sha256 of `serialized()`: equal for models with equal graphs and weights."""
        return hashlib.sha256(self.serialized()).hexdigest()


def run_shape_inference(proto: onnx.ModelProto, *, strict: bool = False, trusted: bool = False) -> onnx.ModelProto:
    """ONNX shape inference with data propagation on a weightless copy (`ir.weightless`; `trusted`
    for protos exported from a loaded Model). Returns `proto` itself with the inferred graph; its
    weights are neither copied nor sent to C++.
    """
    return restore_weights(infer_stripped(strip_weights(proto, trusted=trusted), strict=strict), proto)


def infer_stripped(proto: onnx.ModelProto, *, strict: bool = False) -> onnx.ModelProto:
    """ONNX shape inference with data propagation; models over 2 GB go through a temp file."""
    try:
        if proto.ByteSize() < TWO_GB:
            return onnx.shape_inference.infer_shapes(proto, check_type=strict, strict_mode=strict, data_prop=True)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
            onnx.save(proto, src, save_as_external_data=True)
            onnx.shape_inference.infer_shapes_path(src, dst, check_type=strict, strict_mode=strict, data_prop=True)
            return onnx.load(dst)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise SlimccError(f"ONNX shape inference failed: {first_line(exc)}") from None
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        # hostile protos reach parts of onnx's C++ inference that raise other error types
        raise SlimccError(f"ONNX shape inference failed: {type(exc).__name__}: {first_line(exc)}") from None


def find_invalid_string(message) -> str | None:
    """The path of the first string field that is not valid UTF-8 (protobuf hands those over as bytes,
    which would break every name lookup later), or None."""
    from google.protobuf.descriptor import FieldDescriptor

    stack = [(message, "model")]
    while stack:
        current, where = stack.pop()
        for descriptor, value in set_fields(current):
            if descriptor.type == FieldDescriptor.TYPE_STRING:
                values = value if is_repeated(descriptor) else [value]
                if any(not isinstance(v, str) for v in values):
                    return f"{where}.{descriptor.name}"
            elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
                if is_repeated(descriptor):
                    stack.extend((item, f"{where}.{descriptor.name}[{i}]") for i, item in enumerate(value))
                else:
                    stack.append((value, f"{where}.{descriptor.name}"))
    return None


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (library errors can be pages long)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line[:400]
    return type(exc).__name__


def numpy_dtype(dtype) -> np.dtype | None:
    """A tensor's dtype (numpy dtype or ONNX TensorProto enum) as a numpy dtype; None when numpy has none."""
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError:
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(dtype)))
        except (KeyError, TypeError, ValueError):  # an enum numpy has no dtype for: documented None
            return None


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_input_shapes(specs: list[str] | None) -> dict[str, list[int]]:
    """Parse repeated `NAME=1,3,224,224` options into {name: dims}."""
    shapes: dict[str, list[int]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        if not sep or not name:
            raise SlimccError(f"--input-shape {spec!r}: expected NAME=D0,D1,... (e.g. x=1,3,224,224)")
        try:
            values = [int(d) for d in dims.split(",")]
        except ValueError:
            raise SlimccError(f"--input-shape {spec!r}: dimensions must be integers") from None
        if not values or any(v <= 0 for v in values):
            raise SlimccError(f"--input-shape {spec!r}: dimensions must be positive")
        shapes[name] = values
    return shapes


def _read_proto(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None, str | None]:
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        return proto, None, hashlib.sha256(source.SerializeToString()).hexdigest()
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"not a file: {path}")
    size = path.stat().st_size
    if size >= TWO_GB:
        raise ModelLoadError(f"{path} is {size} bytes; an ONNX file over 2 GB must keep its weights "
                             "in external data files")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise ModelLoadError(f"{path} is empty")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:
        raise ModelLoadError(f"{path} is not an ONNX model (protobuf parse failed; truncated or wrong file?)") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelLoadError(f"{path} is not an ONNX model (no graph or IR version)")
    return proto, path.parent, hashlib.sha256(data).hexdigest()


def read_onnx(source: str | Path | bytes) -> onnx.ModelProto:
    """A model file (or its bytes) as plain `onnx.load` reads it: no checks, no IR. For the benches'
    plain-onnx baselines and for exports handed straight to `load_model` or onnxruntime."""
    if isinstance(source, (bytes, bytearray)):
        return onnx.load_from_string(bytes(source))
    return onnx.load(str(source))


def write_onnx(proto: onnx.ModelProto, path: str | Path) -> None:
    """Plain `onnx.save` (no checks, not atomic): the benches' plain-onnx baseline; use `save_model` otherwise."""
    onnx.save(proto, str(path))

def fix_input_shapes(graph: gs.Graph, shapes: dict[str, list[int]]) -> None:
    """Set graph input shapes; a given shape must agree with every static dim already declared."""
    by_name = {t.name: t for t in graph.inputs}
    for name, dims in shapes.items():
        if name not in by_name:
            valid = ", ".join(sorted(by_name)) or "(none)"
            raise SlimccError(f"--input-shape names unknown input {name!r}; inputs are: {valid}")
        tensor = by_name[name]
        old = tensor.shape
        if old is not None and len(old) != len(dims):
            raise SlimccError(f"--input-shape {name}: rank {len(dims)} does not match the model's rank {len(old)}")
        if old is not None:
            for axis, (was, new) in enumerate(zip(old, dims)):
                if isinstance(was, int) and was > 0 and was != new:
                    raise SlimccError(f"--input-shape {name}: dim {axis} is fixed to {was} in the model, not {new}")
        tensor.shape = list(dims)


def load_model(source: str | Path | onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None, *,
               isolate: bool | None = None) -> Model:
    """Load a path or ModelProto into the IR, fixing dynamic input dims from `input_shapes`.

    External data is read only from inside the model's folder. Shapes are inferred; to
    make every shape static, also run the canonicalize pass (it folds shape sub-graphs).
    The onnx checker and shape inference (C++ that can crash on hostile files) run in the
    sandbox child process when `isolate` is true; by default files are isolated (they are
    untrusted input) and in-memory protos (built by code) are not. SLIMCC_SANDBOX=0 turns
    isolation off.
    """
    if isolate is None:
        isolate = not isinstance(source, onnx.ModelProto) and os.environ.get("SLIMCC_SANDBOX", "1") != "0"
    proto, base_dir, sha = _read_proto(source)
    bad = find_invalid_string(proto)
    if bad is not None:
        raise ModelLoadError(f"invalid ONNX model: {bad} is not valid UTF-8 text (corrupted file?)")
    load_external_data(proto, base_dir)
    check_declared_dims(proto)
    if input_shapes:
        fix_proto_input_shapes(proto, input_shapes)
    if isolate:
        from slimcc.ir.sandbox import isolated_check_and_infer

        inferred = isolated_check_and_infer(proto)
    else:
        inferred = check_and_infer(proto)
    try:
        graph = gs.import_onnx(inferred)
    except RecursionError:
        raise ModelLoadError("cannot import the ONNX graph: subgraphs nest too deeply") from None
    except Exception as exc:
        raise ModelLoadError(f"cannot import the ONNX graph: {type(exc).__name__}: {first_line(exc)}") from None
    metadata = {entry.key: entry.value for entry in inferred.metadata_props}
    del proto, inferred
    try:
        materialize_constants(graph)  # weights become read-only arrays; the protobuf is freed
    except Exception as exc:  # a tensor the checker let through but numpy cannot read
        raise ModelLoadError(f"cannot read the model's weights: {type(exc).__name__}: {first_line(exc)}") from None
    return Model(graph, base_dir=base_dir, source_sha256=sha, metadata=metadata)


MAX_DIM = 2**31 - 1


def check_declared_dims(proto: onnx.ModelProto) -> None:
    """Refuse absurd dims (< -1 or >= 2**31) on graph inputs and outputs before anything allocates.

    -1 stays allowed: some exporters (Paddle) write it for a dynamic dim.
    """
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.HasField("dim_value") and not -1 <= dim.dim_value <= MAX_DIM:
                    raise ModelLoadError(f"invalid ONNX model: {kind} {value.name!r} dim {axis} is {dim.dim_value}; "
                                         f"dims must be in 0..{MAX_DIM} (or -1 for a dynamic dim)")


def check_and_infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker, then shape inference: the C++ half of loading (ModelLoadError on failure).

    Both see a weightless copy; returns `proto` itself with the inferred graph.
    """
    return restore_weights(check_and_infer_stripped(strip_weights(proto)), proto)


def check_and_infer_stripped(stripped: onnx.ModelProto) -> onnx.ModelProto:
    """`check_and_infer` on a model from `strip_weights` (what the sandbox child runs); returns a new proto."""
    check_proto(stripped)
    clear_inferred_shapes(stripped)
    try:
        return infer_stripped(stripped)
    except SlimccError as exc:
        raise ModelLoadError(str(exc)) from None


def fix_proto_input_shapes(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    """Set graph input dims of a ModelProto; a given shape must agree with every static dim declared."""
    weights = {t.name for t in proto.graph.initializer}
    by_name = {v.name: v for v in proto.graph.input if v.name not in weights}
    for name, dims in shapes.items():
        if name not in by_name:
            valid = ", ".join(sorted(by_name)) or "(none)"
            raise SlimccError(f"--input-shape names unknown input {name!r}; inputs are: {valid}")
        tensor_type = by_name[name].type.tensor_type
        if tensor_type.HasField("shape"):
            old = tensor_type.shape.dim
            if len(old) != len(dims):
                raise SlimccError(f"--input-shape {name}: rank {len(dims)} does not match the model's rank {len(old)}")
            for axis, (was, new) in enumerate(zip(old, dims)):
                if was.HasField("dim_value") and was.dim_value > 0 and was.dim_value != new:
                    raise SlimccError(f"--input-shape {name}: dim {axis} is fixed to {was.dim_value} in the model, "
                                      f"not {new}")
        if any(not 0 < int(v) <= MAX_DIM for v in dims):
            raise SlimccError(f"--input-shape {name}: dims must be between 1 and {MAX_DIM}")
        tensor_type.ClearField("shape")
        for value in dims:
            tensor_type.shape.dim.add().dim_value = int(value)


def clear_inferred_shapes(proto: onnx.ModelProto) -> None:
    """Drop recorded intermediate shapes (they may be stale or hostile) and symbolic output shapes,
    so that shape inference derives them from the inputs (what `Model.refresh_shapes` does)."""
    del proto.graph.value_info[:]
    for output in proto.graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.HasField("shape") and any(not d.HasField("dim_value") for d in tensor_type.shape.dim):
            tensor_type.ClearField("shape")


def run_checker(proto: onnx.ModelProto, error: type[SlimccError], prefix: str, *, trusted: bool = False) -> None:
    """onnx.checker on a weightless copy, its failure raised as one-line `error(prefix: reason)`
    (the one checker wrapper; `trusted` as in `ir.weightless.stubbable`)."""
    try:
        check_stripped(strip_weights(proto, trusted=trusted))
    except Exception as exc:  # checker raises ValidationError and also C++-level errors
        raise error(f"{prefix}: {first_line(exc)}") from None


def check_proto(proto: onnx.ModelProto) -> None:
    """onnx.checker on a loaded model, as a one-line ModelLoadError."""
    run_checker(proto, ModelLoadError, "invalid ONNX model")


def check_model_valid(model: Model) -> None:
    """onnx.checker and strict shape inference on a model's current graph; raises SlimccError."""
    stripped, _ = model.weightless_proto()
    try:
        check_stripped(stripped)
    except Exception as exc:  # checker raises ValidationError and also C++-level errors
        raise SlimccError(f"model is invalid: {first_line(exc)}") from None
    infer_stripped(stripped, strict=True)


def save_model(model: Model | onnx.ModelProto, path: str | Path, *, check: bool = True) -> Path:
    """Write a model atomically (temp file in the same folder, then rename), checked on the way out.

    A Model's weights go from their arrays straight to the file (`ir.wire`), serialized once.
    Models whose weights reach the 2 GB protobuf limit are written with their weights in one
    external-data file beside them.
    """
    external: dict[str, np.ndarray] = {}
    if isinstance(model, Model):
        proto = inline_read_values(model.to_proto(external=external), external)
    else:
        proto = model
    path = Path(path)
    if path.is_dir():
        raise SlimccError(f"output path {path} is a folder; give a file name ending in .onnx")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SlimccError(f"output folder {folder} does not exist")
    large = weight_bytes(proto) >= TWO_GB - EXTERNAL_HEADROOM  # stubs count by their dims
    if check:
        run_checker(proto, SlimccError, "refusing to write an invalid model", trusted=isinstance(model, Model))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    data_name = f"{path.name}.data"
    tmp_data = folder / f".{data_name}.tmp"
    try:
        if large and external:
            with open(tmp_data, "wb") as data:
                write_external(data, proto, external, data_name)
            external = {}
        elif large:
            proto = save_external(proto, tmp_data, data_name)
        with open(tmp_name, "wb") as handle:
            try:
                if external:
                    write_inline(handle, proto, external)
                else:
                    handle.write(proto.SerializeToString())
            except Exception as exc:  # protobuf refuses messages over 2 GB
                raise SlimccError(f"cannot serialize the model: {first_line(exc)}") from None
            handle.flush()
            os.fsync(handle.fileno())
        if large:
            os.replace(tmp_data, folder / data_name)
        os.replace(tmp_name, path)
    except BaseException:
        for leftover in (Path(tmp_name), tmp_data):
            leftover.unlink(missing_ok=True)
        raise
    return path


def weight_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of the main graph's weights from their dims and dtypes (no serialization)."""
    total = 0
    for tensor in proto.graph.initializer:
        try:
            total += declared_nbytes(tensor) or 0
        except ModelLoadError:  # a negative dim: the checker refuses the model
            pass
    return total
